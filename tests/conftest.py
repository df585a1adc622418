"""Shared test fixtures: rendering blueprints in memory and the tier skip rules.

A tier skips only when its tool is missing, and says why. Under CI (CI=true), where .ci/run
installs every tool, a missing tool fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
# Test infrastructure is imported as `infra.<module>` (tests/infra is a package).
if str(REPO / "tests") not in sys.path:
    sys.path.insert(0, str(REPO / "tests"))
BLUEPRINTS = REPO / "blueprints"
EXAMPLES = sorted(p.name for p in BLUEPRINTS.glob("*.yml") if not p.name.endswith(".secrets.yml"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite golden files from the current output (review the diff!)",
    )


# Vanilla first boots (cloud-init installing every package under TCG) repeat the bakes' work
# and do not fit CI's budget next to them: they run only when asked for.
VANILLA_ENV = "OWUIBUILD_BOOT_VANILLA"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(VANILLA_ENV) == "1":
        return
    vanilla = [item for item in items if item.get_closest_marker("vanilla")]
    if vanilla:
        config.hook.pytest_deselected(items=vanilla)
        items[:] = [item for item in items if not item.get_closest_marker("vanilla")]
        config.stash[_DESELECTED] = len(vanilla)


_DESELECTED = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    count = terminalreporter.config.stash.get(_DESELECTED, 0)
    if count:
        terminalreporter.write_line(
            f"{count} vanilla boot test(s) not run: they boot from the plain base image "
            f"(set {VANILLA_ENV}=1, or run make bench-boot)"
        )


def unavailable(reason: str) -> NoReturn:
    """Skip because a tool is missing; under CI that is a failure, since CI installs it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)


def require_tool(*names: str) -> None:
    for name in names:
        if shutil.which(name) is None:
            unavailable(f"{name} is not installed (make system-deps installs it)")


@dataclass
class Rendered:
    plan: object
    secrets: object
    files: dict[str, bytes]
    secret_paths: frozenset[str]
    blueprint: Path

    def text(self, path: str) -> str:
        return self.files[path].decode()

    def user_data(self, host: str) -> Any:
        """A host's cloud-config, unzipped where the render gzipped it (a large seed)."""
        from owuibuild.targets.hosts import unpack_user_data

        return yaml.safe_load(unpack_user_data(self.files[f"hosts/{host}/user-data"]))


def compile_path(path: Path) -> Rendered:
    from owuibuild.pipeline import compile_blueprint

    compiled = compile_blueprint(path)
    assert compiled.ok, [d.as_dict() for d in compiled.diagnostics]
    return Rendered(
        plan=compiled.plan,
        secrets=compiled.secrets,
        files={a.path: a.data for a in compiled.artifacts},
        secret_paths=frozenset(a.path for a in compiled.artifacts if a.secret),
        blueprint=path,
    )


@pytest.fixture
def render_text(tmp_path: Path) -> Callable[[str], Rendered]:
    """Render blueprint YAML text (in a temp dir, with fresh secrets) and return the files."""
    counter = iter(range(1000))

    def render(text: str) -> Rendered:
        path = tmp_path / f"bp{next(counter)}.yml"
        path.write_text(text)
        return compile_path(path)

    return render


@pytest.fixture
def render_example(tmp_path: Path) -> Callable[[str], Rendered]:
    """Render one of blueprints/*.yml by file name (copied to a temp dir, fresh secrets)."""

    def render(name: str) -> Rendered:
        path = tmp_path / name
        shutil.copy(BLUEPRINTS / name, path)
        return compile_path(path)

    return render
