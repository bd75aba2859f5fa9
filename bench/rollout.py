"""Rollout service: gRPC overhead on sampling, and weight-update speed per transport (docs/design.md §6).

For each model size (the tiny default policy, and a ~0.5B-parameter random-weight Qwen2):
- tokens/s of the same workload through the gRPC service (1 replica) vs the same engine class called
  in-process, run one after the other in this process (target ratio >= 0.95);
- weight-update seconds and bytes/s for the streamed transport (LoadWeights) and the storage fast
  path (LoadWeightsFromStorage), each against a plain in-memory copy of the same bytes (target >= 0.5x
  on the fast path). An update includes verification (SHA-256, names, shapes), the ledger commit and
  the engine's in-place reload.

    .venv/bin/python bench/rollout.py [--sizes tiny,0.5b] [--prompts 32] [--n 4] [--max-tokens 64]
                                      [--skip-sampling]  (weight updates alone: minutes less at 0.5b)
                                      [--bucket-bytes N] (chunk / shard size; default the product's)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import ray
import torch
from transformers import AutoModelForCausalLM

from mpo.config import RolloutConfig
from mpo.data.tasks import TASKS
from mpo.models.corpus import task_corpus
from mpo.models.tiny import NAMED_SIZES, TextModelSpec, build_text_model
from mpo.services.rollout.engines import create_engine
from mpo.services.rollout.server import start_rollout
from mpo.services.rollout.service import sampling_spec
from mpo.serving.clients import RolloutClient
from mpo.v1 import common_pb2
from mpo.weights import DEFAULT_BUCKET_BYTES, pack, write_shards


def workload(prompts: int) -> list[common_pb2.Prompt]:
    records = TASKS["arith"].generate(prompts, 7, None)
    return [common_pb2.Prompt(id=r.id, question=r.question, task="arith") for r in records]


async def in_process_tokens_per_s(config: RolloutConfig, prompts: list[common_pb2.Prompt], params) -> float:
    from mpo.prompts import PromptRenderer

    engine = create_engine(config)
    try:
        renderer = PromptRenderer(config.model, max_model_len=engine.description.max_model_len, readable_roots=[])
        spec = sampling_spec(params)
        inputs = [renderer.render(p, "p", max_tokens=spec.max_tokens) for p in prompts]
        await engine.generate(inputs[:2], spec)  # warm-up
        started = time.perf_counter()
        outputs = await engine.generate(inputs, spec)
        seconds = time.perf_counter() - started
        return sum(len(c.token_ids) for row in outputs for c in row) / seconds
    finally:
        await engine.shutdown()


async def grpc_tokens_per_s(client: RolloutClient, prompts: list[common_pb2.Prompt], params) -> float:
    await client.generate(prompts[:2], params)  # warm-up
    started = time.perf_counter()
    response = await client.generate(prompts, params)
    seconds = time.perf_counter() - started
    return sum(len(s.token_ids) for s in response.samples) / seconds


def memcpy_bytes_per_s(blobs: list[bytes]) -> float:
    started = time.perf_counter()
    copies = [bytearray(blob) for blob in blobs]
    seconds = time.perf_counter() - started
    return sum(len(c) for c in copies) / seconds


async def run_size(name: str, spec: TextModelSpec, work: Path, args: argparse.Namespace) -> dict[str, object]:
    model_dir = build_text_model(work / f"{name}-model", task_corpus(["arith"], seed=0), spec, seed=0)
    shared = work / f"{name}-shared"
    shared.mkdir()
    config = RolloutConfig(
        model=model_dir,
        backend="vllm",
        dtype="float32",
        max_model_len=512,
        kv_cache_bytes=args.kv_cache_mib * 2**20,
        enforce_eager=args.enforce_eager,
        weights_dir=work / f"{name}-ledger",
        readable_roots=[shared],
    )
    prompts = workload(args.prompts)
    params = common_pb2.SamplingParams(n=args.n, temperature=1.0, max_tokens=args.max_tokens, seed=0)
    direct = None if args.skip_sampling else await in_process_tokens_per_s(config, prompts, params)

    running = await start_rollout(config)
    try:
        async with RolloutClient(running.address, timeout=1800) as client:
            through_grpc = None if direct is None else await grpc_tokens_per_s(client, prompts, params)
            state = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
            parameters = sum(t.numel() for t in state.values())
            manifest, blobs = pack(state, version=1, bucket_bytes=args.bucket_bytes)
            memcpy = memcpy_bytes_per_s(blobs)
            started = time.perf_counter()
            streamed = await client.load_weights(manifest, blobs)
            streamed_s = time.perf_counter() - started
            manifest2, blobs2 = pack(
                {k: v * 1.0001 for k, v in state.items()}, version=2, bucket_bytes=args.bucket_bytes
            )
            write_shards(blobs2, shared / "v2")
            started = time.perf_counter()
            from_storage = await client.load_weights_from_storage(manifest2, str(shared / "v2"))
            storage_s = time.perf_counter() - started
    finally:
        await running.stop(0)
    total = manifest.total_bytes
    sampling = {}
    if direct is not None and through_grpc is not None:
        sampling = {
            "tokens_per_s": {"in_process": round(direct, 1), "grpc": round(through_grpc, 1)},
            "ratio_grpc_over_in_process": round(through_grpc / direct, 3),
        }
    return {
        "parameters": parameters,
        "update_bytes": total,
        **sampling,
        "weight_update": {
            "bucket_bytes": args.bucket_bytes,
            "blobs": len(blobs),
            "memcpy_bytes_per_s": round(memcpy),
            "streamed": {
                "seconds": round(streamed_s, 3),
                "install_seconds": round(streamed.load_seconds, 3),  # verify, commit, reload: after the bytes are in
                "bytes_per_s": round(total / streamed_s),
            },
            "storage": {
                "seconds": round(storage_s, 3),
                "install_seconds": round(from_storage.load_seconds, 3),
                "bytes_per_s": round(manifest2.total_bytes / storage_s),
            },
            "ratio_streamed_over_memcpy": round(total / streamed_s / memcpy, 4),
            "ratio_storage_over_memcpy": round(manifest2.total_bytes / storage_s / memcpy, 4),
        },
    }


async def main_async(args: argparse.Namespace) -> dict[str, object]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sizes.split(","):
            results[name] = await run_size(name, NAMED_SIZES[name], Path(tmp), args)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,0.5b")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--kv-cache-mib", type=int, default=256)
    parser.add_argument("--enforce-eager", action="store_true", help="skip torch.compile (faster start)")
    parser.add_argument(
        "--skip-sampling", action="store_true", help="measure the weight updates only (no tokens/s comparison)"
    )
    parser.add_argument(
        "--bucket-bytes",
        type=int,
        default=DEFAULT_BUCKET_BYTES,
        help="target size of one weight chunk / shard file (default: the product's)",
    )
    args = parser.parse_args()
    ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
    try:
        results = asyncio.run(main_async(args))
    finally:
        ray.shutdown()
    print(
        json.dumps(
            {
                "benchmark": "rollout",
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
                "workload": {"prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens},
                "sizes": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
