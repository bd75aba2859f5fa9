"""Policy weights on the wire and on disk: safetensors buckets, their manifest, and verification.

Both transports carry the same thing: whole tensors in safetensors blobs, named as in the transformers
module's `state_dict()` (what the trainer holds), plus a `WeightManifest` with the tensor count, the
byte count and a SHA-256 over the blobs in order. An update is verified completely (checksum, count,
every expected tensor present with its shape, nothing extra) *before* any replica sees it, so a
partial or mismatched update never replaces the weights that are serving.

Bounds, before any work: an update is at most `max_update_bytes` of its model (every tensor in the
widest accepted dtype, plus headers), and its version is exactly the committed one + 1, so no client can
fill the disk or jump the version counter out of reach of the next publish.

Committed updates are kept in a `WeightLedger` directory so that a replica that restarts loads the
current weights before it serves. An upload is staged in a `.incoming-*` directory of the ledger that
lives only as long as the call (`WeightLedger.staging`), whatever way the call ends.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch
from safetensors import safe_open
from safetensors.torch import save
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from mpo.durable import atomic_write, fsync
from mpo.failpoints import failpoint
from mpo.serving.validation import WEIGHT_FORMAT, InvalidRequest
from mpo.v1 import rollout_pb2

#: Target size of one safetensors blob (a `LoadWeights` chunk or a shard file); tensors are never split,
#: so a larger tensor is a blob of its own. Small on purpose: receiving 64 MiB chunks faulted fresh pages
#: in for every chunk (~1.6 million faults per 537 MB, against ~1,000 with 4 MiB chunks) and a streamed
#: update took about twice as long (docs/results.md, "Streamed updates").
DEFAULT_BUCKET_BYTES = 4 * 2**20
SHARD_SUFFIX = ".safetensors"
#: Header room per tensor beyond its name: dtype, shape, offsets, JSON syntax, and its blob's framing.
HEADER_BYTES_PER_TENSOR = 256
#: Room on top of the tensors, for whatever else a blob header may hold (`__metadata__`).
UPDATE_SLACK_BYTES = 2**20
#: Reached in both engines' weight loading right after the first tensor is in: a test can make a reload
#: fail half-way (`name=raise`) and check that no replica serves the mixed weights.
FAILPOINT_AFTER_FIRST_TENSOR = "rollout.load_weights.after_first_tensor"


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype


WeightSignature = dict[str, TensorSpec]


def model_signature(model_dir: Path, *, trust_remote_code: bool = False) -> WeightSignature:
    """Names, shapes and dtypes an update must carry, from the model built on the meta device (no RAM)."""
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    loader = AutoModelForImageTextToText if hasattr(config, "vision_config") else AutoModelForCausalLM
    with torch.device("meta"):
        model = loader.from_config(
            config, dtype=getattr(config, "dtype", None) or torch.float32, trust_remote_code=trust_remote_code
        )
    return {name: TensorSpec(tuple(t.shape), t.dtype) for name, t in model.state_dict().items()}


def pack(
    tensors: Mapping[str, torch.Tensor], version: int, *, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> tuple[rollout_pb2.WeightManifest, list[bytes]]:
    """Split a state dict into safetensors blobs of about `bucket_bytes` and describe them."""
    blobs = to_blobs(tensors, bucket_bytes)
    return manifest_for(blobs, version, tensor_count=len(tensors)), blobs


def to_blobs(tensors: Mapping[str, torch.Tensor], bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> list[bytes]:
    """Whole tensors, in order, as safetensors blobs of about `bucket_bytes` each."""
    blobs: list[bytes] = []
    bucket: dict[str, torch.Tensor] = {}
    size = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if bucket and size + nbytes > bucket_bytes:
            blobs.append(save(bucket))
            bucket, size = {}, 0
        bucket[name] = tensor.detach().contiguous().cpu()
        size += nbytes
    if bucket:
        blobs.append(save(bucket))
    return blobs


def manifest_for(blobs: Sequence[bytes], version: int, *, tensor_count: int) -> rollout_pb2.WeightManifest:
    digest = hashlib.sha256()
    for blob in blobs:
        digest.update(blob)
    return rollout_pb2.WeightManifest(
        version=version,
        tensor_count=tensor_count,
        total_bytes=sum(len(b) for b in blobs),
        sha256=digest.hexdigest(),
        format=WEIGHT_FORMAT,
    )


def write_shards(blobs: Iterable[bytes], directory: Path) -> list[Path]:
    """Blobs as shard files whose name order is the blob order (`LoadWeightsFromStorage` reads them so)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, blob in enumerate(blobs):
        path = directory / f"weights-{index:05d}{SHARD_SUFFIX}"
        path.write_bytes(blob)
        paths.append(path)
    return paths


