"""`mpo serve rollout|reward|trainer` and `mpo client generate` as people run them: real subprocesses, real Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mpo.models.tiny import build_text_model
from tests.rollout_helpers import CORPUS, SMALL

pytestmark = pytest.mark.slow


def test_serve_and_client_commands(tmp_path: Path) -> None:
    model = build_text_model(tmp_path / "text", CORPUS, SMALL, seed=0)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mpo.cli", "serve", "rollout", "--model", str(model), "--backend", "transformers",
         "--port", "0", "--weights-dir", str(tmp_path / "w")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    try:
        assert server.stdout is not None
        ready = json.loads(server.stdout.readline())
        assert ready["event"] == "serving" and ready["backend"] == "transformers"
        result = subprocess.run(
            [sys.executable, "-m", "mpo.cli", "client", "generate", "--address", ready["address"],
             "--question", "What is 2 + 3?", "--n", "2", "--max-tokens", "6", "--temperature", "1.0"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        samples = json.loads(result.stdout)["samples"]
        assert [s["index"] for s in samples] == [0, 1] and all(
            int(s["policy_version"]) == 0 for s in samples
        )  # uint64: a JSON string
        bad = subprocess.run(
            [sys.executable, "-m", "mpo.cli", "client", "generate", "--address", ready["address"],
             "--question", "What is 2 + 3?", "--n", "2", "--temperature", "0"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert bad.returncode == 2 and "INVALID_ARGUMENT: sampling.n: must be 1 with greedy decoding" in bad.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0


def test_serve_reward_command(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "mpo.cli", "serve", "reward", "--port", "0", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert server.stdout is not None
        ready = json.loads(server.stdout.readline())
        assert (ready["event"], ready["service"], ready["workers"]) == ("serving", "reward", 1)
        probe = f"""
import asyncio
from mpo.serving.clients import RewardClient
from mpo.v1 import common_pb2
async def main():
    async with RewardClient("{ready["address"]}") as client:
        prompt = common_pb2.Prompt(id="a", question="What is 1 + 1?", task="arith", answer="2")
        sample = common_pb2.Sample(prompt_id="a", index=0, text="1 + 1 = 2. Final answer: 2")
        print((await client.score([prompt], [sample])).stats.correct)
asyncio.run(main())
"""
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False)
        assert result.stdout.strip() == "1", result.stderr[-2000:]
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0


def test_serve_trainer_command(tmp_path: Path) -> None:
    """From its section of a run config file (`--run-config`, how the Helm chart starts every service)."""
    model = build_text_model(tmp_path / "text", CORPUS, SMALL, seed=0)
    run_config = tmp_path / "run.yaml"
    run_config.write_text(f"model: {model}\ntrainer: {{world_size: 1, checkpoint_dir: {tmp_path / 'ckpt'}}}\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "mpo.cli", "serve", "trainer", "--run-config", str(run_config), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert server.stdout is not None
        ready = json.loads(server.stdout.readline())
        assert (ready["event"], ready["service"], ready["world_size"], ready["strategy"]) == (
            "serving", "trainer", 1, "zero3"
        )  # fmt: skip
        assert (tmp_path / "ckpt").is_dir(), "the run config's checkpoint_dir is used"
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=120) == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["rollout", "--run-config", "missing.yaml"], "missing.yaml: cannot read config"),
        (["rollout", "--run-config", "{empty}"], "rollout: missing (set `model`, or the `rollout` section)"),
        (["controller", "--start-run", "--rollout-address", "a:1", "--reward-address", "b:2",
          "--trainer-address", "c:3"], "--start-run: needs --run-config"),
        (["controller", "--start-run", "--run-config", "{empty}", "--rollout-address", "a:1",
          "--reward-address", "b:2", "--trainer-address", "c:3"], "run_id: required to start"),
    ],
    ids=["unreadable", "no-section", "start-without-config", "start-without-run-id"],
)  # fmt: skip
def test_serve_run_config_errors_name_the_problem(tmp_path: Path, arguments: list[str], message: str) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("rounds: {rounds: 2}\n")
    command = [sys.executable, "-m", "mpo.cli", "serve", *(a.replace("{empty}", str(empty)) for a in arguments)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
