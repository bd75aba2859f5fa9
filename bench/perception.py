"""How much does an image policy see? Its listings of each scene, judged against that scene and against
another prompt's. Prints JSON.

Why: a policy that ignores the image still names shapes and colours at their usual rates, so it names
some of what is in any scene; recall against the right scene alone cannot tell seeing from guessing.
Judged also against another prompt's scene (each prompt's answers against the next prompt's scene, in
id order), the difference between the two is what the image contributed. The online rounds cannot
teach a policy to see past what its vision tower gives, and DropoutNTP's chosen side is only more
grounded than its blind one when there is something to ground it (docs/results.md).

Two sources of answers: a model directory's greedy answers to the first `--limit` prompts of a file
(`--model`, the base or an exported checkpoint, on the transformers engine), or a run's committed pairs
(`--store`; `mpo run` and the benches commit every round's), both sides of each pair, so a round whose
policy is the base's (the first round, or every round of an offline run) is a sample of the base's
answers at the rounds' temperature. A listing is an answer's first sentence when
it opens the way the demonstrations do ("I see a red circle and two blue squares."): for `shapes`
answers the scene listing before the derivation, for `describe` the description. Judged with
`mpo.grading.hallucination`: recall (share of the scene's objects named), precision (share of mentions
that hold), count (as many objects named as the scene holds) and exact (the scene named completely,
nothing else). `pooled` is all the given rounds' answers together.

    .venv/bin/python bench/perception.py --model MODEL_DIR --data DIR/data/heldout.jsonl [--limit 500]
    .venv/bin/python bench/perception.py --store DIR/bench-store --run-id RUN --data DIR/data/train.jsonl
                                         [--data MORE.jsonl ...] [--rounds 1,20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mpo.data.loader import load_prompts
from mpo.data.records import PromptRecord
from mpo.data.tasks.scenes import OPENERS
from mpo.grading.hallucination import DescriptionCheck, judge_description, scene_objects
from mpo.models.generate import Sampling, TransformersGenerator
from mpo.services.controller.store import RunStore, StoreError
from mpo.v1 import common_pb2

_SENTENCE_END = re.compile(r"(?<=\.)\s+")

Scene = list[tuple[str, str]]


def listing(answer: str) -> str | None:
    """The answer's opening sentence when it lists the scene, else None."""
    first = _SENTENCE_END.split(answer.strip(), maxsplit=1)[0]
    return first if first.startswith(OPENERS) else None


def with_scenes(data_files: Iterable[Path]) -> list[PromptRecord]:
    """The records that carry `meta.scene` (the built-in image tasks), in file order."""
    return [record for path in data_files for record in load_prompts(path).records if "scene" in record.meta]


def scenes_of(records: Iterable[PromptRecord]) -> dict[str, Scene]:
    """Prompt id -> its scene's ground truth."""
    return {record.id: scene_objects(record.meta["scene"]) for record in records}


def other_scenes(prompt_ids: Sequence[str], scenes: dict[str, Scene]) -> dict[str, Scene]:
    """Each prompt's stand-in: the scene of the next prompt in id order (the last takes the first's)."""
    ordered = sorted(set(prompt_ids))
    if len(ordered) < 2:
        raise ValueError("judging against another prompt's scene needs answers to at least two prompts")
    return {pid: scenes[ordered[(i + 1) % len(ordered)]] for i, pid in enumerate(ordered)}


def summary(judged: Sequence[tuple[Scene, DescriptionCheck]]) -> dict[str, float]:
    """Listings judged against the scenes beside them."""
    checks = [check for _, check in judged]
    mentions = sum(len(check.mentions) for check in checks)
    false = sum(check.hallucinated_mentions for check in checks)
    return {
        "recall": round(statistics.fmean(check.recall for check in checks), 4),
        "precision": round(1 - false / mentions, 4) if mentions else 0.0,
        "count": round(statistics.fmean(sum(m.count for m in c.mentions) == len(scene) for scene, c in judged), 4),
        "exact": round(statistics.fmean(check.recall == 1 and not check.hallucinated for check in checks), 4),
    }


