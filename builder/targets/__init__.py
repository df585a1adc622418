"""Targets: pure functions from the plan (and the secrets) to files.

Every module in this package that defines ``render(plan, secrets) -> Iterable[Artifact]`` is a
target; adding an output means adding a module here and nothing else. Targets do no I/O, read
no clock and use no randomness, and they never derive values themselves: they ask the plan.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..plan import Plan
    from ..secrets import Secrets


@dataclass(frozen=True)
class Artifact:
    """One output file, by its path relative to the output directory."""

    path: str
    data: bytes
    secret: bool = False  # holds secret values: written with mode 0600

    @property
    def mode(self) -> int:
        return 0o600 if self.secret else 0o644


Target = Callable[["Plan", "Secrets"], Iterable[Artifact]]


def discover() -> list[tuple[str, Target]]:
    """Every target module of this package, by name, in a stable order."""
    found: list[tuple[str, Target]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        render = getattr(module, "render", None)
        if callable(render):
            found.append((info.name, render))
    return found


def render_all(plan: Plan, secrets: Secrets) -> list[Artifact]:
    """All artifacts of all targets, sorted by path; a path may be produced only once."""
    by_path: dict[str, Artifact] = {}
    for name, target in discover():
        for artifact in target(plan, secrets):
            if artifact.path in by_path:
                raise ValueError(f"target {name} writes {artifact.path} twice")
            by_path[artifact.path] = artifact
    return [by_path[p] for p in sorted(by_path)]
