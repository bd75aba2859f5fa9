"""Starting a run on a controller and following it: `mpo run` (everything on this machine) and
`mpo serve controller --start-run` (the Helm chart's controller pod starts the run it was deployed for).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from mpo.config import ConfigError, RunConfig, load_config
from mpo.config_sources import command_overrides, stored_run_config
from mpo.data.loader import DataError
from mpo.embedded import RunConfigError, round_line, run_embedded
from mpo.overrides import OverrideError
from mpo.services.controller.retry import ATTEMPT_DEADLINE_S
from mpo.services.controller.runs import LIVE_STATES
from mpo.services.controller.store import RunStore
from mpo.serving.auth import Credentials
from mpo.serving.clients import ControllerClient

#: What `mpo run` reports as a run that cannot start (one `error:` line, exit 2), not as a crash.
RUN_ERRORS = (ConfigError, OverrideError, RunConfigError, DataError)


class StartRunError(RuntimeError):
    """`--start-run` could not start (or continue) its run; the controller is stopped (exit 1)."""


def load_run_config(
    config: Path | None, *, resume: str | None, store_dir: Path, overrides: Sequence[str], rounds: int | None
) -> RunConfig:
    """`mpo run`'s config: the file, or the stored config of the run to `resume`, with `--set` and `--rounds`."""
    changes = command_overrides(overrides, rounds=rounds)
    if not resume:
        assert config is not None  # argparse: --config or --resume
        return load_config(config, changes)
    stored = RunStore(store_dir).get_run(resume)
    if stored is None:
        raise ConfigError(f"no run {resume!r} in {store_dir}")
    return stored_run_config(stored.config_yaml, resume, changes)


async def run_here(config: RunConfig, *, say: Callable[[str], None]) -> dict[str, Any]:
    """Run (or resume) `config` on a local Ray, saying one line per round and the dashboard's address;
    returns the closing `finished` event (rounds run by this invocation, the pairs' folder)."""
    run_id, records = await run_embedded(
        config, on_round=lambda record: say(round_line(record)), on_dashboard=lambda url: say(f"dashboard: {url}")
    )
    pairs = RunStore(config.store_dir, pairs_dir=config.pairs_dir).pairs_folder(run_id)
    return {"event": "finished", "run_id": run_id, "rounds": len(records), "pairs": str(pairs)}


def start_run_once_serving(start: Callable[[Any], Awaitable[Any]], run_config: Path) -> Callable[[Any], Awaitable[Any]]:
    """`start` (serve_controller) followed by: start the run of the run config, or continue it when the
    store has it (a restarted pod), under that config; another run left running (the deployment named a
    new run) is stopped first. A run that cannot start stops the controller with its error."""
    run_id = load_config(run_config).run_id
    if run_id is None:
        raise StartRunError(f"--start-run: {run_config}: run_id: required to start (or continue) the run")

    async def start_and_run(config: Any) -> Any:
        running = await start(config)
        token = Credentials.from_env(config.server.auth).control
        # A TLS server is dialled on its plaintext loopback port (this process holds no CA to verify it).
        loopback = config.server.loopback_port
        address = f"127.0.0.1:{loopback}" if loopback else running.address
        try:
            async with ControllerClient(address, token=token, timeout=120) as client:
                for other in await client.list_runs():
                    if other.run_id != run_id and other.state in LIVE_STATES:
                        print(f"stopping run {other.run_id!r}: this deployment now drives {run_id!r}", file=sys.stderr)
                        await client.stop_run(other.run_id, timeout=ATTEMPT_DEADLINE_S)  # its round ends first
                run = await client.start_run(run_config.read_text(), run_id=run_id)
        except grpc.aio.AioRpcError as error:
            await running.stop(0)
            raise StartRunError(f"StartRun {run_id!r}: {error.code().name}: {error.details()}") from error
        print(json.dumps({"event": "run", "run_id": run.run_id, "round": run.current_round}), flush=True)
        return running

    return start_and_run
