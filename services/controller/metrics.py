"""Round records as metrics: Prometheus gauges on the controller's `/metrics` endpoint, TensorBoard event
files per run and (optionally) a Weights & Biases run, all fed from the one stored `RoundMetrics` so they
never disagree with the store."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from mpo.v1 import common_pb2

_LOSS_TERMS = ("loss", "loss_preference", "loss_quality", "loss_generation")
_PHASES = ("generate", "label", "commit", "train", "publish", "eval", "overhead", "total")
_HALLUCINATION = ("rate", "mentions", "recall")


def scalars(record: common_pb2.RoundMetrics) -> dict[str, float]:
    """The round's numbers under TensorBoard-style tags (`train/loss`, `eval/arith`, `eval_degenerate/arith`,
    `eval_hallucination/describe/rate`, `time/generate`, ...)."""
    labels, train = record.labels, record.train
    values = {
        "rollout/pairs": labels.pairs_correctness + labels.pairs_dropout_ntp,
        "rollout/sample_accuracy": labels.correct / max(labels.correct + labels.wrong, 1),
        "rollout/tokens_per_second": record.rollout_tokens_per_second,
        "rollout/policy_version": record.rollout_policy_version,
        "train/steps": record.train_steps,
        "train/reward_shift": train.reward_shift,
        "train/reward_margin": train.reward_margin,
        "train/preference_accuracy": train.preference_accuracy,
        "train/staleness_max": record.staleness_max,
        "train/staleness_mean": record.staleness_mean,
        "policy_version": record.trained_policy_version,
    }
    values |= {f"train/{term}": getattr(train, term) for term in _LOSS_TERMS}
    values |= {f"time/{phase}": getattr(record.timings, phase) for phase in _PHASES}
    values |= {f"eval/{task}": accuracy for task, accuracy in record.eval_accuracy.items()}
    values |= {f"eval_degenerate/{task}": share for task, share in record.eval_degenerate.items()}
    for task, hallucination in record.eval_hallucination.items():
        values |= {f"eval_hallucination/{task}/{name}": getattr(hallucination, name) for name in _HALLUCINATION}
    return values


class RoundGauges:
    """Prometheus view of the runs: the latest round's figures per run, plus running totals."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.round = Gauge("mpo_run_round", "Last finished round.", ["run_id"], registry=registry)
        self.version = Gauge(
            "mpo_run_policy_version", "Policy version after the last round.", ["run_id"], registry=registry
        )
        self.pairs = Counter("mpo_pairs_trained", "Preference pairs trained.", ["run_id"], registry=registry)
        self.loss = Gauge("mpo_round_loss", "Mean loss terms of the last round.", ["run_id", "term"], registry=registry)
        self.reward_shift = Gauge("mpo_round_reward_shift", "BCO reward shift δ.", ["run_id"], registry=registry)
        self.accuracy = Gauge(
            "mpo_eval_accuracy",
            "Held-out greedy accuracy of the last evaluation.",
            ["run_id", "task"],
            registry=registry,
        )
        self.degenerate = Gauge(
            "mpo_eval_degenerate_share",
            "Share of the last evaluation's held-out answers that are degenerate (no final answer, a "
            "repetition loop or cut at the token limit).",
            ["run_id", "task"],
            registry=registry,
        )
        self.hallucination = Gauge(
            "mpo_eval_hallucination",
            "Hallucination in the last evaluation's held-out scene descriptions: rate (share of descriptions "
            "naming a shape, colour or count not in the scene), mentions (hallucinated per description), recall.",
            ["run_id", "task", "measure"],
            registry=registry,
        )
        self.seconds = Gauge(
            "mpo_round_phase_seconds", "Wall time per phase of the last round.", ["run_id", "phase"], registry=registry
        )
        self.staleness = Gauge(
            "mpo_round_staleness_max", "Most versions a trained pair lagged.", ["run_id"], registry=registry
        )

    def observe(self, record: common_pb2.RoundMetrics) -> None:
        run = record.run_id
        self.round.labels(run).set(record.round)
        self.version.labels(run).set(record.trained_policy_version)
        self.pairs.labels(run).inc(record.labels.pairs_correctness + record.labels.pairs_dropout_ntp)
        for term in _LOSS_TERMS:
            self.loss.labels(run, term.removeprefix("loss_") if term != "loss" else "total").set(
                getattr(record.train, term)
            )
        self.reward_shift.labels(run).set(record.train.reward_shift)
        for task, accuracy in record.eval_accuracy.items():
            self.accuracy.labels(run, task).set(accuracy)
        for task, share in record.eval_degenerate.items():
            self.degenerate.labels(run, task).set(share)
        for task, hallucination in record.eval_hallucination.items():
            for name in _HALLUCINATION:
                self.hallucination.labels(run, task, name).set(getattr(hallucination, name))
        for phase in _PHASES:
            self.seconds.labels(run, phase).set(getattr(record.timings, phase))
        self.staleness.labels(run).set(record.staleness_max)


class RoundSink(Protocol):
    """Where a run's stored rounds are also written, one step per round."""

    def write(self, record: common_pb2.RoundMetrics) -> None: ...

    def close(self) -> None: ...


class EventFiles:
    """TensorBoard event files of one run (`tensorboard --logdir <store_dir>/runs`), one step per round."""

    def __init__(self, directory: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when a run writes events

        self.directory = directory
        self._writer = SummaryWriter(log_dir=str(directory))

    def write(self, record: common_pb2.RoundMetrics) -> None:
        for tag, value in scalars(record).items():
            self._writer.add_scalar(tag, value, global_step=record.round, walltime=record.finished_at or None)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class WandbRun:
    """A Weights & Biases run per OnlineMPO run (its id is the run id, so a resumed run continues it).

    The W&B client buffers what it writes, so a controller killed with SIGKILL can take its last rounds
    with it; the store has them, so a starting sink logs the stored rounds W&B has not seen yet."""

    def __init__(self, run_id: str, project: str, directory: Path, stored: list[common_pb2.RoundMetrics]) -> None:
        import wandb  # optional dependency: ControllerConfig checks it is installed

        directory.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=project,
            id=run_id,
            name=run_id,
            dir=str(directory),
            resume="allow",
            settings=wandb.Settings(console="off"),  # the actor's output belongs to Ray's logs
        )
        for record in stored:
            if record.round >= self._run.step:  # a resumed online run already has the rounds before its step
                self.write(record)

    def write(self, record: common_pb2.RoundMetrics) -> None:
        self._run.log(scalars(record), step=record.round)

    def close(self) -> None:
        self._run.finish()
