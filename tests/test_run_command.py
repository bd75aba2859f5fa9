"""`mpo run` as people run it: a real subprocess with a local Ray and all three services, then `--resume`."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
import yaml

from mpo.data.loader import write_prompts_jsonl
from mpo.services.controller.store import RunStore
from mpo.v1 import controller_pb2
from tests.controller_helpers import sums

pytestmark = pytest.mark.slow


def mpo_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mpo.cli", "run", *args], capture_output=True, text=True, timeout=900, check=False
    )


def write_config(tmp_path: Path, policy: Path, run_id: str = "cli-run", **sections: object) -> Path:
    write_prompts_jsonl(sums(24, 100), tmp_path / "train.jsonl")
    write_prompts_jsonl(sums(8, 900), tmp_path / "heldout.jsonl")
    config = {
        "run_id": run_id,
        "model": str(policy),
        "data": {"train": str(tmp_path / "train.jsonl"), "heldout": str(tmp_path / "heldout.jsonl")},
        "store_dir": str(tmp_path / "store"),
        "rounds": {"rounds": 1, "prompts_per_round": 6, "samples_per_prompt": 4, "max_tokens": 24, "eval_prompts": 8},
        "rollout": {
            "backend": "vllm", "dtype": "float32", "enforce_eager": True, "max_model_len": 256,
            "kv_cache_bytes": 16 * 2**20, "weights_dir": str(tmp_path / "ledger"),
        },
        "trainer": {
            "world_size": 2, "learning_rate": 1e-3, "warmup_steps": 0, "global_batch_pairs": 16,
            "micro_batch_pairs": 4, "checkpoint_dir": str(tmp_path / "checkpoints"),
        },
    } | sections  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_kill_9_of_mpo_run_mid_round_then_resume_loses_and_repeats_nothing(sums_policy: Path, tmp_path: Path) -> None:
    """The whole process tree dies (controller, services, Ray); `--resume` starts them again: the trainer
    from its last checkpoint, the rollout service from its weight ledger, the run from its store. The
    resumed run is also extended by one round (`--rounds`)."""
    config = write_config(
        tmp_path, sums_policy, run_id="killed", rounds={"rounds": 2, "prompts_per_round": 6, "samples_per_prompt": 4,
                                                    "max_tokens": 24, "eval_every": 0},
    )  # fmt: skip
    store = RunStore(tmp_path / "store")
    process = subprocess.Popen([sys.executable, "-m", "mpo.cli", "run", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while store.last_committed_round("killed") < 2:  # round 2 committed: it is training now
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before the kill"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
    killed = store.get_run("killed")
    assert killed is not None and killed.state == controller_pb2.RUN_STATE_RUNNING and killed.current_round >= 1

    resumed = mpo_run("--resume", "killed", "--store-dir", str(tmp_path / "store"), "--rounds", "3")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = resumed.stdout.strip().splitlines()
    assert [line[:9] for line in lines[-3:-1]] == ["round   2", "round   3"]
    finished = json.loads(lines[-1])
    assert finished == {"event": "finished", "run_id": "killed", "rounds": 2, "pairs": finished["pairs"]}

    run = store.get_run("killed")
    assert run is not None and run.state == controller_pb2.RUN_STATE_COMPLETED and run.current_round == 3
    assert [r.round for r in store.round_records("killed")] == [1, 2, 3]
    pairs = [len(store.committed_pairs("killed", r)) for r in (1, 2, 3)]
    assert store.pair_count("killed") == sum(pairs) and len(store.pair_staleness("killed")) == sum(pairs)
    shards = sorted(Path(finished["pairs"]).glob("*.parquet"))
    assert [s.name for s in shards] == [f"round-00000{r}.parquet" for r in (1, 2, 3)]
    assert [pq.read_metadata(s).num_rows for s in shards] == pairs  # a round may have no pairs
    assert len(datasets.load_dataset("parquet", data_files=[str(s) for s in shards], split="train")) == sum(pairs)
    checkpoints = tmp_path / "checkpoints"
    trainer = json.loads((checkpoints / (checkpoints / "LATEST").read_text() / "trainer.json").read_text())
    assert trainer["step"] == sum(math.ceil(n / 16) for n in pairs), "no pair trained twice, none lost"
    assert len(trainer["trained_pair_ids"]) == sum(pairs)
    ledger = json.loads((tmp_path / "ledger" / "current.json").read_text())
    assert ledger["version"] == run.policy_version, "trainer and rollout end on the same policy version"


def test_bad_run_configs_name_the_field(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    missing.write_text("rounds: {rounds: 1}\n")
    result = mpo_run("--config", str(missing))
    assert result.returncode == 2 and "model: required" in result.stderr
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(f"model: {tmp_path}\nrounds: {{samples_per_prompt: 0}}\ntrainer: {{world_size: -1}}\n")
    result = mpo_run("--config", str(wrong))
    assert result.returncode == 2
    assert "rounds.samples_per_prompt" in result.stderr and "trainer.world_size" in result.stderr
    # Limits that disagree across services: one error naming both fields, and the `--set` item behind it.
    disagreeing = tmp_path / "disagreeing.yaml"
    disagreeing.write_text(f"model: {tmp_path}\nrollout: {{max_model_len: 4096}}\n")
    result = mpo_run("--config", str(disagreeing), "--set", "rounds.max_tokens=4096", "--set", "rounds.epochs=2")
    assert result.returncode == 2 and "limits across services disagree:" in result.stderr
    assert "    trainer.max_length (2048) is below rollout.max_model_len (4096)" in result.stderr
    assert (
        "    rounds.max_tokens (4096) exceeds rollout.server.limits.max_tokens (2048) (--set rounds.max_tokens)\n"
        in result.stderr
    )
    result = mpo_run("--config", str(disagreeing), "--set", "rounds.max_tokens")
    assert result.returncode == 2 and "error: --set 'rounds.max_tokens': expected KEY=VALUE" in result.stderr
    result = mpo_run("--config", str(wrong), "--set", "rounds.samples_per_prompt=4", "--set", "rounds.top_k=x")
    assert result.returncode == 2 and "rounds.samples_per_prompt" not in result.stderr
    assert (
        "  rounds.top_k: Input should be a valid integer, unable to parse string as an integer (--set rounds.top_k)"
        in result.stderr
    )
    # A stored run's config takes `--set` too.
    stored = controller_pb2.Run(run_id="stored", config_yaml=yaml.safe_dump({"model": str(tmp_path)}))
    RunStore(tmp_path / "store").put_run(stored)
    result = mpo_run("--resume", "stored", "--store-dir", str(tmp_path / "store"), "--rounds", "3",
                     "--set", "rollout.max_model_len=96")  # fmt: skip
    assert result.returncode == 2 and "error: stored run 'stored': invalid config" in result.stderr
    assert (
        "    rounds.max_tokens (96) leaves no room for a prompt within rollout.max_model_len (96) "
        "(--set rollout.max_model_len)" in result.stderr
    )
    assert mpo_run("--resume", "nope", "--store-dir", str(tmp_path / "store")).stderr.startswith("error: no run 'nope'")
    bad_rows = tmp_path / "bad-rows.jsonl"
    bad_rows.write_text('{"id": "a", "question": "What is 1 + 1?", "answer": "2", "task": "arith"}\n{"id": "b"}\n')
    config = {"model": str(tmp_path), "data": {"train": str(bad_rows), "heldout": str(bad_rows)}}
    (tmp_path / "bad-rows.yaml").write_text(yaml.safe_dump(config))
    result = mpo_run("--config", str(tmp_path / "bad-rows.yaml"))
    assert result.returncode == 2 and f"{bad_rows}:2: question: missing required field" in result.stderr
