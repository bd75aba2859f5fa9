"""Runs inside vLLM's worker process: in-place weight reload from safetensors shard files.

vLLM reaches this through `collective_rpc`; paths (not tensors) cross the process boundary (docs/design.md §5).
`reload_weights` handles the CPU backend's pre-packed layouts, where `model.load_weights` does not.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from mpo.weights import iter_tensors


class WeightReloadExtension:
    """Mixed into vLLM's worker class by `worker_extension_cls`."""

    def mpo_reload_files(self, paths: list[str]) -> int:
        loaded = 0

        def counted() -> Iterator[tuple[str, torch.Tensor]]:
            nonlocal loaded
            for item in iter_tensors(paths):
                loaded += 1
                yield item

        self.reload_weights(weights_iterator=counted())  # type: ignore[attr-defined]  (the worker's method)
        return loaded
