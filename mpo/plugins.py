"""Plug-in verifiers: users' own callables named in the run config (`reward.verifiers`), imported wherever
responses are judged — the config check, every labelling worker and held-out evaluation.

A spec is "package.module:callable" (imported by name, so the module must be importable there) or
"/path/to/file.py:callable" (loaded from the file itself, so workers on the same machine need no PYTHONPATH;
a relative path is made absolute against the working directory when the config is checked). The callable
part may be dotted ("module:judge.check", a method of an object). The callable takes (response, record):
the whole response text and the prompt's `mpo.data.records.PromptRecord` (no images), and returns a bool or
a score in [0, 1].
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import numbers
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

from pydantic import AfterValidator

#: (response, record) -> bool | score in [0, 1]; the record is a `PromptRecord`.
VerifierFn = Callable[[str, Any], object]

_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")
_FORMS = "'package.module:callable' or '/path/to/file.py:callable'"
#: Longest part of a returned value quoted in an error (errors travel in a size-limited gRPC trailer).
_QUOTED_CHARS = 60


def _is_path(module: str) -> bool:
    return "/" in module or module.endswith(".py")


def plugin_file(spec: str) -> Path | None:
    """The file a path-form spec loads code from (as given, not resolved); None for a module-form spec."""
    module = spec.strip().rpartition(":")[0]
    return Path(module).expanduser() if _is_path(module) else None


def normalise_spec(spec: str) -> str:
    """`spec` with a path made absolute; ValueError naming the expected forms when it is neither."""
    module, colon, attribute = spec.strip().rpartition(":")
    if not colon or not module or not _DOTTED.fullmatch(attribute):
        raise ValueError(f"{spec!r} is not {_FORMS}")
    if _is_path(module):
        return f"{Path(module).expanduser().resolve()}:{attribute}"
    if not _DOTTED.fullmatch(module):
        raise ValueError(f"{spec!r}: {module!r} is neither a module name nor a path to a .py file ({_FORMS})")
    return f"{module}:{attribute}"


def _load_file(path: Path) -> ModuleType:
    """The module executed from `path`, once per process (registered under a name derived from the path, so
    two files called verifiers.py do not collide)."""
    stem = re.sub(r"\W", "_", path.stem)
    name = f"mpo_plugin_{stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python source file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before executing, as importlib does (dataclasses and pickle look it up)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def _import(module: str) -> ModuleType:
    if _is_path(module) and not Path(module).is_file():
        raise ValueError(f"no such file: {module}")
    try:
        return _load_file(Path(module)) if _is_path(module) else importlib.import_module(module)
    except Exception as exc:  # the user's module may raise anything while it is executed
        raise ValueError(f"cannot import {module!r}: {type(exc).__name__}: {exc}") from exc


def load_verifier(spec: str) -> VerifierFn:
    """The callable `spec` names, checked to be callable as (response, record); ValueError otherwise."""
    module_name, _, attribute = normalise_spec(spec).rpartition(":")
    target: Any = _import(module_name)
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"{module_name!r} has no attribute {attribute!r}") from None
    if not callable(target):
        raise ValueError(f"{attribute!r} in {module_name!r} is not callable (a {type(target).__name__!r})")
    if inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(type(target).__call__):
        raise ValueError(f"{attribute!r} is async; a verifier is a plain function returning its verdict")
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        raise ValueError(f"cannot read the signature of {attribute!r}; wrap it in a def") from None
    try:
        signature.bind("response", None)
    except TypeError:
        raise ValueError(f"{attribute!r} must take (response, record); its signature is {signature}") from None
    return target


def check_verifier_spec(spec: str) -> str:
    """Config-time check of one `reward.verifiers` entry: the normalised spec, once its callable loads."""
    spec = normalise_spec(spec)
    load_verifier(spec)
    return spec


#: A `reward.verifiers` value: validated (and its path made absolute) when the config is.
VerifierSpec = Annotated[str, AfterValidator(check_verifier_spec)]


def import_roots(specs: Iterable[str]) -> list[str]:
    """The sys.path entries this process found the module-form plug-ins under, for labelling workers whose
    own sys.path lacks them (a module found through a path added at run time, not through PYTHONPATH)."""
    roots: list[str] = []
    for spec in specs:
        module_name = spec.rpartition(":")[0]
        top = sys.modules.get(module_name.split(".")[0])
        if _is_path(module_name) or top is None:
            continue
        locations = list(getattr(top, "__path__", None) or [top.__file__ or ""])
        for location in filter(None, locations):
            root = str(Path(location).parent)
            if root not in roots:
                roots.append(root)
    return roots


def as_score(value: object) -> float:
    """A verifier's return value as a score: a bool (numpy's too) is 0 or 1; a real number must lie in [0, 1].
    ValueError for anything else, quoting what came back."""
    numpy = sys.modules.get("numpy")  # a numpy bool can only come back where numpy is already imported
    if isinstance(value, bool) or (numpy is not None and isinstance(value, numpy.bool_)):
        return 1.0 if value else 0.0
    if isinstance(value, numbers.Real) and math.isfinite(value) and 0 <= value <= 1:
        return float(value)
    shown = repr(value)
    if len(shown) > _QUOTED_CHARS:
        shown = shown[:_QUOTED_CHARS] + "…"
    raise ValueError(f"returned {shown} ({type(value).__name__}); a verifier returns a bool or a number in [0, 1]")
