"""Soak: many concurrent clients on the rollout service while a run trains and publishes. Prints JSON.

The run is the demo's (`mpo/demo.py`: its prompts, base policy and recipe), with small rounds and more of
them than the soak lasts; it runs in a process of its own, as `mpo run` would, and the bench stops it at
the end. Meanwhile `--clients` clients call Generate for `--minutes` (or `--seconds`): text prompts of the
demo's task with a small `max_tokens`, and a share (`--invalid-share`) of requests with one bad field,
which must be refused with INVALID_ARGUMENT. Reported: calls by status code (valid and invalid apart),
the OK calls' p50/p99 latency, calls/s, the policy versions the samples carried (the publishes during the
soak), and the RSS of each service process over time, with its growth after warm-up (the last sample
minus the one at the end of the first quarter). The service processes: `ingress`, the run's own process,
which serves the rollout, reward and trainer gRPC endpoints in the embedded mode; each rollout replica,
reward worker and trainer rank; the controller. The verdict: errors other than RESOURCE_EXHAUSTED
(target 0; INVALID_ARGUMENT for the deliberately bad calls is no error) and each process's RSS growth.

With MPO_CONTROL_TOKEN (and MPO_USER_TOKEN) set, the services require them; the clients then present the
user token. Without them the services serve on loopback unauthenticated.

    .venv/bin/python bench/soak.py [--clients 32] [--minutes 5 | --seconds S] [--workdir mpo-demo]
                                   [--round-prompts 16] [--set rollout.replicas=2 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from pathlib import Path
from queue import Empty
from typing import Any

import grpc
import psutil

from mpo.config import RunConfig, run_config
from mpo.data.tasks import TASKS
from mpo.demo import demo_run_config, prepare
from mpo.embedded import run_embedded
from mpo.overrides import OverrideError, parse_overrides
from mpo.serving.auth import Credentials
from mpo.serving.clients import ControllerClient, RolloutClient
from mpo.v1 import common_pb2, controller_pb2

#: Ray titles each actor's worker process `ray::<Class>...`; the service role each class plays.
ACTOR_ROLES = {
    "RolloutReplica": "rollout_replica",
    "LabellingWorker": "reward_worker",
    "TrainerRank": "trainer_rank",
    "ControllerActor": "controller",
}
#: The codes a soak tolerates besides the expected ones: a full server refusing a call is load shedding.
SHED = "RESOURCE_EXHAUSTED"
#: How much of a process's command line the report quotes.
_COMMAND_CHARS = 80
#: One bad field each: (the field, how to spoil a valid prompt and sampling). `max_tokens` is the limit.
BadField = tuple[str, Callable[[common_pb2.Prompt, common_pb2.SamplingParams, int], None]]
BAD_FIELDS: tuple[BadField, ...] = (
    ("sampling.max_tokens", lambda prompt, sampling, limit: setattr(sampling, "max_tokens", limit + 1)),
    ("sampling.top_p", lambda prompt, sampling, limit: setattr(sampling, "top_p", 1.5)),
    ("prompts[0].task", lambda prompt, sampling, limit: setattr(prompt, "task", "no-such-task")),
    ("prompts[0].question", lambda prompt, sampling, limit: setattr(prompt, "question", "   ")),
)


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def soak_config(args: argparse.Namespace, state: Path, overrides: dict[str, Any]) -> RunConfig:
    """The demo's run with small rounds, evaluation off, and its state (store, ledger, checkpoints) under
    `state`, so every soak starts from the base policy."""
    raw = demo_run_config(args.workdir.resolve(), seed=0, rounds=args.rounds, mode="sync", heldout=args.heldout_prompts)
    raw["run_id"] = "soak"
    raw["store_dir"] = str(state / "store")
    raw["rounds"].update(prompts_per_round=args.round_prompts, samples_per_prompt=args.round_samples, eval_every=0)
    for section, key in (("rollout", "weights_dir"), ("trainer", "checkpoint_dir"), ("trainer", "publish_dir")):
        raw[section][key] = str(state / key)
    return run_config(raw, source="bench soak", overrides=overrides)


def serve_run(config: RunConfig, events: Queue) -> None:
    """The run, in its own process; its services' addresses go to `events` once they serve. The engines'
    logs go to stderr: stdout is the bench's report."""
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        run_id, records = asyncio.run(run_embedded(config, on_services=events.put))
        say(f"soak: run {run_id} ended after {len(records)} rounds")
    except KeyboardInterrupt:
        say("soak: run interrupted")


