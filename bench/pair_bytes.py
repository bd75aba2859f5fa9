"""Bytes moved and stored per preference pair in a `shapes` round: pairs carrying their prompt (legacy)
vs pairs naming it by id beside each prompt sent once.

A real round's prompts (`--prompts` shapes scenes, images inline as the controller sends them) get
`--n` samples each: the task's demonstrations, about half with a wrong final answer. The reward service's
own labelling code (in-process) builds the correctness pairs (at most `--max-pairs` per prompt). Both
forms are measured in the same process: the BuildPairsResponse and TrainRequest serialized sizes, and the
round's Parquet shard (legacy: `datasets`' writer, as the store wrote it before; new: the store's writer).

    .venv/bin/python bench/pair_bytes.py [--prompts 32] [--n 8] [--max-pairs 15] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
from pathlib import Path

from datasets import Dataset

from mpo.config import RewardConfig
from mpo.data.records import PromptRecord
from mpo.data.tasks import TASKS
from mpo.grading.verify import Grader
from mpo.pairs import inlined, named_prompts
from mpo.services.controller.loop import to_prompt
from mpo.services.controller.store import RunStore
from mpo.services.reward import labelling
from mpo.v1 import common_pb2, controller_pb2, reward_pb2, trainer_pb2


def wrong_answer(record: PromptRecord, rng: random.Random) -> str:
    if record.choices:
        letters = [chr(ord("A") + i) for i in range(len(record.choices))]
        return rng.choice([letter for letter in letters if letter != record.answer])
    return str(int(str(record.answer)) + rng.randint(1, 3))


def samples(records: list[PromptRecord], n: int, seed: int) -> list[common_pb2.Sample]:
    """Demonstrations, about half of them with their final answer made wrong."""
    task, rng = TASKS["shapes"], random.Random(seed)
    out = []
    for record in records:
        for index in range(n):
            text = task.demonstration(record, rng) or f"Final answer: {record.answer}"
            if rng.random() < 0.5:
                text = text.rsplit("Final answer:", 1)[0] + f"Final answer: {wrong_answer(record, rng)}"
            out.append(common_pb2.Sample(prompt_id=record.id, index=index, text=text, policy_version=1))
    return out


def shard_bytes(store: RunStore, run_id: str, round_index: int, *, legacy: bool) -> int:
    """The round's shard size: the store's own, or the same rows through `datasets`' writer (legacy)."""
    shard = store.shard_path(run_id, round_index)
    if not legacy:
        return shard.stat().st_size
    rewritten = shard.with_suffix(".datasets.parquet")
    Dataset.from_parquet(str(shard)).to_parquet(str(rewritten))
    return rewritten.stat().st_size


def run(args: argparse.Namespace, work: Path) -> dict[str, object]:
    records = TASKS["shapes"].generate(args.prompts, args.seed, work / "images")
    prompts = [to_prompt(record) for record in records]
    groups = labelling.group_samples(prompts, samples(records, args.n, args.seed))
    batch = labelling.build_pairs(
        groups,
        grader=Grader.from_config(RewardConfig()),
        task_step_checks={},
        max_pairs=args.max_pairs,
        seed=args.seed,
        round_index=1,
    )
    pairs, legacy_pairs = batch.pairs, inlined(batch.pairs, prompts)
    sent = named_prompts(prompts, pairs)
    stats = batch.tally.to_proto()
    sizes = {
        "build_pairs_response": (
            reward_pb2.BuildPairsResponse(pairs=legacy_pairs, stats=stats).ByteSize(),
            reward_pb2.BuildPairsResponse(pairs=pairs, prompts=sent, stats=stats).ByteSize(),
        ),
        "train_request": (
            trainer_pb2.TrainRequest(pairs=legacy_pairs, round=1).ByteSize(),
            trainer_pb2.TrainRequest(pairs=pairs, prompts=sent, round=1).ByteSize(),
        ),
    }
    store = RunStore(work / "store")
    for run_id, form in (("legacy", legacy_pairs), ("new", pairs)):
        store.put_run(controller_pb2.Run(run_id=run_id))
        store.commit_pairs(run_id, 1, form, prompts=sent)
    sizes["stored_shard"] = (
        shard_bytes(store, "legacy", 1, legacy=True),
        shard_bytes(store, "new", 1, legacy=False),
    )
    count = len(pairs)
    return {
        "pairs": count,
        "prompts_with_pairs": len(sent),
        "image_bytes_per_prompt": round(sum(len(i.data) for p in sent for i in p.images) / max(1, len(sent))),
        "bytes_per_pair": {
            name: {
                "legacy": round(old / count),
                "new": round(new / count),
                "ratio_legacy_over_new": round(old / new, 2),
            }
            for name, (old, new) in sizes.items()
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="prompts in the round (the default prompts_per_round)")
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-pairs", type=int, default=15, help="correctness pairs per prompt at most")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    print(
        json.dumps(
            {
                "benchmark": "pair_bytes",
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "workload": {"task": "shapes", "prompts": args.prompts, "n": args.n, "max_pairs": args.max_pairs},
                "result": result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
