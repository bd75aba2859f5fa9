"""The `mpo` command line: argparse, and one `_cmd_*` per subcommand that calls the module owning its logic
and turns the outcome into printed lines and an exit code (2: bad input, named; 1: a failure)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mpo import __version__


def _error(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _flags(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The named flags, as keyword arguments of the function that owns the command."""
    return {name: getattr(args, name) for name in names}


def _cmd_info(args: argparse.Namespace) -> int:
    from mpo import info

    reports, gpu = info.collect()
    if args.json:
        packages = {r.name: {"version": r.version, "error": r.error} for r in reports}
        print(json.dumps({"onlinempo": __version__, "packages": packages, "gpu": gpu}, indent=2))
    else:
        print(info.render(reports, gpu, __version__))
    unknown, missing = info.unmet_requirements(reports, args.require or "")
    if unknown:
        return _error(f"--require names unknown packages: {', '.join(unknown)}")
    if missing:
        return _error(f"required packages failed to import: {', '.join(missing)}", 1)
    return 0


def _cmd_config_validate(args: argparse.Namespace) -> int:
    import yaml

    from mpo.config import ConfigError, load_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        return _error(str(exc))
    print(f"# {args.file}: valid; effective settings (defaults filled in):")
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _cmd_config_example(args: argparse.Namespace) -> int:
    from mpo.config_example import example_yaml

    print(example_yaml(), end="")
    return 0


def _cmd_models_build(args: argparse.Namespace) -> int:
    from mpo.models.corpus import task_corpus
    from mpo.models.tiny import TextModelSpec, build_image_text_model, build_text_model

    corpus = task_corpus(args.tasks.split(","), seed=args.seed, per_task=args.corpus_per_task)
    if args.family:
        from mpo.models.families import build_family_model

        try:
            build_family_model(args.family, args.out, corpus, seed=args.seed)
        except ValueError as exc:  # an unknown family: the message lists the known ones
            raise SystemExit(f"error: --family: {exc}") from exc
        print(f"built a tiny random-weight {args.family} model (seed {args.seed}) in {args.out}")
        return 0
    build = build_text_model if args.kind == "text" else build_image_text_model
    spec = TextModelSpec(hidden_size=args.hidden_size, num_layers=args.layers, num_heads=args.heads)
    build(args.out, corpus, spec, seed=args.seed)
    print(f"built {args.kind} model (seed {args.seed}) in {args.out}")
    return 0


def _cmd_data_make(args: argparse.Namespace) -> int:
    from mpo.data.loader import write_prompts_jsonl, write_prompts_parquet
    from mpo.data.tasks import make_splits

    splits = make_splits(args.task, seed=args.seed, train=args.train, heldout=args.heldout, out_dir=args.out)
    write = write_prompts_jsonl if args.format == "jsonl" else write_prompts_parquet
    for split, records in splits.items():
        path = args.out / f"{split}.{args.format}"
        write(records, path)
        print(f"{args.task}: {len(records)} {split} prompts -> {path}")
    return 0


def _on_bad_row(args: argparse.Namespace) -> str:
    return "skip" if args.skip_bad_rows else "reject"


