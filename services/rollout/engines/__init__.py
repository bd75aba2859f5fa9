"""Rollout engines behind one interface (`base.Engine`): vLLM, and transformers where vLLM cannot run."""

from __future__ import annotations

import torch

from mpo.chat import ChatRenderer
from mpo.config import RolloutConfig
from mpo.models.loading import context_length, is_image_text_model
from mpo.services.rollout.engines.base import Engine


class EngineUnavailable(RuntimeError):
    """The configured backend cannot serve this model on this device."""


def engine_device(config: RolloutConfig) -> str:
    return "cuda" if config.num_gpus_per_replica > 0 and torch.cuda.is_available() else "cpu"


def resolve_backend(config: RolloutConfig, device: str) -> str:
    image_text = is_image_text_model(config.model)
    if config.backend == "auto":
        return "transformers" if image_text and device == "cpu" else "vllm"
    if config.backend == "vllm" and image_text and device == "cpu":
        raise EngineUnavailable(
            f"backend 'vllm' cannot serve the image-text model {config.model} on CPU (vLLM's multimodal "
            "models need torchvision, which has no CPU build for this torch); use backend 'transformers' or a GPU"
        )
    return config.backend


def create_engine(config: RolloutConfig) -> Engine:
    device = engine_device(config)
    backend = resolve_backend(config, device)
    image_text = is_image_text_model(config.model)
    max_model_len = min(config.max_model_len, context_length(config.model))
    renderer = ChatRenderer(config.model, prompt=config.prompt, trust_remote_code=config.trust_remote_code)
    if backend == "vllm":
        from mpo.services.rollout.engines.vllm_engine import VllmEngine

        return VllmEngine(
            config.model,
            max_model_len=max_model_len,
            dtype=config.dtype,
            seed=config.seed,
            device=device,
            tensor_parallel_size=config.tensor_parallel_size,
            kv_cache_bytes=config.kv_cache_bytes,
            gpu_memory_utilization=config.gpu_memory_utilization,
            enforce_eager=config.enforce_eager,
            image_text=image_text,
            stop_token_ids=renderer.stop_token_ids(),
            trust_remote_code=config.trust_remote_code,
        )
    from mpo.services.rollout.engines.transformers_engine import TransformersEngine

    return TransformersEngine(
        renderer,
        max_model_len=max_model_len,
        device=device,
        trust_remote_code=config.trust_remote_code,
        kv_cache=config.transformers_kv_cache,
    )
