"""One data-parallel rank of the policy trainer: DeepSpeed (ZeRO-3 by default) inside a Ray actor.

The rank sets up torch.distributed itself (no `deepspeed` launcher: Ray places the processes), loads
the policy and the frozen reference under `HfDeepSpeedConfig` so ZeRO-3 partitions them while they
load, and then runs whatever the group asks, in lockstep with the other ranks: reference log-probs,
optimizer steps, checkpoint writes and reads, and the gathering of full weights for publishing.

Every collective (ZeRO-3 parameter gathers, δ's reduction, metric sums) happens the same number of
times on every rank, which `plan.py` guarantees by giving each rank the same number of micro-batches.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.optim.lr_scheduler import LambdaLR

from mpo.config import TrainerConfig
from mpo.cpu_affinity import pin_process
from mpo.models.loading import load_model, vision_tower
from mpo.models.logprobs import SequenceLogProbs, model_logprobs
from mpo.net import free_port
from mpo.trainer.batching import EncodedPair, pair_batch
from mpo.trainer.extensions import build_collective_op
from mpo.trainer.objective import MPOObjective
from mpo.trainer.plan import StepPlan, plan_epoch, plan_step
from mpo.trainer.reward_shift import sum_across_ranks
from mpo.weights import to_blobs

#: Per-step sums every rank contributes (reduced over ranks), in this order.
_SUMS = (
    "loss",
    "loss/preference",
    "loss/quality",
    "loss/generation",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margin",
    "rewards/accuracy",
    "tokens",
)
#: Which of them are per-pair means in the objective's metrics (summed here as mean × pairs).
_PER_PAIR = {"rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy"}


def deepspeed_config(config: TrainerConfig, *, cuda: bool) -> dict[str, Any]:
    """The DeepSpeed config of the policy: the caller owns accumulation boundaries (one `step()` per
    optimizer step, whatever number of micro-batches it took) and the loss scaling."""
    return {
        "train_micro_batch_size_per_gpu": config.micro_batch_pairs,
        "gradient_accumulation_steps": 1,
        "managed_gradient_accumulation": False,
        "gradient_clipping": config.max_grad_norm,
        "zero_optimization": {"stage": int(config.strategy[-1])},
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": config.learning_rate,
                "betas": list(config.adam_betas),
                "eps": 1e-8,
                "weight_decay": config.weight_decay,
                "torch_adam": True,
            },
        },
        "bf16": {"enabled": cuda},
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
    }


def learning_rate_ratio(step: int, *, warmup: int, decay: int, floor: float) -> float:
    """Linear warm-up, cosine decay over `decay` steps to `floor`, then `floor` for good: an online run
    has no last step, so the cosine must not climb back up (transformers' does, past its end)."""
    if step < warmup:
        return step / warmup
    progress = min(1.0, (step - warmup) / decay)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _schedule(config: TrainerConfig) -> Callable[[torch.optim.Optimizer], LambdaLR]:
    ratio = partial(
        learning_rate_ratio, warmup=config.warmup_steps, decay=config.total_steps, floor=config.final_lr_ratio
    )
    return lambda optimizer: LambdaLR(optimizer, ratio)


def _reference_config(policy_config: dict[str, Any]) -> dict[str, Any]:
    """ZeRO-3 inference for the frozen reference: partitioned like the policy, no optimizer state."""
    keep = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "zero_optimization", "bf16")
    return {key: policy_config[key] for key in keep} | {"steps_per_print": 2**62}


