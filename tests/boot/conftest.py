"""Boot-tier fixtures: the local artifact mirror of test doubles, the Open WebUI test double's
image, and the two-VM fleet's golden images.

``mirror``
    A session-wide :class:`doubles.mirror.Mirror` serving release-shaped tarballs of the
    Ollama and Qdrant TEST DOUBLES on 127.0.0.1 (guests reach it at 10.0.2.2:<port>).

``openwebui_standin(mirror)``
    The Open WebUI TEST DOUBLE's image (tests/doubles/openwebui_standin.py) as a ``docker save``
    archive on the mirror, for hosts that load it from there (openwebui.archive_sha256); the
    fixture's value is its sha256.

``baked_shared``, ``baked_instance_host``
    The golden images of the two-VM Debian 13 fleet (fleet_blueprint.fleet_text), baked by the
    real ``owuibuild bake`` with Packer's qemu builder (TCG) and cached (tests/boot/golden.py,
    which .ci/run's prewarm also runs ahead of the tests).
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parents[1]
for extra in (TESTS, TESTS / "infra"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import golden  # noqa: E402
from doubles.mirror import Mirror  # noqa: E402
from fleet_blueprint import FLEET_SUITE, fleet_text  # noqa: E402


def _root_conftest() -> ModuleType:
    """tests/conftest.py under a name of its own: pytest keeps only the conftest it imported
    last as the module ``conftest``, so test modules that ``from conftest import ...`` may get
    this file; it re-exports the root's helpers for them."""
    spec = importlib.util.spec_from_file_location("owuibuild_tests_conftest", TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_root = _root_conftest()
unavailable = _root.unavailable
require_tool = _root.require_tool
Rendered = _root.Rendered
compile_path = _root.compile_path
REPO, BLUEPRINTS, EXAMPLES = _root.REPO, _root.BLUEPRINTS, _root.EXAMPLES


@pytest.fixture(scope="session")
def mirror() -> Iterator[Mirror]:
    with golden.start_mirror() as m:
        yield m


@pytest.fixture(scope="session")
def openwebui_standin(mirror: Mirror) -> str:
    """The Open WebUI test double's archive, served by the mirror; its sha256."""
    from docker_engine import docker_unavailable_reason

    reason = docker_unavailable_reason()
    if reason:
        unavailable(f"building the Open WebUI test double needs Docker: {reason}")
    return golden.serve_standin(mirror)


def bake_fleet_image(mirror: Mirror, archive_sha256: str, image: str) -> golden.BakedImage:
    missing = golden.missing_bake_tools()
    if missing:
        unavailable(f"baking needs {', '.join(missing)} (make system-deps installs them)")
    try:
        return golden.bake(mirror, image, fleet_text(mirror, archive_sha256), FLEET_SUITE)
    except golden.BakeFailed as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def baked_shared(mirror: Mirror, openwebui_standin: str) -> golden.BakedImage:
    """The two-VM fleet's shared golden image (Debian 13)."""
    return bake_fleet_image(mirror, openwebui_standin, "shared")


@pytest.fixture(scope="session")
def baked_instance_host(mirror: Mirror, openwebui_standin: str) -> golden.BakedImage:
    """The two-VM fleet's instance-host golden image (Debian 13), Open WebUI's image loaded."""
    return bake_fleet_image(mirror, openwebui_standin, "instance-host")


@pytest.fixture(scope="module")
def fleet(mirror: Mirror, openwebui_standin: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The two-VM Debian 13 fleet (fleet_vm.Fleet), rendered by the real CLI with a fresh admin
    key: one per module that boots it."""
    from fleet_vm import render
    from infra.vm import missing_tools

    missing = missing_tools(extra=["mmdebstrap"])
    if missing:
        unavailable(f"the boot tier needs {', '.join(missing)} (make system-deps installs them)")
    return render(tmp_path_factory.mktemp("fleet"), mirror, openwebui_standin)