def _cmd_bootstrap(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from mpo.config import BootstrapConfig, format_validation_error
    from mpo.data.loader import DataError, load_prompts
    from mpo.data.tasks import TASKS
    from mpo.trainer.sft import bootstrap

    overrides = {k: v for k, v in vars(args).items() if k in BootstrapConfig.model_fields and v is not None}
    try:
        config = BootstrapConfig(**overrides)
    except ValidationError as exc:
        return _error(f"invalid bootstrap options\n{format_validation_error(exc)}")
    try:
        train, heldout = (
            load_prompts(args.data / f"{name}.jsonl", on_bad_row=_on_bad_row(args)).records
            for name in ("train", "heldout")
        )
    except DataError as exc:
        raise SystemExit(f"error: {exc}") from exc
    report = bootstrap(args.model, args.out, train, heldout, lambda r, rng: TASKS[r.task].demonstration(r, rng), config)
    print(json.dumps(report.summary(), indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from mpo.config import ConfigError
    from mpo.data.loader import DataError
    from mpo.eval_command import evaluate_model
    from mpo.models.generate import Sampling

    sampling = Sampling(n=args.samples, **_flags(args, "temperature", "seed", "max_new_tokens"))
    try:
        result = evaluate_model(
            **_flags(args, "model", "data", "config", "limit", "trust_remote_code"),
            sampling=sampling,
            on_bad_row=_on_bad_row(args),
        )
    except (ConfigError, DataError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(json.dumps(result.summary(), indent=2))
    return 0


#: `mpo serve SERVICE`: the config fields its flags set (each flag's dest is its field's name).
_SERVE_FLAGS = {
    "rollout": ("model", "backend", "replicas", "weights_dir", "readable_roots"),
    "reward": ("rollout_address", "workers"),
    "trainer": ("model", "world_size", "strategy", "checkpoint_dir", "rollout_address"),
    "controller": ("store_dir", "rollout_address", "reward_address", "trainer_address"),
}


def _cmd_serve(args: argparse.Namespace) -> int:
    import logging

    from mpo.config import ConfigError
    from mpo.run_command import StartRunError
    from mpo.serve_command import serve

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    try:
        serve(
            args.service,
            _flags(args, *_SERVE_FLAGS[args.service]),
            run_config_file=args.run_config,
            config_file=args.config,
            start_run=getattr(args, "start_run", False),
            **_flags(args, "host", "port", "ray_address"),
        )
    except ConfigError as exc:
        return _error(str(exc))
    except StartRunError as exc:
        raise SystemExit(f"error: {exc}") from exc
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    import asyncio

    from pydantic import ValidationError

    from mpo.config import DashboardConfig, format_validation_error
    from mpo.services.dashboard.server import start_dashboard
    from mpo.services.dashboard.sources import StoreSource
    from mpo.serving.hosting import serve_until_signal

    try:
        config = DashboardConfig(host=args.host, port=args.port)
        source = StoreSource(args.store_dir)
    except ValidationError as exc:
        return _error(f"invalid dashboard options\n{format_validation_error(exc)}")
    except FileNotFoundError as exc:
        return _error(f"--store-dir: {exc}")
    asyncio.run(serve_until_signal(lambda: start_dashboard(source, config)))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from mpo.trainer.export import export_checkpoint

    try:
        out = export_checkpoint(
            args.checkpoint, args.out, dtype=getattr(torch, args.dtype), trust_remote_code=args.trust_remote_code
        )
    except (FileNotFoundError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from exc
    print(json.dumps({"event": "exported", "checkpoint": str(args.checkpoint), "model_dir": str(out)}))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from mpo.run_command import RUN_ERRORS, load_run_config, run_here

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_run_config(**_flags(args, "config", "resume", "store_dir", "overrides", "rounds"))
        finished = asyncio.run(run_here(config, say=lambda line: print(line, flush=True)))
    except RUN_ERRORS as exc:
        return _error(str(exc))
    print(json.dumps(finished))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import logging

    from mpo.demo import DemoWorkdirError, WarmStartError, run_demo

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    flags = ("task", "workdir", "rounds", "seed", "mode", "train_prompts", "heldout_prompts", "bootstrap_steps")
    try:
        run_demo(**_flags(args, *flags))
    except WarmStartError as exc:
        return _error(f"--bootstrap-steps: invalid warm start\n{exc}")
    except DemoWorkdirError as exc:
        return _error(f"--workdir: {exc}")
    return 0


def _cmd_client_generate(args: argparse.Namespace) -> int:
    import asyncio

    import grpc

    from mpo.client_command import generate, request

    prompt, sampling = request(
        args.question,
        images=args.image,
        **_flags(args, "task", "n", "temperature", "top_p", "top_k", "max_tokens", "stop", "logprobs", "seed"),
    )
    options = _flags(args, "address", "stream", "token_env", "timeout", "tls_root_cert")
    try:
        asyncio.run(generate(prompt, sampling, **options, say=lambda line: print(line, flush=True)))
    except grpc.aio.AioRpcError as exc:
        return _error(f"{exc.code().name}: {exc.details()}")
    return 0


def _cmd_client_health(args: argparse.Namespace) -> int:
    import asyncio

    from mpo.serving.health_check import unhealthy

    problems = asyncio.run(unhealthy(args.address, timeout=args.timeout, absent_ok=args.absent_ok))
    for problem in problems:
        print(f"unhealthy: {problem}", file=sys.stderr)
    return 1 if problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpo", description="OnlineMPO: online Mixed Preference Optimization (rollout → label → train → publish)."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    info = commands.add_parser(
        "info",
        help="show engine versions (torch, vLLM, DeepSpeed, Ray) and visible GPUs",
        description="Import each engine for real and print its version, and whether a GPU is visible.",
    )
    info.add_argument("--json", action="store_true", help="print machine-readable JSON")
    info.add_argument(
        "--require",
        metavar="PKGS",
        help="comma list of packages (e.g. vllm,deepspeed,ray) that must import; exit 1 otherwise",
    )
    info.set_defaults(handler=_cmd_info)

    config = commands.add_parser(
        "config", help="work with run config files", description="Check and inspect YAML run configs."
    )
    config_commands = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    validate = config_commands.add_parser(
        "validate",
        help="check a YAML run config and print it with defaults filled in",
        description="Validate a YAML run config; every problem is reported with its field path (exit 2).",
    )
    validate.add_argument("file", help="path to the YAML config")
    validate.set_defaults(handler=_cmd_config_validate)
    example = config_commands.add_parser(
        "example",
        help="print a complete, commented run config",
        description="Print every run-config key with its default and description (from the pydantic models).",
    )
    example.set_defaults(handler=_cmd_config_example)

    models = commands.add_parser("models", help="build the tiny models", description="Build tiny models locally.")
    model_commands = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    build = model_commands.add_parser(
        "build",
        help="build a tiny text (Qwen2) or image-text (LLaVA-style) model with its own tokenizer",
        description="Train a BPE tokenizer on the task texts and initialise a tiny model; same seed, same bytes.",
    )
    build.add_argument("--out", type=Path, required=True, help="model directory to write")
    build.add_argument("--kind", choices=["text", "image-text"], default="text")
    build.add_argument(
        "--family",
        help="instead: a tiny random-weight model of a real family (qwen2.5, llama3, gemma, qwen2-vl, llava-next, "
        "internvl, llava), with its own classes, chat template and special tokens",
    )
    build.add_argument("--tasks", default="arith,shapes,describe", help="tasks whose texts train the tokenizer")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--hidden-size", type=int, default=128)
    build.add_argument("--layers", type=int, default=4)
    build.add_argument("--heads", type=int, default=4)
    build.add_argument("--corpus-per-task", type=int, default=2000, help="records per task in the tokenizer corpus")
    build.set_defaults(handler=_cmd_models_build)

    data = commands.add_parser("data", help="built-in task data", description="Generate built-in task data.")
    data_commands = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    make = data_commands.add_parser(
        "make",
        help="generate a built-in task's train / held-out splits",
        description="Write train and held-out prompt files (and images) for arith, shapes or describe.",
    )
    make.add_argument("--task", required=True, choices=["arith", "shapes", "describe"])
    make.add_argument("--out", type=Path, required=True, help="directory for the split files and images/")
    make.add_argument("--train", type=int, default=5000)
    make.add_argument("--heldout", type=int, default=2000)
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--format", choices=["jsonl", "parquet"], default="jsonl")
    make.set_defaults(handler=_cmd_data_make)

    boot = commands.add_parser(
        "bootstrap",
        help="supervised warm start of a tiny model on CoT demonstrations (the base policy)",
        description="SFT on demonstrations, with an accuracy curve, pass@k and a stability check.",
    )
    boot.add_argument("--model", type=Path, required=True, help="model directory from `mpo models build`")
    boot.add_argument("--data", type=Path, required=True, help="directory from `mpo data make` (train/heldout.jsonl)")
    boot.add_argument("--out", type=Path, required=True, help="where to save the base policy")
    for name in (
        "steps",
        "batch_size",
        "eval_every",
        "eval_prompts",
        "stability_steps",
        "seed",
        "pass_k",
        "max_new_tokens",
    ):
        boot.add_argument(f"--{name.replace('_', '-')}", type=int, dest=name)
    boot.add_argument("--learning-rate", type=float, dest="learning_rate")
    boot.add_argument("--final-lr-ratio", type=float, dest="final_lr_ratio", help="cosine floor; 1.0 = constant")
    boot.add_argument(
        "--ema-decay", type=float, dest="ema_decay", help="weight-average decay; 0 = last iterate; unset = per task"
    )
    boot.add_argument(
        "--vision-lr-ratio", type=float, dest="vision_lr_ratio", help="image encoder's share of the rate; 0 freezes"
    )
    boot.add_argument("--skip-bad-rows", action="store_true", help="skip (and report) bad prompt rows")
    boot.set_defaults(handler=_cmd_bootstrap)

    evaluation = commands.add_parser(
        "eval",
        help="held-out accuracy of a model directory (generate, extract the final answer, verify)",
        description="Accuracy (and pass@k with --samples k --temperature 1) on a prompt file with answers.",
    )
    evaluation.add_argument("--model", type=Path, help="model directory (default: the --config's model)")
    evaluation.add_argument(
        "--data", type=Path, help="prompt file with answers in the record format (default: the --config's heldout)"
    )
    evaluation.add_argument(
        "--config",
        type=Path,
        help="a run config: its held-out data (column mapping, answer format), prompt, verifiers and "
        "trust_remote_code apply",
    )
    evaluation.add_argument("--trust-remote-code", action="store_true", help="the model ships its own code")
    evaluation.add_argument("--samples", type=int, default=1)
    evaluation.add_argument("--temperature", type=float, default=0.0)
    evaluation.add_argument("--max-new-tokens", type=int, default=96)
    evaluation.add_argument("--limit", type=int, default=None, help="evaluate the first N prompts only")
    evaluation.add_argument("--seed", type=int, default=0)
    evaluation.add_argument("--skip-bad-rows", action="store_true")
    evaluation.set_defaults(handler=_cmd_eval)
    _add_service_commands(commands)
    return parser


def _add_service_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run a service", description="Run one OnlineMPO service until stopped.")
    services = serve.add_subparsers(dest="service", metavar="SERVICE", required=True)
    rollout = services.add_parser(
        "rollout",
        help="the rollout service: engine replicas on Ray behind one gRPC endpoint",
        description="Start engine replicas (Ray actors) and the RolloutService gRPC endpoint; prints one JSON "
        "line with the address when ready; SIGTERM drains and stops.",
    )
    rollout.add_argument("--model", type=Path, help="model directory (or set `model` in --config)")
    rollout.add_argument("--backend", choices=["auto", "vllm", "transformers"])
    rollout.add_argument("--replicas", type=int)
    rollout.add_argument("--weights-dir", type=Path, help="where committed weight updates are kept")
    rollout.add_argument(
        "--readable-root",
        type=Path,
        action="append",
        dest="readable_roots",
        metavar="READABLE_ROOT",
        help="directory requests may read; repeat",
    )

    reward = services.add_parser(
        "reward",
        help="the reward service: verifiers, correctness and DropoutNTP pairs",
        description="Start labelling workers (Ray actors) and the RewardService gRPC endpoint; prints one JSON "
        "line with the address when ready; SIGTERM drains and stops.",
    )
    reward.add_argument("--rollout-address", help="host:port of the rollout service (needed for DropoutNTP)")
    reward.add_argument("--workers", type=int, help="labelling worker actors")

    trainer = services.add_parser(
        "trainer",
        help="the trainer service: DeepSpeed rank actors training MPO",
        description="Start the trainer's rank actors (DeepSpeed, ZeRO-3 by default) and the TrainerService gRPC "
        "endpoint; resumes from the newest checkpoint; prints one JSON line with the address when ready.",
    )
    trainer.add_argument("--model", type=Path, help="base policy directory (or set `model` in --config)")
    trainer.add_argument("--world-size", type=int, dest="world_size", help="data-parallel ranks")
    trainer.add_argument("--strategy", choices=["zero3", "zero2", "zero1"])
    trainer.add_argument("--checkpoint-dir", type=Path, dest="checkpoint_dir")
    trainer.add_argument("--rollout-address", help="host:port of the rollout service PublishWeights feeds")

    controller = services.add_parser(
        "controller",
        help="the controller: online MPO runs driven over the other three services",
        description="Start the ControllerService (a Ray actor, restarted after a crash) against running rollout, "
        "reward and trainer services; continues an interrupted run on start; prints one JSON line with the "
        "address when ready; SIGTERM stops serving and leaves an active run to continue on the next start.",
    )
    controller.add_argument("--store-dir", type=Path, dest="store_dir", help="run store (SQLite and Parquet shards)")
    controller.add_argument("--rollout-address", help="host:port of the rollout service")
    controller.add_argument("--reward-address", help="host:port of the reward service")
    controller.add_argument("--trainer-address", help="host:port of the trainer service")
    controller.add_argument(
        "--start-run",
        action="store_true",
        dest="start_run",
        help="once serving, start the run of --run-config (or continue it from the store)",
    )
    for parser in (rollout, reward, trainer, controller):
        parser.set_defaults(handler=_cmd_serve)
        parser.add_argument("--config", type=Path, help="YAML with the service's config fields; flags override it")
        parser.add_argument(
            "--run-config",
            type=Path,
            dest="run_config",
            help="take the service's section of this run config (the Helm chart's ConfigMap); --config and flags "
            "override it",
        )
        parser.add_argument("--host", help="interface to bind (0.0.0.0 in containers)")
        parser.add_argument("--port", type=int, help="gRPC port; 0 picks a free one")
        parser.add_argument("--ray-address", help="join this Ray cluster ('auto': the local one); default: start Ray")

    run = commands.add_parser(
        "run",
        help="run online MPO rounds on this machine (local Ray, all services)",
        description="Start the rollout, reward and trainer services on a local Ray and run the configured "
        "rounds, printing one line per round; a stored run resumes where it stopped.",
    )
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", type=Path, help="YAML run config (see `mpo config validate`)")
    source.add_argument("--resume", metavar="RUN", help="continue a stored run with its stored config")
    run.add_argument("--store-dir", type=Path, default=Path("mpo-state/runs"), help="run store of --resume")
    run.add_argument(
        "--rounds", type=int, help="set rounds.rounds (e.g. to extend a resumed run); short for --set rounds.rounds=N"
    )
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change a field of the run config (stored run's too): a dotted KEY, a YAML VALUE, e.g. "
        "rounds.max_tokens=256; repeatable",
    )
    run.set_defaults(handler=_cmd_run)

    dashboard = commands.add_parser(
        "dashboard",
        help="serve the web dashboard over a run store (e.g. after `mpo demo`)",
        description="Serve the read-only dashboard over a run store on disk, without a controller: runs, "
        "rounds, pairs; rounds of a run that is still active elsewhere appear as they are stored. "
        "Set MPO_USER_TOKEN to require a token (needed beyond loopback).",
    )
    dashboard.add_argument(
        "--store-dir", type=Path, default=Path("mpo-demo/store"), help="the run store (mpo demo's by default)"
    )
    dashboard.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 to reach it from outside)")
    dashboard.add_argument("--port", type=int, default=8265, help="HTTP port (0 picks a free one)")
    dashboard.set_defaults(handler=_cmd_dashboard)

    demo = commands.add_parser(
        "demo",
        help="the embedded online-MPO demo: tiny model, warm start, online rounds (about 20 min on 2 cores)",
        description="Build (or reuse) a task's prompts, a tiny model and its warm-started base policy in "
        "--workdir, then run online MPO rounds on a local Ray with all services, one table row per round. "
        "Unset options take the task's measured recipe (mpo/demo.py).",
    )
    demo.add_argument(
        "--task",
        choices=("arith", "shapes"),
        default="arith",
        help="arith (text, vLLM rollout) or shapes (questions about images: an image-text model, transformers rollout)",
    )
    demo.add_argument(
        "--workdir", type=Path, default=None, help="where everything is built and kept (mpo-demo, mpo-demo-shapes)"
    )
    demo.add_argument("--rounds", type=int, default=None, help="online rounds (arith 60, shapes 20)")
    demo.add_argument("--seed", type=int, default=0, help="seeds the rounds' prompts, sampling and training")
    demo.add_argument("--mode", choices=("sync", "async"), default="sync", help="round mode (rounds.mode)")
    demo.add_argument("--train-prompts", type=int, default=None, help="prompts the rounds draw from (5000)")
    demo.add_argument("--heldout-prompts", type=int, default=None, help="held-out prompts of every evaluation (2000)")
    demo.add_argument(
        "--bootstrap-steps", type=int, default=None, help="warm-start steps of the base policy (default: the recipe's)"
    )
    demo.set_defaults(handler=_cmd_demo)

    export = commands.add_parser(
        "export",
        help="turn a trainer checkpoint into a Hugging Face model directory",
        description="Merge a committed trainer checkpoint's ZeRO shards into a model directory that vLLM and "
        "transformers load.",
    )
    export.add_argument("--checkpoint", type=Path, required=True, help="a committed checkpoint directory")
    export.add_argument("--out", type=Path, required=True, help="model directory to write")
    export.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="dtype of the saved weights, cast from the merged fp32 ones (default: float32)",
    )
    export.add_argument(
        "--trust-remote-code", action="store_true", help="the base model ships its own code (only for models you trust)"
    )
    export.set_defaults(handler=_cmd_export)

    client = commands.add_parser("client", help="talk to a running service", description="Small gRPC clients.")
    calls = client.add_subparsers(dest="call", metavar="CALL", required=True)
    generate = calls.add_parser(
        "generate",
        help="sample answers to one question from a rollout service",
        description="Send one prompt to RolloutService.Generate (or GenerateStream) and print the JSON reply.",
    )
    generate.add_argument("--address", required=True, help="host:port of the rollout service")
    generate.add_argument("--question", required=True)
    generate.add_argument("--image", action="append", default=[], help="image file to attach; repeat")
    generate.add_argument("--task", default="arith", help="task name of the prompt (selects a verifier)")
    generate.add_argument("--n", type=int, default=1)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--top-k", type=int, default=0)
    generate.add_argument("--max-tokens", type=int, default=128)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--stop", action="append", default=[])
    generate.add_argument("--logprobs", action="store_true")
    generate.add_argument("--stream", action="store_true", help="print each streamed delta as a JSON line")
    generate.add_argument("--timeout", type=float, default=120.0, help="deadline in seconds")
    generate.add_argument(
        "--token-env", default="MPO_USER_TOKEN", help="environment variable holding the token (the user token)"
    )
    generate.add_argument(
        "--tls-root-cert",
        type=Path,
        help="PEM CA certificate (or the server's self-signed one) to dial a TLS endpoint with; unset: plaintext",
    )
    generate.set_defaults(handler=_cmd_client_generate)
    health = calls.add_parser(
        "health",
        help="exit 0 only when every given server's gRPC Health says SERVING (for exec probes)",
        description="Check the standard grpc.health.v1 Health service (no token needed) of each server, in "
        "plaintext: for a TLS server, its loopback_port. Prints one line per unhealthy server; exit 1 if any.",
    )
    health.add_argument("--address", action="append", required=True, help="host:port of a server; repeat")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds each server has to answer")
    health.add_argument(
        "--absent-ok",
        action="store_true",
        help="a port with nothing listening passes (liveness: restart only for a server that listens but "
        "does not answer SERVING)",
    )
    health.set_defaults(handler=_cmd_client_health)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