class TrainerRank:
    """Deployed with `ray.remote`. Methods are called on all ranks at once by `TrainerGroup`."""

    def __init__(self, config: TrainerConfig, rank: int) -> None:
        pin_process(config.cpu_affinity, field="trainer.cpu_affinity")  # before torch starts its threads
        self.config, self.rank = config, rank
        self.world_size = config.world_size
        self.cuda = config.num_gpus_per_rank > 0
        if not self.cuda:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        self.step = 0
        self.round = 0

    def rendezvous(self) -> tuple[str, int]:
        """Where the process group meets (asked of rank 0): its node address and a free port."""
        import ray

        return ray.util.get_node_ip_address(), free_port("")  # "": every interface, the other ranks dial in

    def setup(self, master_addr: str, master_port: int) -> dict[str, Any]:
        os.environ.update(
            RANK=str(self.rank),
            WORLD_SIZE=str(self.world_size),
            LOCAL_RANK="0",  # Ray gives each rank actor its own device, visible as device 0
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
        )
        self._seed_everything(self.config.seed + self.rank)
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        build_collective_op()  # before init_distributed builds it, where a stale build lock would hang it
        deepspeed.init_distributed(
            dist_backend="nccl" if self.cuda else "gloo", auto_mpi_discovery=False, verbose=False
        )
        ds_config = deepspeed_config(self.config, cuda=self.cuda)
        zero3 = self.config.strategy == "zero3"
        # Must stay alive while models load: transformers then builds them partitioned (zero.Init).
        self._hf_deepspeed = HfDeepSpeedConfig(ds_config) if zero3 else None
        self.dtype = dtype = torch.bfloat16 if self.cuda else torch.float32
        policy = load_model(self.config.model, dtype=dtype, trust_remote_code=self.config.trust_remote_code)
        if self.config.freeze_vision_tower:
            tower = vision_tower(policy)
            if tower is None:
                raise ValueError(f"freeze_vision_tower is set, but {self.config.model} has no vision tower")
            tower.requires_grad_(False)
        if self.config.gradient_checkpointing:
            policy.gradient_checkpointing_enable()
            policy.config.use_cache = False
        trainable = [p for p in policy.parameters() if p.requires_grad]
        self.engine, *_ = deepspeed.initialize(
            model=policy, model_parameters=trainable, config=ds_config, lr_scheduler=_schedule(self.config)
        )
        reference = load_model(self.config.model, dtype=dtype, trust_remote_code=self.config.trust_remote_code)
        reference = reference.eval().requires_grad_(False)
        if zero3:
            self.reference, *_ = deepspeed.initialize(model=reference, config=_reference_config(ds_config))
        else:
            self.reference = reference.to(self.engine.device)
        self.objective = MPOObjective(self.config.objective)
        self.pad_id = self._pad_id()
        return {"rank": self.rank, "device": str(self.engine.device), "trainable_parameters": self._trainable()}

    def _pad_id(self) -> int:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.config.model, trust_remote_code=self.config.trust_remote_code)
        return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)

    def _trainable(self) -> int:
        return sum(getattr(p, "ds_numel", p.numel()) for p in self.engine.module.parameters() if p.requires_grad)

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    # --- training ------------------------------------------------------------------------------------------

    def _forward(self, model: Any, pairs: Sequence[EncodedPair]) -> tuple[SequenceLogProbs, SequenceLogProbs]:
        batch = pair_batch(pairs, self.pad_id, pack=self.config.packing, dtype=self.dtype)
        m = len(pairs)
        logps = model_logprobs(model, {k: v.to(self.engine.device) for k, v in batch.items()}, 2 * m)
        return (
            SequenceLogProbs(logps.summed[:m], logps.token_counts[:m]),
            SequenceLogProbs(logps.summed[m:], logps.token_counts[m:]),
        )

    @torch.no_grad()
    def _reference_logps(self, pairs: Sequence[EncodedPair]) -> torch.Tensor:
        """[pairs, 2] summed log-probs of chosen and rejected under the reference: once per pair, spread
        over the ranks, then shared with all of them."""
        plan = plan_step(
            list(range(len(pairs))),
            [p.length for p in pairs],
            micro_batch=self.config.micro_batch_pairs,
            world_size=self.world_size,
        )
        local: dict[int, tuple[float, float]] = {}
        for indices in plan.micro_batches[self.rank]:
            chosen, rejected = self._forward(self.reference, [pairs[i] for i in indices or (0,)])
            for j, i in enumerate(indices):
                local[i] = (chosen.summed[j].item(), rejected.summed[j].item())
        if self.world_size > 1:
            parts: list[dict[int, tuple[float, float]]] = [{} for _ in range(self.world_size)]
            dist.all_gather_object(parts, local)
            local = {i: value for part in parts for i, value in part.items()}
        return torch.tensor([local[i] for i in range(len(pairs))], dtype=torch.float32)

    def train(
        self, pairs: Sequence[EncodedPair], round_index: int, epochs: int
    ) -> tuple[list[dict[str, float]], float]:
        """Train on a round's pairs (already deduplicated by the host): every step's metrics, and the
        seconds the reference log-probs took (once per pair, however many epochs)."""
        self.engine.train()
        started = time.perf_counter()
        reference = self._reference_logps(pairs)
        reference_seconds = time.perf_counter() - started
        lengths = [p.length for p in pairs]
        metrics = []
        for epoch in range(epochs):
            seed = hash((self.config.seed, round_index, epoch)) % 2**31
            for plan in plan_epoch(
                lengths,
                global_batch=self.config.global_batch_pairs,
                micro_batch=self.config.micro_batch_pairs,
                world_size=self.world_size,
                seed=seed,
            ):
                metrics.append(self._step(pairs, reference, plan))
        self.round = max(self.round, round_index)
        return metrics, reference_seconds

    def _step(self, pairs: Sequence[EncodedPair], reference: torch.Tensor, plan: StepPlan) -> dict[str, float]:
        everyone = [i for rank in plan.micro_batches for batch in rank for i in batch]
        chosen_tokens = sum(len(pairs[i].chosen_ids) for i in everyone)
        sums = dict.fromkeys(_SUMS, 0.0)
        learning_rate = float(self.engine.get_lr()[0])
        for indices in plan.micro_batches[self.rank]:
            padding = not indices
            used = list(indices) if indices else [everyone[0]]
            chosen, rejected = self._forward(self.engine, [pairs[i] for i in used])
            out = self.objective(
                chosen,
                rejected,
                reference[used, 0].to(chosen.summed.device),
                reference[used, 1].to(chosen.summed.device),
                step_pairs=plan.pairs,
                step_chosen_tokens=chosen_tokens,
                padding=padding,
            )
            # DeepSpeed averages gradients over ranks; the shares already sum to the step's loss.
            self.engine.backward(out.loss * self.world_size, scale_wrt_gas=False)
            if padding:
                continue
            for name in _SUMS:
                if name == "tokens":
                    sums[name] += float(chosen.token_counts.sum() + rejected.token_counts.sum())
                elif name in _PER_PAIR:
                    sums[name] += float(out.metrics[name]) * len(used)
                else:
                    sums[name] += float(out.metrics[name])
        self.engine.step()
        self.step += 1
        total = sum_across_ranks(torch.tensor([sums[name] for name in _SUMS], dtype=torch.float64))
        reduced = dict(zip(_SUMS, total.tolist(), strict=True))
        for name in _PER_PAIR:
            reduced[name] /= plan.pairs
        grad_norm = self.engine.get_global_grad_norm()
        return reduced | {
            "step": self.step,
            "reward_shift": self.objective.reward_shift.value,
            "learning_rate": learning_rate,
            "grad_norm": float(grad_norm) if grad_norm is not None else 0.0,
        }

    def memory(self) -> dict[str, int]:
        """Bytes this rank holds of the policy's parameters (its ZeRO partition) and optimizer state
        (fp32 master copy and Adam moments)."""
        parameters = sum(
            (p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()) * p.element_size()
            for p in self.engine.module.parameters()
        )
        optimizer = self.engine.optimizer
        inner = getattr(optimizer, "optimizer", optimizer)
        moments = sum(
            t.numel() * t.element_size() for state in inner.state.values() for t in state.values() if torch.is_tensor(t)
        )
        masters = sum(
            t.numel() * t.element_size()
            for name in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups")
            for t in getattr(optimizer, name, []) or []
        )
        return {"parameters": parameters, "optimizer_state": moments + masters}

    # --- state ---------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {"step": self.step, "round": self.round, "reward_shift": self.objective.reward_shift.value}

    def save_checkpoint(self, directory: str, tag: str) -> None:
        """Write this rank's part of the checkpoint (collective: every rank calls it)."""
        state = {
            "objective": self.objective.state_dict(),
            "step": self.step,
            "round": self.round,
            "rng": {
                "python": random.getstate(),
                "numpy": np.random.get_state(),
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if self.cuda else None,
            },
        }
        self.engine.save_checkpoint(directory, tag=tag, client_state={"mpo": state}, save_latest=False)

    def load_checkpoint(self, directory: str, tag: str) -> dict[str, Any]:
        path, client_state = self.engine.load_checkpoint(directory, tag=tag)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint {tag!r} in {directory}")
        state = client_state["mpo"]
        self.objective.load_state_dict(state["objective"])
        self.step, self.round = int(state["step"]), int(state["round"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if self.cuda and rng["cuda"] is not None:
            torch.cuda.set_rng_state_all(rng["cuda"])
        return self.status()

    # --- publishing ----------------------------------------------------------------------------------------

    def gather_weights(self, bucket_bytes: int) -> tuple[list[bytes], int] | None:
        """The full weights as safetensors blobs, named as in the module's `state_dict()` (tied weights
        under every name). Collective; rank 0 gets the blobs. Parameters are gathered about
        `bucket_bytes` at a time (fewer, larger all-gathers) and each gathered bucket is cut into blobs of
        the transport's size (`mpo.weights.DEFAULT_BUCKET_BYTES`)."""
        import deepspeed

        module = self.engine.module
        wanted = set(module.state_dict().keys())
        names: dict[int, list[str]] = {}
        params: dict[int, torch.nn.Parameter] = {}
        for name, param in module.named_parameters(remove_duplicate=False):
            names.setdefault(id(param), []).append(name)
            params[id(param)] = param
        blobs: list[bytes] = []
        count = 0

        def flush(bucket: list[torch.nn.Parameter]) -> None:
            nonlocal count
            with deepspeed.zero.GatheredParameters(bucket, modifier_rank=None):
                if self.rank != 0:
                    return
                tensors = {
                    alias: param.detach().to("cpu", copy=True).contiguous()
                    for param in bucket
                    for alias in names[id(param)]
                    if alias in wanted
                }
            blobs.extend(to_blobs(tensors))
            count += len(tensors)

        bucket: list[torch.nn.Parameter] = []
        size = 0
        for param in params.values():
            nbytes = getattr(param, "ds_numel", param.numel()) * param.element_size()
            if bucket and size + nbytes > bucket_bytes:
                flush(bucket)
                bucket, size = [], 0
            bucket.append(param)
            size += nbytes
        if bucket:
            flush(bucket)
        buffers = {name: b.detach().cpu().contiguous() for name, b in module.named_buffers() if name in wanted}
        if buffers and self.rank == 0:
            blobs.extend(to_blobs(buffers))
            count += len(buffers)
        return (blobs, count) if self.rank == 0 else None
