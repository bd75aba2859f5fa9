"""The text the tiny tokenizer is trained on: the built-in tasks' questions and demonstrations."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from mpo.data.prompting import COT_INSTRUCTION
from mpo.data.tasks import TASKS

SCAFFOLD_REPEATS = 200


def task_corpus(task_names: list[str], *, seed: int = 0, per_task: int = 2000) -> list[str]:
    """Deterministic for a seed: the instruction, then each task's questions and demonstrations."""
    unknown = sorted(set(task_names) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; built-in tasks are {sorted(TASKS)}")
    rng = random.Random(seed)
    # Repeated so BPE merges the fixed instruction and chat scaffolding into few tokens: every prompt
    # carries them, and on 2 CPU cores sequence length is training time.
    corpus = [COT_INSTRUCTION, "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"] * SCAFFOLD_REPEATS
    with tempfile.TemporaryDirectory() as images:  # image files are not needed for text, only the scenes
        for name in task_names:
            task = TASKS[name]
            for record in task.generate(per_task, seed, Path(images) if task.has_images else None):
                corpus.append(record.question)
                corpus.extend(c for c in record.choices or [])
                demonstration = task.demonstration(record, rng)
                if demonstration:
                    corpus.append(demonstration)
    return corpus
