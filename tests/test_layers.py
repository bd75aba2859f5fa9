"""The layers point one way: `mpo/` is the base, `services/` and `trainer/` build on it and never on
each other, and only the entry points (the CLI, the demo, the embedded one-machine run) compose them.

An AST walk over every module (imports inside functions included), so a lazy import cannot hide a
crossing. The table of import paths and folders lives in pyproject.toml; this reads it from there.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Modules of `mpo/` that wire the layers together; everything else in `mpo/` is the base layer.
ENTRY_POINTS = {"mpo.cli", "mpo.demo", "mpo.embedded", "mpo.run_command", "mpo.serve_command"}

#: Layer of a module -> the layers it must not import.
FORBIDDEN = {
    "base": {"services", "trainer"},
    "services": {"trainer"},
    "trainer": {"services"},
    "entry": set(),
}


def _package_dirs() -> dict[str, Path]:
    """Import path -> folder, as pyproject.toml maps them (one source of truth for the layout)."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {package: ROOT / folder for package, folder in setuptools["package-dir"].items()}


def _modules() -> dict[str, Path]:
    """Every module of the installed namespace, by import path, from the mapped folders."""
    found: dict[str, Path] = {}
    for package, folder in _package_dirs().items():
        for path in folder.rglob("*.py"):
            relative = path.relative_to(folder).with_suffix("")
            parts = [part for part in relative.parts if part != "__init__"]
            name = ".".join([package, *parts])
            # A folder mapped on its own (mpo.trainer -> trainer/) is not also a child of mpo/.
            if not any(
                name.startswith(other + ".") or name == other
                for other in _package_dirs()
                if other != package and other.startswith(package + ".")
            ):
                found[name] = path
    return found


def _layer(module: str) -> str:
    if module in ENTRY_POINTS:
        return "entry"
    if module == "mpo.services" or module.startswith("mpo.services."):
        return "services"
    if module == "mpo.trainer" or module.startswith("mpo.trainer."):
        return "trainer"
    return "base"


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    imported: list[tuple[int, str]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            imported += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                imported.append((node.lineno, ".".join([*base, node.module or ""]).rstrip(".")))
            elif node.module:
                imported.append((node.lineno, node.module))
    return imported


def crossings() -> list[str]:
    found = []
    for module, path in sorted(_modules().items()):
        forbidden = FORBIDDEN[_layer(module)]
        for line, name in _imports(path, module):
            if name.startswith("mpo.") and _layer(name) in forbidden:
                found.append(
                    f"{path.relative_to(ROOT)}:{line}: {module} ({_layer(module)}) imports {name} ({_layer(name)})"
                )
    return found


def test_no_layer_imports_across() -> None:
    assert crossings() == []


def test_the_check_sees_every_layer() -> None:
    """Guards the guard: each layer has modules, and the walk reads lazy imports inside functions."""
    layers = {_layer(module) for module in _modules()}
    assert layers == {"base", "services", "trainer", "entry"}
    cli = _imports(ROOT / "mpo" / "cli.py", "mpo.cli")
    assert any(name.startswith("mpo.services.") for _, name in cli)  # imported inside a function


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("mpo.evaluation", "def f():\n    from mpo.services.reward import service\n", "base"),
        ("mpo.services.reward.scorer", "import mpo.trainer.sft\n", "services"),
        ("mpo.trainer.batching", "from mpo.services.rollout import prompts\n", "trainer"),
    ],
)
def test_a_crossing_is_reported(tmp_path: Path, module: str, source: str, expected: str) -> None:
    path = tmp_path / "module.py"
    path.write_text(source)
    (name,) = [name for _, name in _imports(path, module)]
    assert _layer(name) in FORBIDDEN[expected]


def test_every_package_folder_is_installed() -> None:
    """A new folder with an __init__.py must be listed in pyproject.toml, or a wheel install misses it."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    packages = {module for module, path in _modules().items() if path.name == "__init__.py"}
    assert packages - listed == set()