def judge_answers(answers: Sequence[tuple[str, str]], scenes: dict[str, Scene]) -> dict[str, Any]:
    """(prompt id, answer) pairs: the share that list the scene, and those listings judged against their
    own scene and another prompt's; `recall_margin` is the difference, what the image added."""
    listed = [(pid, text) for pid, text in ((pid, listing(answer)) for pid, answer in answers) if text]
    result: dict[str, Any] = {
        "answers": len(answers),
        "listing": round(len(listed) / len(answers), 4) if answers else 0.0,
    }
    if not listed:
        return result
    stand_in = other_scenes([pid for pid, _ in answers], scenes)
    own = summary([(scenes[pid], judge_description(scenes[pid], text)) for pid, text in listed])
    other = summary([(stand_in[pid], judge_description(stand_in[pid], text)) for pid, text in listed])
    return result | {"own_scene": own, "other_scene": other, "recall_margin": round(own["recall"] - other["recall"], 4)}


def pair_sides(pairs: Sequence[common_pb2.PreferencePair]) -> dict[str, list[tuple[str, str]]]:
    ids = [pair.prompt_id or pair.prompt.id for pair in pairs]
    return {
        "chosen": [(pid, pair.chosen) for pid, pair in zip(ids, pairs, strict=True)],
        "rejected": [(pid, pair.rejected) for pid, pair in zip(ids, pairs, strict=True)],
    }


def greedy_answers(model_dir: Path, records: Sequence[PromptRecord], max_tokens: int) -> list[tuple[str, str]]:
    """(prompt id, greedy answer) for each record."""
    texts = TransformersGenerator(model_dir).generate(records, Sampling(n=1, max_new_tokens=max_tokens))
    return [(record.id, answers[0]) for record, answers in zip(records, texts, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a model directory: its greedy answers to --data's prompts")
    source.add_argument("--store", type=Path, help="a run store (a bench's DIR/bench-store): a run's pairs")
    parser.add_argument("--data", type=Path, action="append", required=True, help="prompt files with the scenes")
    parser.add_argument("--limit", type=int, default=500, help="--model: how many prompts to answer")
    parser.add_argument("--max-tokens", type=int, default=96, help="--model: answer length (the rounds' 96)")
    parser.add_argument("--run-id", help="--store: the run")
    parser.add_argument("--rounds", default="1", help="--store: comma-separated round numbers (1-based)")
    args = parser.parse_args()
    report: dict[str, Any] = {"benchmark": "perception", "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    if args.model:
        if len(args.data) != 1:
            parser.error("--data: give one prompt file with --model")
        if args.limit < 2:
            parser.error("--limit: at least 2 (each answer is also judged against another prompt's scene)")
        records = with_scenes(args.data)[: args.limit]
        if len(records) < 2:
            parser.error(f"--data: {args.data[0]} has fewer than 2 prompts with a scene (meta.scene)")
        answers = greedy_answers(args.model, records, args.max_tokens)
        report |= {"model": str(args.model), "greedy": judge_answers(answers, scenes_of(records))}
    else:
        report |= run_pairs(parser, args)
    print(json.dumps(report, indent=2))


def run_pairs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """Both sides of a run's pairs in each of `--rounds`, and all those rounds pooled."""
    if not args.run_id:
        parser.error("--store needs --run-id")
    store = RunStore(args.store)
    if store.get_run(args.run_id) is None:
        parser.error(f"--run-id: no run {args.run_id!r} in {args.store}")
    scenes = scenes_of(with_scenes(args.data))
    rounds: dict[str, Any] = {}
    everything: dict[str, list[tuple[str, str]]] = {"chosen": [], "rejected": []}
    try:
        round_indices = [int(r) for r in args.rounds.split(",")]
    except ValueError:
        parser.error(f"--rounds: comma-separated round numbers, got {args.rounds!r}")
    for round_index in round_indices:
        try:
            pairs = store.committed_pairs(args.run_id, round_index)
        except StoreError as exc:
            parser.error(f"--rounds: {exc}")
        if not pairs:
            parser.error(f"--rounds: run {args.run_id!r} has no committed pairs in round {round_index}")
        sides = pair_sides(pairs)
        if missing := sorted({pid for pid, _ in sides["chosen"]} - scenes.keys())[:3]:
            parser.error(f"--data: no scene for prompts {missing} (pass the run's training prompts)")
        rounds[str(round_index)] = {side: judge_answers(answers, scenes) for side, answers in sides.items()}
        for side, answers in sides.items():
            everything[side] += answers
    pooled = {side: judge_answers(answers, scenes) for side, answers in everything.items()}
    return {"run_id": args.run_id, "rounds": rounds, "pooled": pooled}


if __name__ == "__main__":
    main()
