"""Where a config comes from besides one YAML file: a run config's section for one service, a service's
own YAML and flags on top of it (`mpo serve`), a stored run's config with `--set` items (`mpo run --resume`).

Each source is merged in one place, so the Helm chart's pods, `mpo serve` and `mpo run` read the same
config the same way; every problem comes out as a `ConfigError` that names the source and the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from mpo.config import ConfigError, RunConfig, format_validation_error, load_config, run_config
from mpo.overrides import parse_overrides

Model = TypeVar("Model", bound=BaseModel)


def run_config_section(path: Path, service: str) -> dict[str, object]:
    """The `service` section of a run config file (model filled in), as a `mpo serve` config: how every
    process of the Helm chart reads the one ConfigMap. The controller also takes the store's directories."""
    run = load_config(path)
    section = getattr(run, service)
    if section is None:
        raise ConfigError(f"{path}: {service}: missing (set `model`, or the `{service}` section)")
    raw: dict[str, object] = section.model_dump(mode="json")
    if service == "controller":
        raw["store_dir"] = str(run.store_dir)
        if run.pairs_dir is not None:
            raw["pairs_dir"] = str(run.pairs_dir)
    return raw


def service_config(
    config_class: type[Model],
    service: str,
    *,
    run_config_file: Path | None,
    config_file: Path | None,
    fields: Mapping[str, object],
    host: str | None,
    port: int | None,
) -> Model:
    """A service's config from, lowest first: its run config section, its own YAML file, the flags (`fields`
    and the server's `host` and `port`); flags left unset (None) keep what the files say."""
    raw = run_config_section(run_config_file, service) if run_config_file else {}
    if config_file:
        raw.update(yaml.safe_load(config_file.read_text()) or {})
    raw.update({key: value for key, value in fields.items() if value is not None})
    server = dict(raw.get("server") or {})
    server.update({key: value for key, value in {"host": host, "port": port}.items() if value is not None})
    raw["server"] = server
    try:
        return config_class.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"invalid {service} config\n{format_validation_error(exc)}") from exc


def command_overrides(items: Iterable[str], *, rounds: int | None) -> dict[str, Any]:
    """`--set KEY=VALUE` items, with `--rounds N` as its short form of `rounds.rounds` (raises OverrideError)."""
    overrides = parse_overrides(items)
    if rounds is not None:
        overrides["rounds.rounds"] = rounds
    return overrides


def stored_run_config(config_yaml: str, run_id: str, overrides: Mapping[str, Any]) -> RunConfig:
    """A stored run's config rebuilt under its own run id, with `overrides` applied (a resumed run may be
    extended or changed); errors name the stored run."""
    raw = {**yaml.safe_load(config_yaml), "run_id": run_id}
    return run_config(raw, source=f"stored run {run_id!r}", overrides=overrides)
