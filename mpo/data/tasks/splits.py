"""Train / held-out splits of a built-in task with no problem shared between them.

Why by hash: an item's split is a pure function of its content (its task's dedup key), so the two
splits never share a problem, even across different seeds, and neither split's difficulty mix is
skewed by removing the other's items. Held-out items are also unique among themselves (clean
accuracy statistics); train items may repeat (small problem spaces such as one-step sums are
sampled i.i.d., as in training).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from mpo.data.records import PromptRecord
from mpo.data.tasks._common import derive_seed, key_fraction

if TYPE_CHECKING:
    from mpo.data.tasks import Task

#: Share of the dedup-key space that belongs to the held-out split.
HELDOUT_KEY_FRACTION = 0.5
#: Give up (rather than loop for ever) after this many generated items per requested item.
MAX_DRAWS_PER_ITEM = 50


def split_of(task: Task, record: PromptRecord) -> str:
    return "heldout" if key_fraction(f"{task.name}\n{task.key(record)}") < HELDOUT_KEY_FRACTION else "train"


def make_splits(task_name: str, *, seed: int, train: int, heldout: int, out_dir: Path) -> dict[str, list[PromptRecord]]:
    """Generate `train` + `heldout` records of a task; images go to out_dir/images/<id>.png.

    Ids are f"{task}-{split}-{i:06d}". Deterministic in (task_name, seed, train, heldout). Writes no
    JSONL: the caller decides the record files.
    """
    from mpo.data.tasks import TASKS

    task = TASKS[task_name]
    wanted = {"train": train, "heldout": heldout}
    splits: dict[str, list[PromptRecord]] = {"train": [], "heldout": []}
    heldout_keys: set[str] = set()
    image_dir = Path(out_dir).resolve() / "images" if task.has_images else None
    staging = image_dir / f".staging-{task_name}-{seed}" if image_dir is not None else None
    drawn, chunk = 0, 0
    try:
        while any(len(splits[s]) < wanted[s] for s in splits):
            if drawn > MAX_DRAWS_PER_ITEM * (train + heldout) + 10_000:
                raise RuntimeError(
                    f"{task_name}: found only {len(splits['train'])}/{train} train and "
                    f"{len(splits['heldout'])}/{heldout} unique held-out items; ask for fewer"
                )
            missing = sum(max(0, wanted[s] - len(splits[s])) for s in splits)
            size = min(4096, max(64, 2 * missing))
            batch = task.generate(size, derive_seed("splits", task_name, seed, chunk), staging)
            drawn, chunk = drawn + size, chunk + 1
            for record in batch:
                split = split_of(task, record)
                keep = len(splits[split]) < wanted[split]
                if keep and split == "heldout":
                    key = task.key(record)
                    keep = key not in heldout_keys
                    heldout_keys.add(key)
                if not keep:
                    for path in record.images:
                        path.unlink(missing_ok=True)
                    continue
                new_id = f"{task_name}-{split}-{len(splits[split]):06d}"
                images = []
                for k, path in enumerate(record.images):
                    assert image_dir is not None
                    target = image_dir / (f"{new_id}.png" if len(record.images) == 1 else f"{new_id}-{k}.png")
                    os.replace(path, target)
                    images.append(target)
                splits[split].append(record.model_copy(update={"id": new_id, "images": images}))
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return splits
