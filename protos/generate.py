"""Generate the Python stubs of the `mpo.v1` contracts — the only way they are made.

    python protos/generate.py          # rewrite protos/mpo/v1/*_pb2*.py(i)
    python protos/generate.py --check  # exit 1 if the checked-in stubs differ from a fresh generation

Uses grpcio-tools' bundled protoc (pinned in pyproject.toml, so output is reproducible) with
protoc's own `.pyi` output for messages and mypy-protobuf's plugin for the service stubs' types.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
PACKAGE_DIR = PROTO_ROOT / "mpo" / "v1"
GENERATED_GLOBS = ("*_pb2.py", "*_pb2.pyi", "*_pb2_grpc.py", "*_pb2_grpc.pyi")


def generate(out_dir: Path) -> None:
    plugin = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    if not plugin.exists():
        raise SystemExit(f"missing {plugin}: install the dev extra (mypy-protobuf)")
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PACKAGE_DIR.glob("*.proto"))
    command = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--plugin=protoc-gen-mypy_grpc={plugin}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    subprocess.run(command, check=True, cwd=PROTO_ROOT)


def generated_files(root: Path) -> set[str]:
    package = root / "mpo" / "v1"
    return {p.name for pattern in GENERATED_GLOBS for p in package.glob(pattern)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with a fresh generation; change nothing")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        fresh_root = Path(tmp)
        generate(fresh_root)
        fresh, current = generated_files(fresh_root), generated_files(PROTO_ROOT)
        if args.check:
            stale = sorted(
                name
                for name in fresh | current
                if name not in fresh
                or name not in current
                or not filecmp.cmp(fresh_root / "mpo/v1" / name, PACKAGE_DIR / name, shallow=False)
            )
            if stale:
                print("stale generated stubs (run `python protos/generate.py`):", *stale, sep="\n  ")
                return 1
            print(f"stubs are fresh ({len(fresh)} files)")
            return 0
        for name in current - fresh:
            (PACKAGE_DIR / name).unlink()
        for name in sorted(fresh):
            shutil.copyfile(fresh_root / "mpo/v1" / name, PACKAGE_DIR / name)
        print(f"wrote {len(fresh)} files to {PACKAGE_DIR.relative_to(PROTO_ROOT.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
