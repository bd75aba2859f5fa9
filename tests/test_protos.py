"""The mpo.v1 contracts: buf lint, buf breaking against the released contract, and stub freshness.

buf comes from `npm ci` at the repository root (`bash deploy/install.sh dev` runs it); without it these tests
fail rather than skip, since CI must run them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
RELEASED = PROTOS / "released" / "mpo-v1.binpb"
BUF = ROOT / "node_modules" / ".bin" / "buf"


def run(*command: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


@pytest.fixture(scope="module")
def buf() -> Path:
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: run `npm ci` in {ROOT} (`bash deploy/install.sh dev` does)", pytrace=False)
    return BUF


def copy_protos(tmp_path: Path) -> Path:
    """A copy of protos/ (sources, generate.py, buf.yaml) that a test may break."""
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {path} exactly once"
    path.write_text(text.replace(old, new))


def test_buf_is_the_pinned_version(buf: Path) -> None:
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["@bufbuild/buf"]
    result = run(buf, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == pinned, f"node_modules has buf {result.stdout.strip()}, package.json pins {pinned}"


def test_buf_lint_passes(buf: Path) -> None:
    result = run(buf, "lint", PROTOS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_against_released_contract(buf: Path) -> None:
    result = run(buf, "breaking", PROTOS, "--against", RELEASED)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new"),
    [("  string task = 6;\n", ""), ("string task = 6;", "string task = 16;")],
    ids=["field-removed", "field-renumbered"],
)
def test_breaking_check_catches_a_changed_field(buf: Path, tmp_path: Path, old: str, new: str) -> None:
    copy = copy_protos(tmp_path)
    edit(copy / "mpo/v1/common.proto", old, new)
    result = run(buf, "breaking", copy, "--against", RELEASED, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert '"task"' in output and '"Prompt"' in output, output


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        ("common.proto", "message Image {", "message bad_name {}\n\nmessage Image {", "bad_name"),
        ("reward.proto", "  // Judge each sample against its prompt's ground truth.\n", "", '"Score"'),
        # A blank line detaches the comment: it no longer documents the service.
        ("trainer.proto", "\nservice TrainerService {", "\n\nservice TrainerService {", "TrainerService"),
    ],
    ids=["message-name", "rpc-comment", "service-comment"],
)
def test_lint_catches_violations(buf: Path, tmp_path: Path, file: str, old: str, new: str, expected: str) -> None:
    copy = copy_protos(tmp_path)
    edit(copy / "mpo/v1" / file, old, new)
    result = run(buf, "lint", copy, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert expected in output, output


def test_every_service_and_rpc_has_a_leading_comment() -> None:
    """Also enforced by buf lint (COMMENT_SERVICE, COMMENT_RPC); this reads the sources without buf."""
    missing = []
    for proto in sorted((PROTOS / "mpo/v1").glob("*.proto")):
        lines = proto.read_text().splitlines()
        for number, line in enumerate(lines):
            commented = number > 0 and lines[number - 1].strip().startswith("//")
            if re.match(r"\s*(service|rpc)\s", line) and not commented:
                missing.append(f"{proto.relative_to(PROTOS)}:{number + 1}: {line.strip()}")
    assert not missing, "no // comment directly above:\n" + "\n".join(missing)


def test_generated_stubs_are_fresh() -> None:
    result = run(sys.executable, PROTOS / "generate.py", "--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_stub_freshness_check_catches_a_changed_proto(tmp_path: Path) -> None:
    copy = copy_protos(tmp_path)
    edit(copy / "mpo/v1/common.proto", "  string task = 6;\n", "  string task = 6;\n  string note = 99;\n")
    result = run(sys.executable, copy / "generate.py", "--check", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "common_pb2.py" in result.stdout, result.stdout
    assert "controller_pb2.py" not in result.stdout, result.stdout