def published_dir(publish_dir: Path, version: int) -> Path:
    """Where SHARED_STORAGE publishing writes `version`'s shards (`prune_published` relies on the name)."""
    return publish_dir / f"v{version:09d}"


def prune_published(publish_dir: Path, keep: Path) -> None:
    """Delete the version folders of `publish_dir`, all but `keep`: once the rollout service committed a
    version into its own ledger (hard links or copies) the trainer's copy is not read again, and a full
    set of weights per round would otherwise fill the shared volume."""
    for path in publish_dir.glob("v*"):
        if path != keep and path.name[1:].isdigit() and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def shard_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(SHARD_SUFFIX))


#: (SHA-256 hex, byte count) of shards in order, as the manifest states them.
Digest = tuple[str, int]


def _sha256_of_files(paths: Sequence[Path]) -> Digest:
    digest, total = hashlib.sha256(), 0
    for path in paths:
        with path.open("rb") as handle:
            while block := handle.read(8 * 2**20):
                digest.update(block)
                total += len(block)
    return digest.hexdigest(), total


class ShardWriter:
    """Writes received blobs as shard files in order and hashes them on the way: each byte is written
    once and never read back before verification (`verify_files(..., digest=writer.digest)`).

    Not thread-safe: one `write` at a time, in blob order (the hash is over the blobs in order)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.files: list[Path] = []
        self._sha256 = hashlib.sha256()
        self._total = 0

    def write(self, payload: bytes) -> Path:
        path = self.directory / f"weights-{len(self.files):05d}{SHARD_SUFFIX}"
        with path.open("xb") as handle:  # hashlib and file writes release the GIL: the event loop runs on
            handle.write(payload)
        self._sha256.update(payload)
        self._total += len(payload)
        self.files.append(path)
        return path

    @property
    def digest(self) -> Digest:
        return self._sha256.hexdigest(), self._total


def _headers(paths: Sequence[Path]) -> Iterator[tuple[str, str, list[int], Path]]:
    """(name, dtype, shape, file) of every tensor, from the safetensors headers only."""
    for path in paths:
        try:
            with safe_open(path, framework="pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    info = handle.get_slice(name)
                    yield name, info.get_dtype(), list(info.get_shape()), path
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise InvalidRequest("payload", f"{path.name} is not a readable safetensors file ({exc})") from exc


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
}
_WIDEST_DTYPE_BYTES = max(dtype.itemsize for dtype in _SAFETENSORS_DTYPES.values())


def max_update_bytes(signature: WeightSignature) -> int:
    """The largest full update of this model: every tensor in the widest accepted dtype, with its header."""
    tensors = sum(
        math.prod(spec.shape) * _WIDEST_DTYPE_BYTES + len(name.encode()) + HEADER_BYTES_PER_TENSOR
        for name, spec in signature.items()
    )
    return tensors + UPDATE_SLACK_BYTES


def check_update_size(size: int, limit: int, field: str) -> None:
    """Refuse an update larger than `limit` (`max_update_bytes`) before any of it is received or read."""
    if size > limit:
        raise InvalidRequest(
            field,
            f"{size} bytes is more than the cap of {limit} bytes for this model "
            "(every tensor in float64 plus headers: no full update can be larger)",
        )


def check_next_version(version: int, serving: int) -> None:
    """Versions advance one at a time (the controller publishes serving + 1): a client that could commit
    any larger version could also commit the largest one and lock every later publish out."""
    if version != serving + 1:
        raise InvalidRequest(
            "manifest.version",
            f"must be {serving + 1} (the serving version {serving} + 1), got {version}",
            grpc.StatusCode.FAILED_PRECONDITION,
        )


def verify_files(
    paths: Sequence[Path],
    manifest: rollout_pb2.WeightManifest,
    signature: WeightSignature,
    *,
    digest: Digest | None = None,
) -> None:
    """Raise InvalidRequest unless the shard files are exactly the update the manifest describes.

    `digest`: the files' hash and size taken as they were written (`ShardWriter`); without it the files
    are read and hashed here. Floating dtypes may differ from the model's (a bf16 trainer can feed an
    fp32 engine); shapes may not.
    """
    sha256, total = digest if digest is not None else _sha256_of_files(paths)
    if total != manifest.total_bytes:
        raise InvalidRequest("manifest.total_bytes", f"manifest says {manifest.total_bytes} bytes, payload has {total}")
    if sha256 != manifest.sha256:
        raise InvalidRequest("manifest.sha256", f"checksum mismatch: payload hashes to {sha256}")
    seen: set[str] = set()
    for name, dtype, shape, path in _headers(paths):
        if name in seen:
            raise InvalidRequest("payload", f"tensor {name!r} appears twice (again in {path.name})")
        seen.add(name)
        expected = signature.get(name)
        if expected is None:
            raise InvalidRequest("payload", f"unexpected tensor {name!r}: the model has no such parameter")
        if tuple(shape) != expected.shape:
            raise InvalidRequest(
                "payload", f"tensor {name!r} has shape {tuple(shape)}, the model needs {expected.shape}"
            )
        if dtype not in _SAFETENSORS_DTYPES:
            raise InvalidRequest("payload", f"tensor {name!r} has dtype {dtype}; weights must be floating point")
    if len(seen) != manifest.tensor_count:
        raise InvalidRequest(
            "manifest.tensor_count", f"manifest says {manifest.tensor_count} tensors, payload has {len(seen)}"
        )
    missing = sorted(set(signature) - seen)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise InvalidRequest(
            "payload", f"missing tensors {', '.join(map(repr, missing[:3]))}{more} (a full update is needed)"
        )


def iter_tensors(paths: Sequence[Path | str]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every shard in order, one tensor in memory at a time (both engines load from it)."""
    first = True
    for path in paths:
        with safe_open(Path(path), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                yield name, handle.get_tensor(name)
                if first:  # resumed: the engine has taken the first tensor in
                    first = False
                    failpoint(FAILPOINT_AFTER_FIRST_TENSOR)


@dataclass(frozen=True)
class CommittedWeights:
    version: int
    files: list[Path]
    manifest: rollout_pb2.WeightManifest


class WeightLedger:
    """The current policy weights in a directory: `v<version>/` shards plus an atomically replaced
    `current.json`. Survives kill -9 of any process; old versions are pruned after a commit."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @property
    def _pointer(self) -> Path:
        return self.root / "current.json"

    def current(self) -> CommittedWeights | None:
        try:
            record = json.loads(self._pointer.read_text())
        except FileNotFoundError:
            return None
        manifest = rollout_pb2.WeightManifest(**record["manifest"])
        return CommittedWeights(record["version"], [self.root / f for f in record["files"]], manifest)

    @contextmanager
    def staging(self, version: int) -> Iterator[Path]:
        """Where an incoming update is written before it is verified and committed (which moves its files
        out); removed when the block ends, however it ends (bad chunk, failed check, idle or gone client)."""
        path = self.root / f".incoming-v{version}-{os.getpid()}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def commit(self, version: int, files: Sequence[Path], manifest: rollout_pb2.WeightManifest) -> CommittedWeights:
        """Move (or hard-link, for files outside the ledger) verified shards into `v<version>/` and point at it."""
        current = self.current()
        check_next_version(version, current.version if current is not None else 0)
        target = self.root / f"v{version}"
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        kept = []
        for index, source in enumerate(files):
            destination = target / f"weights-{index:05d}{SHARD_SUFFIX}"
            if source.parent.name.startswith(".incoming-"):
                source.rename(destination)
            else:
                _link_or_copy(source, destination)
            kept.append(destination)
        for path in [*kept, target]:
            fsync(path)
        record = {
            "version": version,
            "files": [str(p.relative_to(self.root)) for p in kept],
            "manifest": {
                "version": manifest.version,
                "tensor_count": manifest.tensor_count,
                "total_bytes": manifest.total_bytes,
                "sha256": manifest.sha256,
                "format": manifest.format,
            },
        }
        atomic_write(self._pointer, json.dumps(record).encode())
        self._prune(keep=target)
        return CommittedWeights(version, kept, manifest)

    def _prune(self, keep: Path) -> None:
        for path in self.root.iterdir():
            if path.is_dir() and path != keep and (path.name.startswith("v") or path.name.startswith(".incoming-")):
                shutil.rmtree(path, ignore_errors=True)


def _link_or_copy(source: Path, destination: Path) -> None:
    """Hard links cost nothing on the same filesystem; elsewhere the shard is copied."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)
