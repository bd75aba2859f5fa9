"""Pairs name their prompt by id: the prompt (with its images) travels, is stored and is decoded once per
prompt, and pairs that carry their prompt inline (the legacy form) still work everywhere."""

from __future__ import annotations

import io
import random
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from datasets import load_dataset
from PIL import Image as PILImage

from mpo.models.families import build_family_model
from mpo.pairs import inlined, named_prompts, referring
from mpo.services.controller.store import RunStore
from mpo.trainer.batching import PairEncoder, pair_batch
from mpo.v1 import common_pb2, controller_pb2


def noisy_png(seed: int, size: int = 96) -> bytes:
    """A PNG that does not compress away, so storing it twice would show in the shard's size."""
    rng = random.Random(seed)
    image = PILImage.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def prompt(pid: str, images: Sequence[bytes] = ()) -> common_pb2.Prompt:
    message = common_pb2.Prompt(id=pid, question=f"How many shapes in {pid}?", task="shapes", answer="3")
    for data in images:
        message.images.add(data=data)
    return message


def pair(pid: str, prompt_id: str, k: int) -> common_pb2.PreferencePair:
    return common_pb2.PreferencePair(
        id=pid,
        prompt_id=prompt_id,
        chosen=f"There are 3 shapes. Final answer: 3 ({k})",
        rejected=f"There are {4 + k} shapes. Final answer: {4 + k}",
        source=common_pb2.PAIR_SOURCE_CORRECTNESS,
        provenance=common_pb2.Provenance(policy_version=1, round=1),
    )


def test_referring_moves_each_prompt_out_once_in_first_use_order() -> None:
    a, b = prompt("a", [noisy_png(0)]), prompt("b")
    legacy = inlined([pair("x", "b", 0), pair("y", "a", 1), pair("z", "b", 2)], [a, b])
    prompts, pairs = referring(legacy)
    assert prompts == [b, a]
    assert [(p.id, p.prompt_id, p.HasField("prompt")) for p in pairs] == [
        ("x", "b", False),
        ("y", "a", False),
        ("z", "b", False),
    ]
    assert referring(pairs, prompts) == (prompts, pairs), "pairs already naming their prompt stay as they are"
    assert named_prompts([a, prompt("c"), b], pairs) == [a, b], "what a message sends: named prompts, in order"
    assert inlined(pairs, prompts) == legacy


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    runs = RunStore(tmp_path / "state")
    runs.put_run(controller_pb2.Run(run_id="run-a"))
    return runs


def test_a_prompts_image_is_stored_once_per_round_and_every_row_still_reads_it(store: RunStore) -> None:
    image = noisy_png(1)
    prompts = [prompt("p0", [image]), prompt("p1")]
    pairs = [pair(f"r1-p0-{k}", "p0", k) for k in range(15)] + [pair("r1-p1-0", "p1", 0)]
    shard = store.commit_pairs("run-a", 1, pairs, prompts=prompts).shard
    assert shard.stat().st_size < 2 * len(image), f"{shard.stat().st_size} bytes for one {len(image)}-byte image"
    rows = load_dataset("parquet", data_files=str(shard), split="train")
    assert [len(row["images"]) for row in rows] == [1] * 15 + [0]
    assert rows[14]["images"][0].size == (96, 96), "TRL gets each row's image, decoded"
    assert store.committed_round("run-a", 1) == (prompts, pairs)
    assert store.committed_pairs("run-a", 1) == inlined(pairs, prompts)


def test_legacy_inline_pairs_are_stored_as_before(store: RunStore) -> None:
    prompts = [prompt("p0", [noisy_png(2)])]
    legacy = inlined([pair("r1-a", "p0", 0), pair("r1-b", "p0", 1)], prompts)
    store.commit_pairs("run-a", 1, legacy)
    assert store.committed_pairs("run-a", 1) == legacy
    assert store.committed_round("run-a", 1) == referring(legacy)


@pytest.fixture(scope="module")
def image_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_family_model("qwen2-vl", tmp_path_factory.mktemp("pair-prompts") / "qwen2-vl", seed=0)


def test_the_trainer_decodes_each_prompt_once_and_legacy_pairs_encode_the_same(
    image_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = PairEncoder(image_model, max_length=1024, readable_roots=[])
    rendered: list[str] = []
    chat = encoder.renderer.chat
    monkeypatch.setattr(encoder.renderer, "chat", lambda p, field: rendered.append(field) or chat(p, field))
    prompts = [prompt("p0", [noisy_png(3)]), prompt("p1", [noisy_png(4)])]
    pairs = [pair("a", "p0", 0), pair("b", "p1", 1), pair("c", "p0", 2)]
    legacy = inlined([pair("d", "p1", 3)], prompts)[0]
    encoded = encoder.encode_all([*pairs, legacy], prompts)
    assert rendered == ["prompts[0]", "prompts[1]", "pairs[3].prompt"], "once per prompt, and once per inline pair"
    assert encoded[0].image_inputs["pixel_values"] is encoded[2].image_inputs["pixel_values"]
    alone = encoder.encode_all(inlined(pairs, prompts))
    for by_id, by_itself in zip(encoded, alone, strict=False):
        assert torch.equal(by_id.prompt_ids, by_itself.prompt_ids) and torch.equal(
            by_id.chosen_ids, by_itself.chosen_ids
        )
        assert all(torch.equal(by_id.image_inputs[k], v) for k, v in by_itself.image_inputs.items())
    batch = pair_batch(encoded, encoder.tokenizer.pad_token_id or 0)
    assert batch["input_ids"].shape[0] == 8


def test_an_unterminated_pair_trains_both_sides_without_the_end_of_turn(image_model: Path) -> None:
    """DropoutNTP's same-length pairs are cut short on purpose: an end-of-turn after either side would teach
    where to stop, which is what the cut removes."""
    encoder = PairEncoder(image_model, max_length=1024, readable_roots=[])
    end_of_turn = encoder.renderer.chat_renderer.end_of_turn_id
    whole = pair("a", "p0", 0)
    cut = common_pb2.PreferencePair()
    cut.CopyFrom(whole)
    cut.unterminated = True
    ended, unended = encoder.encode_all([whole, cut], [prompt("p0", [noisy_png(5)])])
    for with_end, without in ((ended.chosen_ids, unended.chosen_ids), (ended.rejected_ids, unended.rejected_ids)):
        assert int(with_end[-1]) == end_of_turn and end_of_turn not in without.tolist()
        assert torch.equal(with_end[:-1], without), "the same text, less its end-of-turn token"