async def wait_for_services(events: Queue, child: BaseProcess, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return await asyncio.to_thread(events.get, True, 2.0)
        except Empty:
            if not child.is_alive():
                raise RuntimeError(f"the run's process exited ({child.exitcode}) before its services served") from None
    raise TimeoutError(f"the services did not serve within {timeout:.0f} s")


def end_run(child: BaseProcess, *, stopped: bool) -> None:
    """A stopped run's process ends by itself once its services are down; otherwise (or when it does not)
    an interrupt lets it stop its services and Ray before it is killed."""
    child.join(600 if stopped else 0)
    if child.is_alive() and child.pid is not None:
        os.kill(child.pid, signal.SIGINT)
        child.join(120)
    if child.is_alive():
        child.kill()
        child.join()


def actor_role(title: str) -> str | None:
    if not title.startswith("ray::"):
        return None
    return ACTOR_ROLES.get(title.removeprefix("ray::").split(".")[0].split(" ")[0])


def service_processes(run_pid: int) -> dict[int, tuple[str, str]]:
    """pid → (role, command line) of the run's process, of every service actor's worker below it, and of
    the workers' own children (`<role>_child`: the rollout replica's vLLM engine core). Ray's own
    processes are left out."""
    parents, commands, roles = {}, {}, {run_pid: "ingress"}
    try:
        run = psutil.Process(run_pid)
        processes = [run, *run.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}  # the run's process ended: its samples read None
    for process in processes:
        try:
            parents[process.pid], commands[process.pid] = process.ppid(), " ".join(process.cmdline())
        except psutil.Error:
            continue  # ended meanwhile
        if (role := actor_role(commands[process.pid])) is not None:
            roles[process.pid] = role
    for pid in parents:
        ancestor = parents[pid]
        while ancestor in parents and ancestor not in roles:
            ancestor = parents[ancestor]
        if pid not in roles and ancestor in roles and ancestor != run_pid:
            roles[pid] = roles[ancestor].removesuffix("_child") + "_child"
    return {pid: (role, commands[pid][:_COMMAND_CHARS]) for pid, role in roles.items() if pid in commands}


@dataclass
class RssSeries:
    role: str
    pid: int
    command: str  # what the process is (a `_child` role says only whose child it is)
    rss_bytes: list[int | None]


@dataclass
class RssTracker:
    """RSS of each service process at each sample; a process that appears later (an actor restarted by
    Ray) gets a series of its own, empty (None) before it appeared and after it ended."""

    run_pid: int
    started: float
    seconds: list[float] = field(default_factory=list)
    series: dict[int, RssSeries] = field(default_factory=dict)

    def sample(self) -> None:
        self.seconds.append(round(time.monotonic() - self.started, 1))
        for pid, (role, command) in service_processes(self.run_pid).items():
            if pid not in self.series:
                self.series[pid] = RssSeries(role, pid, command, [None] * (len(self.seconds) - 1))
        for series in self.series.values():
            try:
                series.rss_bytes.append(psutil.Process(series.pid).memory_info().rss)
            except psutil.Error:
                series.rss_bytes.append(None)

    def latest(self, role: str) -> int:
        return sum(s.rss_bytes[-1] or 0 for s in self.series.values() if s.role == role)

    def report(self, duration: float) -> dict[str, Any]:
        """Per process (`role/index`, in the order of their pids): its RSS over time and its growth from
        the end of the first quarter of the soak to the end."""
        warm = next(i for i, t in enumerate(self.seconds) if t >= duration / 4 or i == len(self.seconds) - 1)
        processes: dict[str, Any] = {}
        for series in sorted(self.series.values(), key=lambda s: s.pid):
            name = f"{series.role}/{sum(1 for key in processes if key.startswith(series.role + '/'))}"
            start, end = series.rss_bytes[warm], series.rss_bytes[-1]
            processes[name] = {
                "pid": series.pid,
                "command": series.command,
                "rss_bytes": series.rss_bytes,
                "growth_after_warmup_bytes": end - start if start is not None and end is not None else None,
            }
        return {"sample_seconds": self.seconds, "warmup_ends_at_seconds": self.seconds[warm], "processes": processes}


@dataclass
class Tally:
    """What the clients saw: (kind, status) counts, OK latencies and the policy versions of the samples."""

    calls: Counter[tuple[str, str]] = field(default_factory=Counter)
    ok_latencies: list[float] = field(default_factory=list)
    versions: set[int] = field(default_factory=set)

    def by_kind(self, kind: str) -> dict[str, int]:
        return dict(sorted((code, n) for (k, code), n in self.calls.items() if k == kind))

    def errors(self) -> int:
        expected = {"valid": {"OK", SHED}, "invalid": {"INVALID_ARGUMENT", SHED}}
        return sum(n for (kind, code), n in self.calls.items() if code not in expected[kind])


@dataclass(frozen=True)
class Workload:
    """What every client sends, where, and until when."""

    address: str
    token: str | None
    prompts: list[common_pb2.Prompt]
    max_tokens: int
    max_tokens_limit: int  # the service's: a bad `max_tokens` goes one above it
    invalid_share: float
    call_timeout: float
    deadline: float


def valid_prompts(count: int, seed: int) -> list[common_pb2.Prompt]:
    records = TASKS["arith"].generate(count, seed, None)
    return [common_pb2.Prompt(id=f"soak-{i}", question=r.question, task="arith") for i, r in enumerate(records)]


async def client_loop(index: int, work: Workload, tally: Tally) -> None:
    """One client: Generate calls back to back until the deadline, a share of them with one bad field."""
    rng = random.Random(index)
    async with RolloutClient(work.address, token=work.token, timeout=work.call_timeout) as client:
        while time.monotonic() < work.deadline:
            prompt = common_pb2.Prompt()
            prompt.CopyFrom(rng.choice(work.prompts))
            sampling = common_pb2.SamplingParams(n=1, temperature=0.7, max_tokens=work.max_tokens)
            kind = "invalid" if rng.random() < work.invalid_share else "valid"
            if kind == "invalid":
                _, spoil = rng.choice(BAD_FIELDS)
                spoil(prompt, sampling, work.max_tokens_limit)
            started = time.monotonic()
            try:
                response = await client.generate([prompt], sampling)
                code = "OK"
            except grpc.aio.AioRpcError as error:
                code = error.code().name
            tally.calls[kind, code] += 1
            if code == "OK":
                tally.ok_latencies.append(time.monotonic() - started)
                tally.versions.update(s.policy_version for s in response.samples)


def percentile(values: list[float], q: int) -> float | None:
    """The q-th percentile (1..99), interpolated between the observed values."""
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def progress(started: float, tally: Tally, rss: RssTracker, every: float) -> None:
    while True:
        await asyncio.sleep(every)
        calls = sum(tally.calls.values())
        p50 = percentile(tally.ok_latencies[-2000:], 50)
        say(
            f"soak {time.monotonic() - started:6.0f} s | calls {calls} (ok {tally.calls['valid', 'OK']}, "
            f"errors {tally.errors()}) | recent p50 {p50 or 0:.2f} s | versions {sorted(tally.versions)[-3:]} | "
            f"rss MiB ingress {rss.latest('ingress') / 2**20:.0f}, replicas {rss.latest('rollout_replica') / 2**20:.0f}"
            f", trainer {rss.latest('trainer_rank') / 2**20:.0f}"
        )


async def sample_rss(rss: RssTracker, every: float) -> None:
    while True:
        rss.sample()  # a few /proc reads: quick enough for the event loop
        await asyncio.sleep(every)


async def soak(args: argparse.Namespace, config: RunConfig, child: BaseProcess, events: Queue) -> dict[str, Any]:
    """Wait for the services, load the rollout service for the soak's length, stop the run; the results."""
    launched = time.monotonic()
    addresses = await wait_for_services(events, child, args.startup_timeout)
    assert config.rollout is not None and child.pid is not None
    credentials = Credentials.from_env(config.rollout.server.auth)  # one pair of tokens per cluster
    async with RolloutClient(addresses["rollout"], token=credentials.for_sampling) as probe:
        version_at_start = (await probe.status()).policy_version
    say(f"soak: services serve ({addresses['rollout']} rollout); {args.clients} clients for {args.duration:.0f} s")
    started, started_wall = time.monotonic(), time.time()
    tally, rss = Tally(), RssTracker(child.pid, started)
    background = [
        asyncio.create_task(sample_rss(rss, args.rss_interval)),
        asyncio.create_task(progress(started, tally, rss, args.progress_interval)),
    ]
    work = Workload(
        address=addresses["rollout"],
        token=credentials.for_sampling,
        prompts=valid_prompts(256, seed=7),
        max_tokens=args.max_tokens,
        max_tokens_limit=config.rollout.server.limits.max_tokens,
        invalid_share=args.invalid_share,
        call_timeout=args.call_timeout,
        deadline=started + args.duration,
    )
    await asyncio.gather(*(client_loop(i, work, tally) for i in range(args.clients)))
    elapsed, ended_wall = time.monotonic() - started, time.time()
    for task in background:
        task.cancel()
    rss.sample()
    try:
        version_at_end, run, rounds = await stop_run(addresses, credentials, config.run_id or "")
    except grpc.aio.AioRpcError as error:  # the report still shows what the clients saw until then
        say(f"soak: the services did not answer at the end ({error.code().name}: {error.details()})")
        version_at_end, run, rounds = None, None, []
    calls = sum(tally.calls.values())
    rss_report = rss.report(elapsed)
    return {
        "results": {
            "services_start_seconds": round(started - launched, 1),
            "soak_seconds": round(elapsed, 1),
            "calls": calls,
            "calls_per_second": round(calls / elapsed, 2),
            "status_counts": {"valid": tally.by_kind("valid"), "invalid": tally.by_kind("invalid")},
            "ok_latency_seconds": {
                "p50": _rounded(percentile(tally.ok_latencies, 50)),
                "p99": _rounded(percentile(tally.ok_latencies, 99)),
            },
            "policy_versions_seen": sorted(tally.versions),
            "policy_version_at_start": version_at_start,
            "policy_version_at_end": version_at_end,
            "publishes_during_soak": None if version_at_end is None else version_at_end - version_at_start,
            "rounds_during_soak": sum(1 for r in rounds if started_wall <= r.finished_at <= ended_wall),
            "run_state_at_end": controller_pb2.RunState.Name(run.state) if run else "unreachable",
            "run_error": run.error if run else None,
            "rss": rss_report,
        },
        "verdict": {
            "errors_other_than_resource_exhausted": tally.errors(),
            "rss_growth_after_warmup_bytes": {
                name: process["growth_after_warmup_bytes"] for name, process in rss_report["processes"].items()
            },
        },
    }


async def stop_run(
    addresses: dict[str, str], credentials: Credentials, run_id: str
) -> tuple[int, controller_pb2.Run, list[common_pb2.RoundMetrics]]:
    """The serving policy version at the soak's end, then StopRun: the run's state and its rounds."""
    async with RolloutClient(addresses["rollout"], token=credentials.for_sampling) as probe:
        version = (await probe.status()).policy_version
    say("soak: stopping the run (the round in progress finishes first)")
    async with ControllerClient(addresses["controller"], token=credentials.control, timeout=1800) as controller:
        run = await controller.stop_run(run_id)
        return version, run, await controller.list_rounds(run_id)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def parse_args() -> tuple[argparse.Namespace, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, help="the soak's length in seconds (overrides --minutes)")
    parser.add_argument("--invalid-share", type=float, default=0.05, help="share of calls with one bad field")
    parser.add_argument("--max-tokens", type=int, default=16, help="max_tokens of the clients' calls")
    parser.add_argument("--call-timeout", type=float, default=120.0, help="deadline of each client call (s)")
    parser.add_argument("--rss-interval", type=float, default=3.0, help="seconds between RSS samples")
    parser.add_argument("--progress-interval", type=float, default=15.0, help="seconds between progress lines")
    parser.add_argument("--startup-timeout", type=float, default=900.0, help="seconds the services may take to start")
    parser.add_argument("--workdir", type=Path, default=Path("mpo-demo"), help="the demo's prompts and base policy")
    parser.add_argument("--train-prompts", type=int, default=5000, help="when --workdir has no prompts yet")
    parser.add_argument("--heldout-prompts", type=int, default=2000, help="when --workdir has no prompts yet")
    parser.add_argument("--bootstrap-steps", type=int, help="warm start length when --workdir has no base yet")
    parser.add_argument("--round-prompts", type=int, default=16, help="prompts per round of the run")
    parser.add_argument("--round-samples", type=int, default=4, help="samples per prompt of the run's rounds")
    parser.add_argument("--rounds", type=int, default=10_000, help="rounds of the run (more than the soak lasts)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change the run config (dotted key, YAML value); repeatable")  # fmt: skip
    args = parser.parse_args()
    args.duration = args.seconds if args.seconds is not None else 60 * args.minutes
    if args.clients < 1 or args.duration <= 0 or not 0 <= args.invalid_share <= 1:
        parser.error("--clients must be >= 1, the length > 0, and --invalid-share within [0, 1]")
    try:
        return args, parse_overrides(args.overrides)
    except OverrideError as exc:
        parser.error(str(exc))


def main() -> None:
    args, overrides = parse_args()
    prepare(
        args.workdir, train_prompts=args.train_prompts, heldout_prompts=args.heldout_prompts,
        bootstrap_steps=args.bootstrap_steps, say=say,
    )  # fmt: skip
    context = multiprocessing.get_context("spawn")  # a fresh process for Ray and the engines
    with tempfile.TemporaryDirectory(prefix="mpo-soak-") as state:
        config = soak_config(args, Path(state), overrides)
        events = context.Queue()
        child = context.Process(target=serve_run, args=(config, events), name="mpo-soak-run")
        child.start()
        outcome: dict[str, Any] = {}
        try:
            outcome = asyncio.run(soak(args, config, child, events))
        finally:
            end_run(child, stopped=bool(outcome))
    settings = {
        "clients": args.clients,
        "seconds": args.duration,
        "invalid_share": args.invalid_share,
        "bad_fields": [name for name, _ in BAD_FIELDS],
        "max_tokens": args.max_tokens,
        "call_timeout_s": args.call_timeout,
        "rss_interval_s": args.rss_interval,
        "auth": config.rollout is not None and Credentials.from_env(config.rollout.server.auth).control is not None,
        "run": {
            "prompts_per_round": config.rounds.prompts_per_round,
            "samples_per_prompt": config.rounds.samples_per_prompt,
            "max_tokens": config.rounds.max_tokens,
            "trainer_ranks": config.trainer.world_size if config.trainer else None,
            "rollout_replicas": config.rollout.replicas if config.rollout else None,
        },
        "overrides": overrides,
    }
    report = {"benchmark": "soak", "machine": f"{platform.machine()}, {os.cpu_count()} cores", "settings": settings}
    print(json.dumps({**report, **outcome}, indent=2))


if __name__ == "__main__":
    main()
