"""Configuration: pydantic models are the one source of truth (CLI, YAML files, Helm values).

Every model forbids unknown keys, so a misspelt field is an error that names it rather than a silently
ignored setting.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from mpo.data.prompting import COT_INSTRUCTION
from mpo.overrides import OverrideError, apply_overrides, blame
from mpo.plugins import VerifierSpec

#: The MPO loss terms (docs/design.md §3) and their names in TRL's DPOTrainer ``loss_type`` list.
TermName = Literal["preference", "quality", "generation"]
TRL_LOSS_TYPE: dict[str, str] = {"preference": "sigmoid", "quality": "bco_pair", "generation": "sft"}


def _known_names(kind: str, by_task: dict[str, str], known: list[str]) -> dict[str, str]:
    for task, name in by_task.items():
        if name not in known:
            raise ValueError(f"task '{task}': unknown {kind} '{name}'; known: {', '.join(sorted(known))}")
    return by_task


def _distinct_cores(cores: list[int]) -> list[int]:
    if len(set(cores)) != len(cores):
        raise ValueError(f"each core at most once, got {cores}")
    return cores


#: CPU core ids a service's processes are pinned to (Linux `sched_setaffinity`).
CpuCores = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1), AfterValidator(_distinct_cores)]


#: Temperatures below this decode greedily (vLLM's `_SAMPLING_EPS`); the rollout service treats them as 0.
GREEDY_TEMPERATURE = 1e-5

#: Run ids name folders of the run store: a slug, so no id can reach outside it ("..", "/", NUL).
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _positive_weights(kind: str, weights: dict[str, float]) -> dict[str, float]:
    for name, weight in weights.items():
        if not math.isfinite(weight) or weight <= 0:
            raise ValueError(f"weight of {kind} '{name}' must be a finite number > 0, got {weight}")
    return weights


class ObjectiveConfig(_Strict):
    """The MPO objective: L = Σ weight·term over the selected terms (paper weights by default)."""

    beta: float = Field(0.1, gt=0, allow_inf_nan=False, description="KL strength β scaling the log-ratio rewards z.")
    terms: dict[TermName, float] = Field(
        default_factory=lambda: {"preference": 0.8, "quality": 0.2, "generation": 1.0},
        description=(
            "Selected loss terms and their weights: preference (DPO sigmoid), quality (BCO pair with "
            "reward shift δ), generation (SFT token-mean NLL on the chosen). Leave a term out to ablate it; "
            "unselected terms are still computed and reported, but carry no gradient."
        ),
    )

    @field_validator("terms")
    @classmethod
    def _weights_are_usable(cls, terms: dict[str, float]) -> dict[str, float]:
        if not terms:
            raise ValueError("select at least one of preference, quality, generation")
        return _positive_weights("term", terms)


class PromptConfig(_Strict):
    """How a question becomes the user turn every service renders (rollout, trainer, evaluation, stored pairs)."""

    system_prompt: str | None = Field(
        None,
        min_length=1,
        description="A system turn before the question; unset: none (templates that add a default system "
        "prompt, such as Qwen's, still add theirs). Refused at start by templates without a system role (Gemma 2).",
    )
    instruction: str = Field(
        COT_INSTRUCTION,
        description="Written before the question in the user turn (default: the paper's chain-of-thought "
        "instruction, which asks for 'Final answer: ..'); empty: the question alone.",
    )


class BootstrapConfig(_Strict):
    """Supervised warm start of a tiny model on CoT demonstrations (`mpo bootstrap`)."""

    steps: int = Field(
        1200, ge=1, description="Optimizer steps of the warm start (~3 min for arith, ~9 for shapes on 2 CPU cores)."
    )
    batch_size: int = Field(32, ge=1, description="Demonstrations per step.")
    learning_rate: float = Field(2e-3, gt=0, allow_inf_nan=False, description="Peak, reached after warm-up.")
    warmup_steps: int = Field(30, ge=0)
    final_lr_ratio: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Cosine decay from the peak to this fraction of it; 1.0 keeps the rate constant. The "
        "stability check continues at the final rate, like any further training of the same recipe would.",
    )
    vision_lr_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        allow_inf_nan=False,
        description="Image-text models: the image encoder's rate as a fraction of the language model's; 0 "
        "freezes it. The full rate spoils a tiny random tower's features (docs/results.md); text models "
        "ignore it.",
    )
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    eval_every: int = Field(250, ge=1, description="Steps between points of the accuracy curve.")
    eval_prompts: int = Field(500, ge=1, description="Held-out prompts per evaluation.")
    pass_k: int = Field(8, ge=1, description="Samples per prompt (temperature 1.0) for the pass@k headroom figure.")
    stability_steps: int = Field(
        400, ge=0, description="Extra steps (at the final rate) after which accuracy should move < 3 points."
    )
    ema_decay: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Save an exponential moving average of the weights with this decay as the base instead of "
        "the last iterate (0). Unset: each built-in task's measured choice (arith 0, shapes 0.98; "
        "docs/results.md), 0 for other data.",
    )
    max_new_tokens: int = Field(96, ge=1)
    seed: int = 0


class RequestLimits(_Strict):
    """Bounds every service enforces on incoming requests (violations → INVALID_ARGUMENT)."""

    max_batch_prompts: int = Field(256, ge=1, description="Most prompts (or continuations) in one request.")
    max_samples_per_prompt: int = Field(64, ge=1, description="Largest `SamplingParams.n`.")
    max_tokens: int = Field(2048, ge=1, description="Largest `SamplingParams.max_tokens`.")
    max_images_per_prompt: int = Field(8, ge=0, description="Most images attached to one prompt.")
    max_image_bytes: int = Field(16 * 2**20, ge=1, description="Largest encoded image.")
    max_question_chars: int = Field(32_768, ge=1, description="Longest question text.")
    max_meta_bytes: int = Field(
        65_536,
        ge=0,
        description="Longest `Prompt.meta_json` in UTF-8 bytes (0: prompts carry no meta). Bounds what "
        "parsing it costs before it is parsed.",
    )
    max_pairs_per_request: int = Field(4096, ge=1, description="Most preference pairs in one Train call.")
    max_samples_per_request: int = Field(16_384, ge=1, description="Most samples in one Score/BuildPairs call.")
    max_image_pixels: int = Field(
        4096 * 4096,
        ge=1,
        description="Most pixels (width x height, times frames) of one image, read from its header before any "
        "decoding: bounds the memory a decode costs.",
    )
    max_stop_strings: int = Field(16, ge=0, description="Most `SamplingParams.stop` strings.")
    max_stop_chars: int = Field(256, ge=1, description="Longest `SamplingParams.stop` string.")
    max_prefix_chars: int = Field(32_768, ge=1, description="Longest `Continue` prefix.")
    max_epochs: int = Field(16, ge=1, description="Largest `Train.epochs`.")
    known_tasks: list[str] = Field(
        default_factory=lambda: ["arith", "shapes", "describe"],
        min_length=1,
        description="Task names prompts may carry; each selects a verifier.",
    )


class AuthConfig(_Strict):
    """Who may call what: two bearer tokens, read from environment variables (see docs/security.md).

    The control token may call every method; the user token only sampling and reading (Generate,
    GenerateStream, Continue, Score, BuildPairs, GetStatus, the controller's reads, the dashboard).
    Health and reflection need no token. A server without a control token serves only on a loopback
    interface, unless `open` says so explicitly.
    """

    control_token_env: str = Field(
        "MPO_CONTROL_TOKEN",
        description="Environment variable holding the control token (weights, training, run changes, and all reads).",
    )
    user_token_env: str = Field(
        "MPO_USER_TOKEN",
        description="Environment variable holding the user token (sampling and reads only); unset: only the "
        "control token is accepted.",
    )
    open: bool = Field(
        False,
        description="Serve without tokens on a non-loopback interface (anyone who reaches the port may call "
        "every method). Only behind a network you trust.",
    )


class ServerConfig(_Strict):
    """How one gRPC service listens; shared by rollout, reward, trainer and controller."""

    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 inside containers.")
    port: int = Field(0, ge=0, le=65535, description="Port to bind; 0 picks a free one (embedded mode).")
    max_message_bytes: int = Field(
        256 * 2**20, ge=1024, description="Largest request/response message (weight chunks are the big ones)."
    )
    max_concurrent_rpcs: int = Field(
        64,
        ge=1,
        description="In-flight calls above this are refused with RESOURCE_EXHAUSTED (health and "
        "reflection not counted).",
    )
    max_infrastructure_calls: int = Field(
        16,
        ge=1,
        description="Health and reflection calls open at once (they need no token): their own budget, so idle "
        "watch streams never starve real calls; above it: RESOURCE_EXHAUSTED.",
    )
    auth: AuthConfig = Field(default_factory=AuthConfig)
    tls_cert_file: Path | None = Field(None, description="PEM certificate chain; TLS is on when set (with the key).")
    tls_key_file: Path | None = Field(None, description="PEM private key matching tls_cert_file.")
    loopback_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="With TLS on: also serve plaintext on 127.0.0.1 at this port, for processes on the same "
        "host (the other drivers of a pod, exec health probes); the tokens still apply. Unset: no second port.",
    )
    shutdown_grace_seconds: float = Field(
        30.0, ge=0, description="On shutdown, in-flight calls get this long to finish."
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve Prometheus metrics over HTTP here; off when unset."
    )
    limits: RequestLimits = Field(default_factory=RequestLimits)

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        return self


class RolloutConfig(_Strict):
    """The rollout service: which engine serves the policy, on what resources, and where weights live."""

    model: Path = Field(..., description="Hugging Face model directory of the base policy.")
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped in the model directory (explicit, off by default; passed to every "
        "transformers and vLLM loader). Only for models you trust.",
    )
    backend: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="auto: vLLM, except image-text models on CPU (no CPU torchvision for vLLM there)."
    )
    replicas: int = Field(1, ge=1, description="Engine replicas (Ray actors); LoadWeights reaches all of them.")
    num_cpus_per_replica: float = Field(1.0, ge=0, description="Ray CPU request of each replica.")
    num_gpus_per_replica: float = Field(0.0, ge=0, description="Ray GPU request; > 0 runs the engine on CUDA.")
    ray_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each replica asks for (name: amount), so it lands only on the nodes "
        "that offer them (the chart gives each worker group its own); empty: any node with the CPUs/GPUs.",
    )
    cpu_affinity: CpuCores | None = Field(
        None,
        description="CPU cores every replica's processes (vLLM's engine and worker included) run on; unset: any. "
        "On a CPU-only host, disjoint cores for rollout and trainer keep async mode's overlap from contending.",
    )
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor parallelism inside one replica.")
    dtype: str = Field("auto", description="Engine dtype ('auto', 'float32', 'bfloat16', ...).")
    max_model_len: int = Field(2048, ge=16, description="Prompt + answer tokens; capped by the model's context.")
    kv_cache_bytes: int = Field(64 * 2**20, ge=2**20, description="vLLM KV cache size on CPU (bytes of host RAM).")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vLLM memory fraction on GPU.")
    enforce_eager: bool = Field(
        False, description="vLLM without torch.compile / CUDA graphs: starts much faster, decodes slower."
    )
    transformers_kv_cache: Literal["dynamic", "static"] = Field(
        "dynamic",
        description="transformers backend: the KV cache of a batch. static allocates prompt + max_tokens for "
        "every row once, instead of growing (copying) the cache at every token: the same samples, but it "
        "attends over the full length at every step. On the tiny image-text model on CPU it decoded 48 tokens "
        "1.19x faster and 96 tokens 0.63x as fast as dynamic (bench/transformers_decoding.py); the longest "
        "call so far sets its length.",
    )
    max_queued_requests: int = Field(
        64, ge=1, description="Requests a replica holds (running + waiting); beyond it: RESOURCE_EXHAUSTED."
    )
    weights_dir: Path = Field(
        Path("mpo-state/rollout-weights"),
        description="Committed weight updates (shared storage across nodes); restarted replicas load from here.",
    )
    readable_roots: list[Path] = Field(
        default_factory=list,
        description="Directories whose files requests may name (image URIs, LoadWeightsFromStorage); none by default.",
    )
    weight_stream_idle_seconds: float = Field(
        60.0,
        gt=0,
        description="A LoadWeights stream that sends nothing for this long is aborted (DEADLINE_EXCEEDED): its "
        "staged files are removed and the next update may load.",
    )
    seed: int = Field(0, description="Engine seed for requests without their own.")
    prompt: PromptConfig = Field(
        default_factory=PromptConfig, description="How questions are rendered (run: `prompt`)."
    )
    server: ServerConfig = Field(default_factory=ServerConfig)


class ScorerConfig(_Strict):
    """A model-based scorer behind the reward service (optional; verifiers do the labelling)."""

    kind: Literal["logprob"] = Field(
        "logprob", description="logprob: a causal LM's mean token log-probability of the response given the prompt."
    )
    model: Path = Field(..., description="Hugging Face model directory of the scoring model.")
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped in the model directory (explicit, off by default; passed to every "
        "transformers and vLLM loader). Only for models you trust.",
    )


class RewardConfig(_Strict):
    """The reward / labelling service."""

    task_verifiers: dict[str, str] = Field(
        default_factory=lambda: {"arith": "numeric", "shapes": "auto"},
        description="Verifier per task (see mpo/grading/verifiers.py); tasks not listed use 'auto'.",
    )
    verifiers: dict[str, VerifierSpec] = Field(
        default_factory=dict,
        description="Plug-in verifier per task: 'package.module:callable' or '/path/to/file.py:callable', called "
        "as (response, record) with the whole response and the PromptRecord (no images); returns a bool or a "
        "score in [0, 1]. Imported when the config is checked and in every labelling worker (docs/reward.md). "
        "A task is mapped here or in task_verifiers, not both.",
    )
    correct_threshold: float = Field(
        0.5, gt=0, le=1, description="A plug-in verifier's score of at least this counts as correct."
    )
    answer_pattern: str | None = Field(
        None,
        description="Regular expression with one capture group, the answer, tried on responses without "
        "'Final answer:' (last match) before \\boxed{...}; unset: not tried.",
    )
    task_step_checks: dict[str, str] = Field(
        default_factory=dict,
        description="Step check per task (see mpo/grading/step_checks.py): a sample whose final answer "
        "matches but whose rationale fails it is labelled wrong (VERDICT_WRONG_STEP). Off by default, as in "
        "the paper; the demo maps arith to 'arith_steps'; 'shapes_steps' checks the built-in shapes task's counts and "
        "verdicts.",
    )
    max_pairs_per_prompt: int = Field(15, ge=1, description="Cap K on correctness pairs per prompt (seeded sample).")
    dropout_prefix_fraction: float = Field(
        0.5, gt=0, lt=1, description="Fraction of the chosen answer's words kept as the DropoutNTP prefix."
    )
    workers: int = Field(1, ge=1, description="Labelling worker actors a batch is spread over.")
    worker_ray_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each labelling worker asks for (name: amount), so it lands only on the nodes "
        "that offer them (the chart gives each worker group its own); empty: any node with the CPUs/GPUs.",
    )
    rollout_address: str | None = Field(
        None, description="host:port of the rollout service (DropoutNTP continuations; refused without it)."
    )
    continuation_max_tokens: int = Field(
        256,
        ge=1,
        description="Most tokens of a DropoutNTP continuation. Each is also held to what its chosen answer spent "
        "after the prefix (the sample's token ids), so the rejected side is never the longer one by construction.",
    )
    dropout_ntp_finished_only: bool = Field(
        False,
        description="Keep only DropoutNTP pairs whose image-less continuation ended on its own, not at that bound: "
        "a cut one is unfinished, so its pair can teach 'stop listing' rather than 'say what the image shows'. "
        "On describe the kept pairs teach the opposite, 'list on' (docs/results.md), hence off by default.",
    )
    dropout_ntp_unterminated: bool = Field(
        False,
        description="Cut both sides of each DropoutNTP pair to the same number of words, less closing punctuation, "
        "and train them without the end-of-turn token (PreferencePair.unterminated), so that a pair compares what "
        "the sides say with and without the image, not where they stop. On describe, measured, the rounds then no "
        "longer cut the hallucination rate and recall still falls (docs/results.md), hence off by default.",
    )
    dropout_ntp_match_length: bool = Field(
        False,
        description="Hold each DropoutNTP continuation to its chosen answer's length from below too "
        "(Continuation.min_total_tokens): it may not end before the chosen answer did, so the sides are as long as "
        "each other, differ in what they say, and both train with their end of turn. Not with "
        "dropout_ntp_finished_only or dropout_ntp_unterminated. Measured on describe in docs/results.md.",
    )
    task_mention_counters: dict[str, str] = Field(
        default_factory=dict,
        description="Mention counter per task (see mpo/grading/mentions.py): a DropoutNTP pair of a mapped task is "
        "kept only when its rejected side names at least as many things as its chosen side "
        "(LabelStats.dropout_ntp_fewer_mentions counts the others), so that the sides differ in what they name "
        "rather than how much. 'scene_objects' counts the built-in describe task's shape phrases. Off by default: "
        "on describe it lowers the hallucination rate and recall with it (docs/results.md).",
    )
    scorer: ScorerConfig | None = Field(None, description="Optional model-based reward, reported by Score.")
    server: ServerConfig = Field(default_factory=ServerConfig)

    @field_validator("task_verifiers")
    @classmethod
    def _known_verifiers(cls, names: dict[str, str]) -> dict[str, str]:
        from mpo.grading.verifiers import AUTO, VERIFIERS

        return _known_names("verifier", names, [*VERIFIERS, AUTO])

    @field_validator("task_step_checks")
    @classmethod
    def _known_step_checks(cls, names: dict[str, str]) -> dict[str, str]:
        from mpo.grading.step_checks import STEP_CHECKS

        return _known_names("step check", names, list(STEP_CHECKS))

    @field_validator("task_mention_counters")
    @classmethod
    def _known_mention_counters(cls, names: dict[str, str]) -> dict[str, str]:
        from mpo.grading.mentions import MENTION_COUNTERS

        return _known_names("mention counter", names, list(MENTION_COUNTERS))

    @field_validator("answer_pattern")
    @classmethod
    def _one_capture_group(cls, pattern: str | None) -> str | None:
        from mpo.grading.answers import compile_answer_pattern

        if pattern is not None:
            compile_answer_pattern(pattern)
        return pattern

    @model_validator(mode="after")
    def _one_way_to_match_dropout_sides(self) -> RewardConfig:
        others = [name for name in ("dropout_ntp_finished_only", "dropout_ntp_unterminated") if getattr(self, name)]
        if self.dropout_ntp_match_length and others:
            raise ValueError(
                f"dropout_ntp_match_length does not go with {' or '.join(others)}: each is its own way of "
                "matching a DropoutNTP pair's sides; set one"
            )
        return self

    @model_validator(mode="after")
    def _one_verifier_per_task(self) -> RewardConfig:
        for task in self.verifiers:
            if task in self.task_verifiers:
                default = "" if "task_verifiers" in self.model_fields_set else ", by default"
                raise ValueError(
                    f"task '{task}' is mapped twice: reward.task_verifiers.{task} ('{self.task_verifiers[task]}'"
                    f"{default}) and reward.verifiers.{task}; keep one (list task_verifiers without it)"
                )
        return self


class TrainerConfig(_Strict):
    """The policy trainer: DeepSpeed rank actors training MPO, checkpointing and publishing weights."""

    model: Path = Field(..., description="Hugging Face model directory of the base policy (also the frozen reference).")
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped in the model directory (explicit, off by default; passed to every "
        "transformers and vLLM loader). Only for models you trust.",
    )
    world_size: int = Field(1, ge=1, description="Data-parallel ranks (Ray actors): one per GPU, or processes on CPU.")
    strategy: Literal["zero3", "zero2", "zero1"] = Field("zero3", description="DeepSpeed ZeRO stage.")
    num_cpus_per_rank: float = Field(1.0, ge=0, description="Ray CPU request of each rank.")
    ray_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each rank asks for (name: amount), so it lands only on the nodes "
        "that offer them (the chart gives each worker group its own); empty: any node with the CPUs/GPUs.",
    )
    cpu_affinity: CpuCores | None = Field(
        None, description="CPU cores every rank's threads run on (CPU training); unset: any (see rollout's)."
    )
    num_gpus_per_rank: float = Field(
        0.0, ge=0, description="Ray GPU request of each rank; > 0 trains on CUDA in bf16 (NCCL), else CPU fp32 (gloo)."
    )
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    learning_rate: float = Field(5e-6, gt=0, allow_inf_nan=False, description="Peak AdamW rate (paper: 5e-6, 8B).")
    weight_decay: float = Field(0.05, ge=0)
    adam_betas: tuple[float, float] = Field((0.9, 0.999))
    warmup_steps: int = Field(10, ge=0, description="Linear warm-up from 0 in optimizer steps.")
    total_steps: int = Field(
        1000, ge=1, description="Steps of cosine decay after the warm-up; the rate then stays at the floor."
    )
    final_lr_ratio: float = Field(0.1, ge=0, le=1, description="Cosine floor as a fraction of the peak rate.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip the global gradient norm to this.")
    global_batch_pairs: int = Field(256, ge=1, description="Pairs per optimizer step (summed over ranks).")
    micro_batch_pairs: int = Field(4, ge=1, description="Pairs per forward pass on one rank.")
    epochs: int = Field(1, ge=1, description="Passes over a round's pairs (TrainRequest.epochs overrides).")
    max_length: int = Field(
        2048, ge=8, description="Prompt + response tokens; longer responses are cut at the end (docs/trainer.md)."
    )
    packing: bool = Field(
        True,
        description="Pack text micro-batches around their shared prompt prefix: the same log-probs on about "
        "half the positions, through a 4-D attention mask (off: one padded row per response).",
    )
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    freeze_vision_tower: bool = Field(False, description="Keep the image encoder fixed (the paper trains all).")
    checkpoint_dir: Path = Field(
        Path("mpo-state/trainer-checkpoints"), description="Checkpoints (shared storage on a cluster)."
    )
    keep_checkpoints: int = Field(3, ge=1, description="Newest checkpoints kept; older ones are deleted.")
    resume: bool = Field(True, description="Start from the newest checkpoint in checkpoint_dir when there is one.")
    publish_dir: Path = Field(
        Path("mpo-state/trainer-publish"),
        description=(
            "Where SHARED_STORAGE publishing writes weight shards; the rollout service must read it. Only the "
            "newest published version is kept."
        ),
    )
    rollout_address: str | None = Field(None, description="host:port of the rollout service that PublishWeights feeds.")
    readable_roots: list[Path] = Field(
        default_factory=list, description="Directories whose image files pairs may name by URI; none by default."
    )
    max_rank_restarts: int = Field(
        3, ge=0, description="Times a failed call is retried on a restarted group (from the last checkpoint)."
    )
    seed: int = Field(0, description="Seeds the pair order of every epoch and all RNGs of the ranks.")
    prompt: PromptConfig = Field(
        default_factory=PromptConfig, description="How questions are rendered; must be the rollout's (run: `prompt`)."
    )
    server: ServerConfig = Field(default_factory=ServerConfig)

    @model_validator(mode="after")
    def _batches_divide(self) -> TrainerConfig:
        if self.global_batch_pairs < self.micro_batch_pairs * self.world_size:
            raise ValueError(
                f"global_batch_pairs ({self.global_batch_pairs}) must be >= micro_batch_pairs × world_size "
                f"({self.micro_batch_pairs} × {self.world_size})"
            )
        return self


class RoundsConfig(_Strict):
    """What one online round does (docs/design.md §2): how many prompts, samples and pairs, and when to evaluate."""

    rounds: int = Field(10, ge=1, description="Rounds in the run.")
    prompts_per_round: int = Field(32, ge=1, description="Prompts drawn per round (shuffled epochs over the set).")
    samples_per_prompt: int = Field(8, ge=1, description="N samples per prompt (the paper: up to 32).")
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False, description="Rollout temperature (paper: 1.0).")
    top_k: int = Field(50, ge=0, description="Rollout top-k (paper: 50; 0 disables).")
    max_tokens: int = Field(96, ge=1, description="Most new tokens per sample.")
    max_pairs_per_prompt: int = Field(
        15,
        ge=1,
        description="Cap K on the pairs of one prompt (correctness or DropoutNTP); sent with every BuildPairs "
        "call, so it is also the reward service's `max_pairs_per_prompt` (filled in).",
    )
    epochs: int = Field(1, ge=1, description="Passes the trainer makes over a round's pairs.")
    eval_every: int = Field(1, ge=0, description="Evaluate on the held-out prompts every k rounds; 0 never.")
    eval_prompts: int = Field(200, ge=1, description="Held-out prompts per evaluation (greedy).")
    eval_max_tokens: int | None = Field(
        None, ge=1, description="Most new tokens per held-out answer (greedy); unset: `max_tokens`."
    )
    transport: Literal["grpc_stream", "shared_storage"] = Field(
        "grpc_stream", description="How the trainer publishes weights to the rollout service."
    )
    seed: int = Field(0, description="Seeds the prompt order, sampling and pair selection of every round.")
    task_mix: dict[str, float] = Field(
        default_factory=dict,
        description="Share of each round's prompts per task, as weights (e.g. {arith: 3, shapes: 1}); each "
        "task is drawn from its own shuffled epochs. Empty: the prompt set's own proportions.",
    )
    mode: Literal["sync", "async"] = Field(
        "sync",
        description="sync: each round samples from the weights the previous round published. async: rollout "
        "and labelling of the next rounds overlap training, up to `max_staleness` versions behind.",
    )
    max_staleness: int = Field(
        1,
        ge=1,
        description="Async mode: most policy versions a pair's samples may lag the weights that train on it.",
    )
    sample_from: Literal["policy", "base"] = Field(
        "policy",
        description="policy: online MPO, each round samples the weights the trainer last published. base: "
        "offline MPO, as the paper runs it: every round samples the base policy (the same prompts, pairs "
        "built the same way, trained in the same steps), and the trained weights are published once, after "
        "the last round, so held-out evaluations happen only there (eval_every: 0 or rounds).",
    )
    retries: int = Field(
        5,
        ge=0,
        description="Times a round's service call is repeated when the service is unavailable (an actor "
        "restarting), with backoff (2 s doubling, at most 30 s), before the run fails.",
    )

    #: Held-out prompts per Generate / Score call of an evaluation (the controller splits the held-out set).
    EVAL_BATCH_PROMPTS: ClassVar[int] = 64

    @field_validator("task_mix")
    @classmethod
    def _mix_weights(cls, mix: dict[str, float]) -> dict[str, float]:
        return _positive_weights("task", mix)

    @model_validator(mode="after")
    def _samples_differ(self) -> RoundsConfig:
        """Greedy decoding gives n identical samples, hence no pairs; the rollout service refuses it too."""
        if self.samples_per_prompt > 1 and self.temperature < GREEDY_TEMPERATURE:
            raise ValueError(
                f"temperature {self.temperature:g} decodes greedily: {self.samples_per_prompt} samples per prompt "
                f"would all be the same; set temperature >= {GREEDY_TEMPERATURE:g} or samples_per_prompt: 1"
            )
        return self

    @model_validator(mode="after")
    def _offline_evaluates_last(self) -> RoundsConfig:
        """Evaluating a round would publish its weights, and every later round would sample them."""
        if self.sample_from == "base" and 0 < self.eval_every < self.rounds:
            raise ValueError(
                f"eval_every ({self.eval_every}) evaluates before the last round, but sample_from: base publishes "
                f"the trained weights only after it: set eval_every to 0 or {self.rounds} (rounds)"
            )
        return self

    @property
    def heldout_max_tokens(self) -> int:
        """The held-out evaluation's budget: `eval_max_tokens`, or `max_tokens` when unset."""
        return self.eval_max_tokens or self.max_tokens

    @property
    def max_pairs_per_round(self) -> int:
        """Most pairs one round can hand to Train: K per prompt, or fewer when N samples cannot make K —
        ⌊N/2⌋·⌈N/2⌉ (correct, wrong) combinations, or N DropoutNTP continuations."""
        n = self.samples_per_prompt
        return self.prompts_per_round * min(self.max_pairs_per_prompt, max((n // 2) * ((n + 1) // 2), n))


ServiceName = Literal["rollout", "reward", "trainer", "controller"]


class DashboardConfig(_Strict):
    """The web dashboard the controller serves (read-only): runs, rounds, pairs and services, live."""

    enabled: bool = Field(True, description="Serve the dashboard beside the controller's gRPC endpoint.")
    host: str = Field("127.0.0.1", description="Interface to bind; 0.0.0.0 inside containers.")
    port: int = Field(0, ge=0, le=65535, description="HTTP port; 0 picks a free one (embedded mode).")
    auth_token_env: str = Field(
        "MPO_USER_TOKEN",
        description="Environment variable holding the token (bearer, or basic auth password): the user token by "
        "default, since the dashboard only reads. Unset: the dashboard serves only on a loopback interface.",
    )
    open: bool = Field(
        False, description="Serve without a token on a non-loopback interface. Only behind a network you trust."
    )


class ControllerConfig(_Strict):
    """The controller: its gRPC endpoint (ControllerService, Prometheus), dashboard and per-run event files."""

    server: ServerConfig = Field(default_factory=ServerConfig)
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    data_roots: list[Path] = Field(
        default_factory=list,
        description="Directories the data files of a StartRun (data.train, data.heldout, their images) must lie "
        "in; none: StartRun names no files (the embedded runner fills in its own data's folders).",
    )
    tensorboard: bool = Field(
        True, description="Write TensorBoard event files under <store_dir>/runs/<run_id>/tensorboard."
    )
    wandb_project: str | None = Field(
        None,
        min_length=1,
        description="Also log every round to this Weights & Biases project (W&B run id = run id; files under "
        "<store_dir>/runs/<run_id>/wandb). Needs `pip install onlinempo[wandb]`; WANDB_MODE=offline needs no account.",
    )

    @field_validator("wandb_project")
    @classmethod
    def _wandb_installed(cls, project: str | None) -> str | None:
        import importlib.util

        if project is not None and importlib.util.find_spec("wandb") is None:
            raise ValueError("wandb is not installed (pip install 'onlinempo[wandb]'), or leave wandb_project unset")
        return project


class ControllerServeConfig(ControllerConfig):
    """`mpo serve controller`: the controller alone, pointed at running services (cluster mode)."""

    store_dir: Path = Field(Path("mpo-state/runs"), description="Run store: SQLite database and Parquet pair shards.")
    pairs_dir: Path | None = Field(
        None,
        description="Where the Parquet pair shards go; unset: under store_dir. Lets the SQLite database stay on "
        "a local (ReadWriteOnce) volume while the shards sit on shared storage, where users (e.g. TRL) read them.",
    )
    rollout_address: str = Field(..., min_length=1, description="host:port of the rollout service.")
    reward_address: str = Field(..., min_length=1, description="host:port of the reward service.")
    trainer_address: str = Field(..., min_length=1, description="host:port of the trainer service.")


#: Answer normalisers by name (`mpo.data.answer_formats`): how an answer column becomes the final answer.
AnswerFormat = Literal["none", "gsm8k"]


class DataColumns(_Strict):
    """Which column of a data set holds each prompt field, for data sets with their own column names (TRL,
    verl, the Hugging Face Hub); a field left unset is read from the column of its own name, if there is one."""

    question: str | None = Field(
        None, min_length=1, description="Question text, e.g. `query` (MathVista) or `problem` (MATH)."
    )
    answer: str | None = Field(
        None, min_length=1, description="Ground-truth answer (normalised by data.answer_format); null: open-ended."
    )
    images: str | None = Field(
        None,
        min_length=1,
        description="Images: paths relative to the file, image bytes, or a `datasets` Image column such as "
        "MathVista's `decoded_image`; one image or a list per row. Bytes are written to <store_dir>/images.",
    )
    choices: str | None = Field(None, min_length=1, description="Options of a multiple-choice question (a list).")
    id: str | None = Field(
        None,
        min_length=1,
        description="Unique prompt id, e.g. `pid`. Without an id column, ids are generated from each row's "
        "content, the same on every load (docs/data.md).",
    )
    task: str | None = Field(
        None, min_length=1, description="Task name, which selects the verifier; without one, rows get data.task."
    )

    @model_validator(mode="after")
    def _one_field_per_column(self) -> DataColumns:
        fields_of: dict[str, list[str]] = {}
        for field, column in self:
            if column is not None:
                fields_of.setdefault(column, []).append(field)
        for column, fields in fields_of.items():
            if len(fields) > 1:
                raise ValueError(f"{' and '.join(fields)} both name column {column!r}; a column feeds one field")
        return self


class DataConfig(_Strict):
    """The run's prompts: files in the record format, or any data set read through a column mapping
    (docs/data.md). The same columns, task and answer format apply to both splits."""

    train: Path = Field(
        ...,
        description="Prompts the rounds draw from (shuffled epochs): a .jsonl, .json, .csv, .parquet or .arrow "
        "file, a directory of .jsonl/.parquet shards, or a `datasets` directory written by save_to_disk.",
    )
    heldout: Path = Field(..., description="Prompts of the held-out evaluation (greedy); the same formats.")
    columns: DataColumns | None = Field(
        None,
        description="Where each prompt field comes from, for data sets with their own column names; their "
        "other columns are kept in each prompt's meta. Unset: the files are in the record format (id, "
        "question, images, answer, choices, task, meta) and any other column is a bad row.",
    )
    task: str | None = Field(
        None,
        min_length=1,
        description="Task of the rows that have none (no task column, or a null task), e.g. `math`; "
        "required when the files have no task column.",
    )
    answer_format: AnswerFormat = Field(
        "none",
        description="How answers are normalised: none (as written) or gsm8k (the text after the last '####', "
        "commas in numbers removed; an answer without '####' is a bad row).",
    )
    skip_bad_rows: bool = Field(False, description="Skip (and report) bad rows instead of rejecting the file.")


class RunConfig(_Strict):
    """Everything one online-MPO run needs (`mpo run --config FILE`).

    `model` is the base policy of every service: it is filled into the `rollout` and `trainer`
    sections (which may override anything else of theirs), and the top-level `objective` into the
    trainer's. A file with only an `objective` is still a valid config (`mpo config validate`); `mpo run`
    then says what is missing.
    """

    run_id: str | None = Field(
        None,
        pattern=RUN_ID_PATTERN,
        description="Name of the run; a stored run of that name resumes. A slug: letters, digits, '.', '_', '-' "
        "(not first), at most 64 characters.",
    )
    model: Path | None = Field(None, description="Hugging Face model directory of the base policy.")
    trust_remote_code: bool = Field(
        False,
        description="Run Python code shipped in the model directory (explicit, off by default; passed to every "
        "transformers and vLLM loader); filled into `rollout` and `trainer`. Only for models you trust.",
    )
    data: DataConfig | None = Field(None, description="Prompt files.")
    store_dir: Path = Field(Path("mpo-state/runs"), description="Run store: SQLite database and Parquet pair shards.")
    pairs_dir: Path | None = Field(
        None,
        description="Where the Parquet pair shards go; unset: under store_dir. Lets the SQLite database stay on "
        "a local (ReadWriteOnce) volume while the shards sit on shared storage, where users (e.g. TRL) read them.",
    )
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    prompt: PromptConfig = Field(
        default_factory=PromptConfig,
        description="System prompt and instruction of every question; filled into `rollout` and `trainer`.",
    )
    rounds: RoundsConfig = Field(default_factory=RoundsConfig)
    rollout: RolloutConfig | None = Field(None, description="The rollout service (model filled in).")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="The reward service.")
    trainer: TrainerConfig | None = Field(None, description="The trainer service (model and objective filled in).")
    controller: ControllerConfig = Field(default_factory=ControllerConfig, description="The controller service.")

    @model_validator(mode="before")
    @classmethod
    def _base_policy_everywhere(cls, raw: object) -> object:
        if not isinstance(raw, dict) or raw.get("model") is None:
            return raw
        raw = dict(raw)
        for section in ("rollout", "trainer"):
            given = raw.get(section) or {}
            if isinstance(given, dict):
                raw[section] = {
                    "model": raw["model"],
                    "trust_remote_code": raw.get("trust_remote_code", False),
                    **given,
                }
        for section in ("rollout", "trainer"):
            given = raw[section]
            if isinstance(given, dict):
                if "prompt" in given and given["prompt"] != raw.get("prompt"):
                    raise ValueError(f"set the prompt at the top level (`prompt`), not in `{section}`")
                raw[section] = {**given, "prompt": raw.get("prompt") or {}}
        trainer = raw["trainer"]
        if isinstance(trainer, dict):
            if "objective" in trainer and trainer["objective"] != raw.get("objective"):
                raise ValueError("set the objective at the top level (`objective`), not in `trainer`")
            raw["trainer"] = {**trainer, "objective": raw.get("objective") or {}}
        return raw

    @model_validator(mode="before")
    @classmethod
    def _pair_cap_from_rounds(cls, raw: object) -> object:
        """The controller sends `rounds.max_pairs_per_prompt` with every BuildPairs call, so that is the cap
        that applies; the reward service's own (for calls without one) is filled from it to say the same."""
        if not isinstance(raw, dict):
            return raw
        rounds, reward = raw.get("rounds") or {}, raw.get("reward") or {}
        if isinstance(rounds, RoundsConfig):
            rounds = {"max_pairs_per_prompt": rounds.max_pairs_per_prompt}
        if not isinstance(rounds, dict) or not isinstance(reward, dict) or "max_pairs_per_prompt" in reward:
            return raw
        cap = rounds.get("max_pairs_per_prompt", RoundsConfig.model_fields["max_pairs_per_prompt"].default)
        if not isinstance(cap, int):
            return raw  # rounds' own error names it
        return {**raw, "reward": {**reward, "max_pairs_per_prompt": cap}}

    @model_validator(mode="after")
    def _tasks_known_everywhere(self) -> RunConfig:
        """A task the config names (a verifier's task, the data's default task) is one every service accepts:
        mapping `reward.verifiers: {gsm8k: ...}` is enough, without listing gsm8k in three `known_tasks`."""
        named = [*self.reward.task_verifiers, *self.reward.verifiers]
        if self.data is not None and self.data.task:
            named.append(self.data.task)
        for section in ("rollout", "reward", "trainer"):
            service = getattr(self, section)
            if service is None:
                continue
            limits = service.server.limits
            missing = [task for task in dict.fromkeys(named) if task not in limits.known_tasks]
            if missing:
                limits = limits.model_copy(update={"known_tasks": [*limits.known_tasks, *missing]})
                server = service.server.model_copy(update={"limits": limits})
                object.__setattr__(self, section, service.model_copy(update={"server": server}))  # frozen model
        return self

    @model_validator(mode="after")
    def _services_agree(self) -> RunConfig:
        """What one service sends another must fit the receiver's limits. Checked here, before anything
        starts, instead of failing a round (after its rollout, say) with INVALID_ARGUMENT; each problem is
        one line naming both fields. Per-prompt lengths (prompt + answer within max_model_len) are checked
        per request."""
        if problems := self._disagreements():
            lines = "".join(f"\n    {problem}" for problem in problems)
            raise PydanticCustomError("services_disagree", "limits across services disagree:{lines}", {"lines": lines})
        return self

    def _disagreements(self) -> list[str]:
        rounds, reward = self.rounds, self.reward
        problems: list[str] = []

        def value(path: str) -> Any:
            found: Any = self
            for name in path.split("."):
                found = getattr(found, name)
            return found

        def at_most(sent: str, limit: str, computed: int | None = None) -> None:
            """The field `sent` (or the `computed` figure that `sent` describes) must not exceed the field `limit`."""
            if getattr(self, limit.split(".")[0]) is None:
                return  # that service is not configured (no model yet)
            amount = value(sent) if computed is None else computed
            if amount > value(limit):
                shown = f"{sent} ({amount})" if computed is None else f"{sent} = {amount}"
                problems.append(f"{shown} exceeds {limit} ({value(limit)})")

        if reward.max_pairs_per_prompt != rounds.max_pairs_per_prompt:
            problems.append(
                f"reward.max_pairs_per_prompt ({reward.max_pairs_per_prompt}) differs from "
                f"rounds.max_pairs_per_prompt ({rounds.max_pairs_per_prompt}), which the controller sends with "
                "every BuildPairs call: set rounds.max_pairs_per_prompt only"
            )
        for service in ("rollout", "reward"):
            at_most("rounds.prompts_per_round", f"{service}.server.limits.max_batch_prompts")
        at_most("rounds.samples_per_prompt", "rollout.server.limits.max_samples_per_prompt")
        samples = rounds.prompts_per_round * rounds.samples_per_prompt
        at_most(
            f"samples per round: rounds.prompts_per_round × rounds.samples_per_prompt ({rounds.prompts_per_round} "
            f"× {rounds.samples_per_prompt})",
            "reward.server.limits.max_samples_per_request",
            samples,
        )
        per_prompt = rounds.max_pairs_per_round // rounds.prompts_per_round
        capped_by = (
            "rounds.max_pairs_per_prompt"
            if per_prompt == rounds.max_pairs_per_prompt
            else f"what rounds.samples_per_prompt ({rounds.samples_per_prompt}) can make"
        )
        at_most(
            f"pairs per round, at most: rounds.prompts_per_round × {capped_by} ({rounds.prompts_per_round} × "
            f"{per_prompt})",
            "trainer.server.limits.max_pairs_per_request",
            rounds.max_pairs_per_round,
        )
        at_most("reward.continuation_max_tokens", "rollout.server.limits.max_tokens")
        budgets = ["rounds.max_tokens"]  # whole answers: a budget of max_model_len leaves no room for the prompt
        if rounds.eval_every:
            batch = min(rounds.eval_prompts, RoundsConfig.EVAL_BATCH_PROMPTS)
            held_out = (
                f"held-out prompts per call (rounds.eval_prompts {rounds.eval_prompts}, sent "
                f"{RoundsConfig.EVAL_BATCH_PROMPTS} at a time)"
            )
            for service in ("rollout", "reward"):
                at_most(held_out, f"{service}.server.limits.max_batch_prompts", batch)
            at_most(held_out, "reward.server.limits.max_samples_per_request", batch)
            if rounds.eval_max_tokens is not None:
                budgets.append("rounds.eval_max_tokens")
        rollout = self.rollout
        if rollout is None:
            return problems
        for budget in budgets:
            at_most(budget, "rollout.server.limits.max_tokens")
            if value(budget) >= rollout.max_model_len:
                problems.append(
                    f"{budget} ({value(budget)}) leaves no room for a prompt within rollout.max_model_len "
                    f"({rollout.max_model_len})"
                )
        if self.trainer is not None and self.trainer.max_length < rollout.max_model_len:
            problems.append(
                f"trainer.max_length ({self.trainer.max_length}) is below rollout.max_model_len "
                f"({rollout.max_model_len}): the trainer would cut answers the rollout samples, or refuse their prompts"
            )
        problems.extend(self._prompt_limits_disagree(rollout.server.limits))
        return problems

    def _prompt_limits_disagree(self, accepted: RequestLimits) -> list[str]:
        """The reward and trainer services see the prompts the rollout service accepted; a stricter limit
        there would refuse a prompt only after its round has sampled it."""
        problems = []
        for service in ("reward", "trainer"):
            section = getattr(self, service)
            if section is None:
                continue
            limits = section.server.limits
            for name in ("max_question_chars", "max_meta_bytes", "max_images_per_prompt", "max_image_bytes"):
                if getattr(limits, name) < getattr(accepted, name):
                    problems.append(
                        f"{service}.server.limits.{name} ({getattr(limits, name)}) is below "
                        f"rollout.server.limits.{name} ({getattr(accepted, name)})"
                    )
            if missing := sorted(set(accepted.known_tasks) - set(limits.known_tasks)):
                problems.append(
                    f"{service}.server.limits.known_tasks lacks {', '.join(missing)} "
                    "(in rollout.server.limits.known_tasks)"
                )
        return problems


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and every offending field."""


def load_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config (an empty file means all defaults), with `--set` overrides applied."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    return run_config(raw, source=str(path), overrides=overrides)


def run_config(raw: Mapping[str, Any], *, source: str, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """`raw` (a file's, a stored run's) with the `--set` overrides (`mpo.overrides`) applied, validated. A
    ConfigError names `source`, every offending field, and the `--set` item behind an error it caused."""
    overrides = overrides or {}
    try:
        raw = apply_overrides(raw, overrides)
    except OverrideError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for line in format_validation_error(exc).splitlines():  # "  field: message", or "    message" of <root>'s
            field, _, message = ("<root>", "", line) if line.startswith("    ") else line.strip().partition(": ")
            lines.append(line + "".join(f" (--set {key})" for key in blame(field, message, overrides)))
        raise ConfigError(f"{source}: invalid config\n" + "\n".join(lines)) from exc


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each starting with the dotted field path (``objective.terms.foo``)."""
    lines = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"] if part != "[key]")
        lines.append(f"  {field or '<root>'}: {error['msg']}")
    return "\n".join(lines)
