"""Weight updates on the wire and on disk: packing, bounds, full verification, and the crash-safe ledger."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import save

from mpo import failpoints
from mpo.failpoints import FailpointError
from mpo.services.rollout.service import _receive
from mpo.serving.validation import InvalidRequest
from mpo.v1 import rollout_pb2
from mpo.weights import (
    FAILPOINT_AFTER_FIRST_TENSOR,
    HEADER_BYTES_PER_TENSOR,
    UPDATE_SLACK_BYTES,
    ShardWriter,
    TensorSpec,
    WeightLedger,
    check_update_size,
    iter_tensors,
    manifest_for,
    max_update_bytes,
    model_signature,
    pack,
    verify_files,
    write_shards,
)
from tests.conftest import tiny_qwen2_config


def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"a.weight": torch.randn(4, 3), "b.weight": torch.randn(8), "c.bias": torch.randn(2, 2)}


def signature_of(tensors: dict[str, torch.Tensor]) -> dict[str, TensorSpec]:
    return {name: TensorSpec(tuple(t.shape), t.dtype) for name, t in tensors.items()}


def test_pack_buckets_whole_tensors_and_round_trips(tmp_path: Path) -> None:
    tensors = state()
    manifest, blobs = pack(tensors, version=3, bucket_bytes=40)  # tensors of 48, 32 and 16 bytes
    assert len(blobs) == 3, "no two neighbours fit one 40-byte bucket; a 48-byte tensor still gets its own"
    assert (manifest.version, manifest.tensor_count, manifest.format) == (3, 3, "safetensors")
    assert manifest.total_bytes == sum(map(len, blobs))
    files = write_shards(blobs, tmp_path / "shards")
    verify_files(files, manifest, signature_of(tensors))
    loaded = dict(iter_tensors(files))
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)


def test_model_signature_uses_module_names_without_allocating(tmp_path: Path) -> None:
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM(tiny_qwen2_config())
    model.save_pretrained(tmp_path)
    signature = model_signature(tmp_path)
    assert signature == {n: TensorSpec(tuple(t.shape), t.dtype) for n, t in model.state_dict().items()}
    assert "lm_head.weight" in signature  # untied: the head travels explicitly (docs/design.md §5)


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (lambda s: s.pop("b.weight"), "payload", "missing tensors 'b.weight'"),
        (lambda s: s.update(extra=torch.zeros(1)), "payload", "unexpected tensor 'extra'"),
        (lambda s: s.update({"a.weight": torch.zeros(3, 4)}), "payload", "has shape (3, 4), the model needs (4, 3)"),
        (lambda s: s.update({"c.bias": torch.zeros(2, 2, dtype=torch.int64)}), "payload", "must be floating point"),
    ],
)
def test_verification_names_what_is_wrong(tmp_path: Path, mutate, field: str, message: str) -> None:
    expected = signature_of(state())
    tensors = state()
    mutate(tensors)
    manifest, blobs = pack(tensors, version=1)
    with pytest.raises(InvalidRequest) as caught:
        verify_files(write_shards(blobs, tmp_path), manifest, expected)
    assert caught.value.field == field and message in caught.value.reason
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_verification_checks_manifest_against_the_bytes(tmp_path: Path) -> None:
    tensors = state()
    manifest, blobs = pack(tensors, version=1)
    files = write_shards(blobs, tmp_path / "ok")
    expected = signature_of(tensors)
    for field, value, message in [
        ("sha256", "0" * 64, "checksum mismatch"),
        ("total_bytes", manifest.total_bytes + 1, "payload has"),
        ("tensor_count", 4, "manifest says 4 tensors, payload has 3"),
    ]:
        bad = type(manifest)()
        bad.CopyFrom(manifest)
        setattr(bad, field, value)
        with pytest.raises(InvalidRequest, match=message) as caught:
            verify_files(files, bad, expected)
        assert caught.value.field == f"manifest.{field}"
    twice = [save({"a.weight": tensors["a.weight"]}), save({"a.weight": tensors["a.weight"]})]
    with pytest.raises(InvalidRequest, match=r"'a\.weight' appears twice"):
        verify_files(write_shards(twice, tmp_path / "dup"), manifest_for(twice, 1, tensor_count=2), expected)
    garbage = [b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"]
    with pytest.raises(InvalidRequest, match="not a readable safetensors file"):
        verify_files(write_shards(garbage, tmp_path / "bad"), manifest_for(garbage, 1, tensor_count=1), expected)


def test_shard_writer_hashes_what_it_writes(tmp_path: Path) -> None:
    """A streamed update is hashed as it is written; verification trusts that digest, not a re-read."""
    tensors = state()
    manifest, blobs = pack(tensors, version=1, bucket_bytes=40)
    writer = ShardWriter(tmp_path)
    for blob in blobs:
        writer.write(blob)
    assert writer.digest == (manifest.sha256, manifest.total_bytes)
    assert [p.read_bytes() for p in writer.files] == blobs and writer.files == sorted(writer.files)
    verify_files(writer.files, manifest, signature_of(tensors), digest=writer.digest)
    with pytest.raises(InvalidRequest, match="checksum mismatch"):
        verify_files(writer.files, manifest, signature_of(tensors), digest=("0" * 64, manifest.total_bytes))
    with pytest.raises(FileExistsError):  # a staged shard is never overwritten
        ShardWriter(tmp_path).write(blobs[0])


def chunks(blobs: list[bytes]) -> list[rollout_pb2.LoadWeightsRequest]:
    return [
        rollout_pb2.LoadWeightsRequest(chunk=rollout_pb2.WeightChunk(index=i, payload=b)) for i, b in enumerate(blobs)
    ]


def test_receive_writes_every_chunk_in_order(tmp_path: Path) -> None:
    manifest, blobs = pack(state(), version=1, bucket_bytes=40)

    async def stream():
        for message in chunks(blobs):
            yield message

    writer = asyncio.run(_receive(stream(), tmp_path))
    assert [p.read_bytes() for p in writer.files] == blobs
    assert writer.digest == (manifest.sha256, manifest.total_bytes)


def test_receive_lands_the_write_under_way_before_a_failed_stream_ends(tmp_path: Path) -> None:
    """Chunk i is written while chunk i + 1 arrives; when the stream then fails, the write still under way
    finishes before the error reaches the caller, who removes staging next: no file lands after that."""
    _, blobs = pack(state(), version=1, bucket_bytes=40)

    async def failing():
        for message in chunks(blobs[:2]):
            yield message
        await asyncio.sleep(0)  # the second write is under way in its thread
        raise InvalidRequest("stream", "the client went away")

    with pytest.raises(InvalidRequest, match="went away"):
        asyncio.run(_receive(failing(), tmp_path))
    assert [p.read_bytes() for p in sorted(tmp_path.iterdir())] == blobs[:2]


def test_ledger_commits_prunes_and_refuses_old_versions(tmp_path: Path) -> None:
    ledger = WeightLedger(tmp_path / "ledger")
    assert ledger.current() is None
    for version in (1, 2):
        manifest, blobs = pack(state(), version=version)
        with ledger.staging(version) as staging:
            committed = ledger.commit(version, write_shards(blobs, staging), manifest)
        assert committed.version == version and not staging.exists()
    current = WeightLedger(tmp_path / "ledger").current()  # a new process reads the same state
    assert current is not None and current.version == 2 and current.manifest.sha256 == manifest.sha256
    assert sorted(p.name for p in (tmp_path / "ledger").iterdir()) == ["current.json", "v2"]
    verify_files(current.files, current.manifest, signature_of(state()))
    with pytest.raises(InvalidRequest) as caught:
        ledger.commit(2, write_shards(blobs, tmp_path / "again"), manifest)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_ledger_versions_advance_one_at_a_time(tmp_path: Path) -> None:
    """A client that could commit any larger version could commit 2**64-1 and lock every publish out."""
    ledger = WeightLedger(tmp_path / "ledger")
    manifest, blobs = pack(state(), version=1)
    source = write_shards(blobs, tmp_path / "shards")
    for version, serving in [(2, 0), (2**63, 0), (0, 0)]:
        with pytest.raises(InvalidRequest) as caught:
            ledger.commit(version, source, manifest)
        assert (caught.value.field, caught.value.code) == ("manifest.version", grpc.StatusCode.FAILED_PRECONDITION)
        assert f"must be {serving + 1} (the serving version {serving} + 1), got {version}" in caught.value.reason
    assert ledger.current() is None, "a refused version commits nothing"
    ledger.commit(1, source, manifest)
    with pytest.raises(InvalidRequest, match=r"must be 2 \(the serving version 1 \+ 1\), got 3"):
        ledger.commit(3, source, manifest)
    assert ledger.commit(2, source, manifest).version == 2


def test_size_cap_holds_every_honest_update_of_the_model(tmp_path: Path) -> None:
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM(tiny_qwen2_config())
    model.save_pretrained(tmp_path)
    signature = model_signature(tmp_path)
    cap = max_update_bytes(signature)
    numel = sum(t.numel() for t in model.state_dict().values())
    names = sum(len(name) for name in signature)
    assert cap == 8 * numel + names + HEADER_BYTES_PER_TENSOR * len(signature) + UPDATE_SLACK_BYTES
    # The largest honest update: float64, one tensor per blob (the most headers there can be).
    widest, blobs = pack({k: v.double() for k, v in model.state_dict().items()}, version=1, bucket_bytes=1)
    assert len(blobs) == len(signature) and widest.total_bytes <= cap
    check_update_size(cap, cap, "manifest.total_bytes")
    with pytest.raises(InvalidRequest) as caught:
        check_update_size(cap + 1, cap, "manifest.total_bytes")
    assert caught.value.field == "manifest.total_bytes" and caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{cap + 1} bytes is more than the cap of {cap} bytes" in caught.value.reason


def test_staging_is_removed_however_the_upload_ends(tmp_path: Path) -> None:
    ledger = WeightLedger(tmp_path / "ledger")
    with pytest.raises(InvalidRequest), ledger.staging(1) as staging:
        write_shards([b"partial"], staging)
        raise InvalidRequest("chunk.payload", "a bad chunk")
    assert not staging.exists()
    assert list((tmp_path / "ledger").iterdir()) == []


def test_failpoint_fires_after_the_first_tensor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    armed = tmp_path / "failpoints"
    armed.write_text(f"{FAILPOINT_AFTER_FIRST_TENSOR}=raise\n")
    monkeypatch.setenv(failpoints.ENV, str(armed))
    _, blobs = pack(state(), version=1, bucket_bytes=40)
    taken = []
    with pytest.raises(FailpointError):
        for name, _ in iter_tensors(write_shards(blobs, tmp_path / "shards")):
            taken.append(name)
    assert taken == ["a.weight"], "the engine had the first tensor, and only it, when the load failed"
    assert len(dict(iter_tensors(write_shards(blobs, tmp_path / "again")))) == 3, "fired once"


def test_ledger_commit_from_storage_links_and_leaves_the_source(tmp_path: Path) -> None:
    manifest, blobs = pack(state(), version=1)
    source = write_shards(blobs, tmp_path / "trainer-output")
    committed = WeightLedger(tmp_path / "ledger").commit(1, source, manifest)
    assert all(p.exists() for p in source), "the trainer's files are not moved away"
    assert [p.stat().st_ino for p in committed.files] == [p.stat().st_ino for p in source]  # hard links


CRASHER = """
import sys, torch
from pathlib import Path
from mpo.weights import WeightLedger, pack, write_shards
ledger = WeightLedger(Path(sys.argv[1]))
state = {f"t{i}": torch.full((256, 256), float(i)) for i in range(16)}
version = 0
while True:
    version += 1
    manifest, blobs = pack(state, version=version, bucket_bytes=2**18)
    with ledger.staging(version) as staging:
        ledger.commit(version, write_shards(blobs, staging), manifest)
    if version == 1:
        print("committed", flush=True)
"""


def test_ledger_survives_kill_9_mid_commit(tmp_path: Path) -> None:
    """Whatever moment kill -9 lands, the ledger names a complete version whose bytes verify."""
    script = tmp_path / "crasher.py"
    script.write_text(CRASHER)
    root = tmp_path / "ledger"
    for delay in (0.05, 0.2, 0.45):
        process = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE, text=True)
        assert process.stdout is not None and process.stdout.readline().strip() == "committed"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        current = WeightLedger(root).current()
        assert current is not None and current.version >= 1
        signature = {f"t{i}": TensorSpec((256, 256), torch.float32) for i in range(16)}
        verify_files(current.files, current.manifest, signature)
        root.joinpath("current.json").unlink()  # the next round starts over from version 1
