"""The `mpo` command line. Each subcommand lives in the module that owns its logic; this file only wires."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from mpo import __version__


def _cmd_info(args: argparse.Namespace) -> int:
    from mpo import info

    reports, gpu = info.collect()
    if args.json:
        payload = {
            "onlinempo": __version__,
            "packages": {r.name: {"version": r.version, "error": r.error} for r in reports},
            "gpu": gpu,
        }
        print(json.dumps(payload, indent=2))
    else:
        print(info.render(reports, gpu, __version__))
    required = [name.strip() for name in (args.require or "").split(",") if name.strip()]
    missing = [r.name for r in reports if r.name in required and not r.ok]
    unknown = sorted(set(required) - {r.name for r in reports})
    if unknown:
        print(f"error: --require names unknown packages: {', '.join(unknown)}", file=sys.stderr)
        return 2
    if missing:
        print(f"error: required packages failed to import: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _cmd_config_validate(args: argparse.Namespace) -> int:
    import yaml

    from mpo.config import ConfigError, load_config

    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"# {args.file}: valid; effective settings (defaults filled in):")
    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpo",
        description="OnlineMPO: online Mixed Preference Optimization (rollout → label → train → publish).",
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
