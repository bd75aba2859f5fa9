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

With `--features` (and `--model`), a linear probe instead: what the image features the language model
receives still hold. Ridge regression from each image's projected tokens (each scaled to unit length,
as the language model's RMSNorm sees them, then averaged) to the count of each colour, each shape and
all shapes in its scene; half of the `--limit` images fit it, a quarter choose each target's ridge, and
`count_r2` is R² on the last quarter. A random-initialised tower already holds the colour counts and
the total; a warm start at the full rate spoils much of that (docs/results.md), which is what
`BootstrapConfig.vision_lr_ratio` is for. `token_norm` against `text_embedding_norm` shows features
that grew out of the text embeddings' scale.

    .venv/bin/python bench/perception.py --model MODEL_DIR --data DIR/data/heldout.jsonl [--limit 500]
    .venv/bin/python bench/perception.py --model MODEL_DIR --data DIR/data/heldout.jsonl --features --limit 2000
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
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mpo.data.loader import load_prompts
from mpo.data.records import PromptRecord
from mpo.data.tasks.scenes import COLOURS, OPENERS, SHAPES
from mpo.grading.hallucination import DescriptionCheck, judge_description, scene_objects
from mpo.info import installed_versions
from mpo.models.generate import Sampling, TransformersGenerator
from mpo.models.loading import load_model, load_processor
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


#: The ridge strengths each target's probe chooses from (on the held-back quarter).
RIDGES = tuple(10.0**k for k in range(-5, 3))


def count_targets(records: Sequence[PromptRecord]) -> tuple[list[str], torch.Tensor]:
    """Per record: how many objects of each colour, of each shape, and in all its scene holds."""
    names = [*COLOURS, *SHAPES, "all shapes"]
    rows = []
    for record in records:
        scene = scene_objects(record.meta["scene"])
        colours, shapes = Counter(colour for colour, _ in scene), Counter(shape for _, shape in scene)
        rows.append([*(colours[c] for c in COLOURS), *(shapes[s] for s in SHAPES), len(scene)])
    return names, torch.tensor(rows, dtype=torch.float64)


def image_features(model_dir: Path, records: Sequence[PromptRecord], batch: int = 100) -> dict[str, Any]:
    """Each record's first image as the language model receives it (`get_image_features`, tower and
    projector): its tokens scaled to unit length and averaged, and the tokens' mean norm."""
    model = load_model(model_dir).eval()
    image_processor = load_processor(model_dir).image_processor
    pooled, norms = [], []
    with torch.inference_mode():
        for start in range(0, len(records), batch):
            images = [Image.open(record.images[0]).convert("RGB") for record in records[start : start + batch]]
            inputs = image_processor(images, return_tensors="pt")
            for tokens in model.get_image_features(**inputs).pooler_output:
                norms.append(tokens.norm(dim=-1).mean())
                pooled.append(torch.nn.functional.normalize(tokens, dim=-1).mean(0))
    embeddings = model.get_input_embeddings().weight
    return {
        "features": torch.stack(pooled).double(),
        "token_norm": round(torch.stack(norms).mean().item(), 3),
        "text_embedding_norm": round(embeddings.norm(dim=-1).mean().item(), 3),
    }


def ridge_r2(features: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """R² of a ridge probe per target column: fit on the first half, each target's ridge chosen on the
    third quarter, scored on the last (centred on the fitting half's means)."""
    n = len(features)
    if n < 8:
        raise ValueError("a linear probe needs at least 8 images (half fit, a quarter choose, a quarter score)")
    fit, choose, score = slice(0, n // 2), slice(n // 2, 3 * n // 4), slice(3 * n // 4, n)
    x = features - features[fit].mean(0)
    y = targets - targets[fit].mean(0)
    gram, cross = x[fit].T @ x[fit], x[fit].T @ y[fit]
    identity = torch.eye(x.shape[1], dtype=x.dtype)
    predictions = [x @ torch.linalg.solve(gram + ridge * identity, cross) for ridge in RIDGES]
    errors = torch.stack([((p[choose] - y[choose]) ** 2).sum(0) for p in predictions])  # ridge x target
    chosen = torch.stack(predictions)[errors.argmin(0), :, torch.arange(y.shape[1])].T  # each target's best ridge
    residual = ((chosen[score] - y[score]) ** 2).sum(0)
    spread = ((y[score] - y[score].mean(0)) ** 2).sum(0)
    return [round(1 - (r / v).item(), 4) if v > 0 else float("nan") for r, v in zip(residual, spread, strict=True)]


def probe_features(model_dir: Path, records: Sequence[PromptRecord]) -> dict[str, Any]:
    """The linear probe's report: R² per count, and the feature and text-embedding scales."""
    names, targets = count_targets(records)
    probed = image_features(model_dir, records)
    r2 = ridge_r2(probed.pop("features"), targets)
    return {"images": len(records), "count_r2": dict(zip(names, r2, strict=True))} | probed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a model directory: its greedy answers to --data's prompts")
    source.add_argument("--store", type=Path, help="a run store (a bench's DIR/bench-store): a run's pairs")
    parser.add_argument("--data", type=Path, action="append", required=True, help="prompt files with the scenes")
    parser.add_argument("--limit", type=int, default=500, help="--model: how many prompts to answer")
    parser.add_argument("--max-tokens", type=int, default=96, help="--model: answer length (the rounds' 96)")
    parser.add_argument("--features", action="store_true", help="--model: a linear probe of the image features")
    parser.add_argument("--run-id", help="--store: the run")
    parser.add_argument("--rounds", default="1", help="--store: comma-separated round numbers (1-based)")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "benchmark": "perception",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "versions": installed_versions(),
    }
    if args.model:
        if len(args.data) != 1:
            parser.error("--data: give one prompt file with --model")
        if args.limit < 2:
            parser.error("--limit: at least 2 (each answer is also judged against another prompt's scene)")
        records = with_scenes(args.data)[: args.limit]
        if len(records) < 2:
            parser.error(f"--data: {args.data[0]} has fewer than 2 prompts with a scene (meta.scene)")
        if args.features:
            if len(records) < 8:
                parser.error("--limit: the linear probe needs at least 8 prompts with a scene")
            report |= {"model": str(args.model), "probe": probe_features(args.model, records)}
        else:
            answers = greedy_answers(args.model, records, args.max_tokens)
            report |= {"model": str(args.model), "greedy": judge_answers(answers, scenes_of(records))}
    else:
        if args.features:
            parser.error("--features: give --model (the probe reads a model's image features)")
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
