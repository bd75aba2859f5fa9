"""atomic_write: the target holds the old content or the new, whole, with the mode asked for."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from mpo.durable import atomic_write


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_bytes_land_whole_with_the_mode_and_no_temporary_left(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "er" / "pointer.json"
    atomic_write(target, b'{"version": 1}', mode=0o640)
    assert target.read_bytes() == b'{"version": 1}'
    assert _mode(target) == 0o640
    assert list(target.parent.iterdir()) == [target]


def test_replacing_takes_the_new_mode_too(tmp_path: Path) -> None:
    target = tmp_path / "helm"
    atomic_write(target, b"old")
    assert _mode(target) == 0o644
    atomic_write(target, b"new", mode=0o755)
    assert (target.read_bytes(), _mode(target)) == (b"new", 0o755)


def test_a_writer_gets_the_temporary_path_and_the_mode_survives_it_recreating_the_file(tmp_path: Path) -> None:
    target = tmp_path / "shard.parquet"

    def recreate(temporary: Path) -> None:
        assert temporary.parent == tmp_path and temporary != target and temporary.exists()
        temporary.unlink()  # as a writer that creates its own file would
        temporary.write_text("rows")

    atomic_write(target, recreate, mode=0o600)
    assert (target.read_text(), _mode(target)) == ("rows", 0o600)
    assert list(tmp_path.iterdir()) == [target]


def test_a_failed_write_leaves_the_old_content_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "prompts.jsonl"
    atomic_write(target, b"old\n")

    def half_then_fail(temporary: Path) -> None:
        temporary.write_text("new, half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old\n"
    assert list(tmp_path.iterdir()) == [target]
