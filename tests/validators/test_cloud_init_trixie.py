"""Validators tier: Debian 13's own cloud-init (25.1) accepts the user-data of every debian-13
example, strictly, and no top-level key is unknown to it.

cloud-init runs with Debian 13's python3 inside a trixie root filesystem that
tests/infra/trixie-tools.sh builds with mmdebstrap (cached by its recipe; the same tree gives
the services tier its PostgreSQL 17), entered with chroot. The documents go in on stdin, so
the cached tree is never written to. Strict mode in 25.1 raises on deprecated keys too (a
booted host would log them as warnings), so those count as problems here.

Which user-data is checked follows the examples' os.distro (see cloud_init_schema.examples_on);
debian-12 keeps its cloud-init 22.4 check in test_shared_host.py and test_docker_host.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cloud_init_schema import examples_on, run_check, user_data_texts
from conftest import Rendered, unavailable
from infra.trixie_tools import trixie_tools, unavailable_reason

pytestmark = pytest.mark.validators

DISTRO = "debian-13"
CLOUD_INIT_SERIES = "25.1."


@pytest.fixture(scope="module")
def trixie_root() -> Path:
    reason = unavailable_reason()
    if reason:
        unavailable(reason)
    return Path(trixie_tools()["OWUIBUILD_TRIXIE_ROOT"])


def trixie_problems(root: Path, documents: dict[str, str]) -> dict[str, list[str]]:
    version, problems = run_check(["chroot", str(root), "/usr/bin/python3"], documents)
    assert version.startswith(CLOUD_INIT_SERIES), version
    return problems


def test_user_data_passes_trixie_cloud_init_schema_strictly(
    trixie_root: Path, render_example: Callable[[str], Rendered], tmp_path: Path
) -> None:
    how, cases = examples_on(DISTRO, render_example, tmp_path)
    documents = {
        f"{case}:{host}": text
        for case, rendered in cases.items()
        for host, text in user_data_texts(rendered)
    }
    assert cases, how
    assert len(documents) >= len(cases), how
    assert trixie_problems(trixie_root, documents) == {name: [] for name in documents}, how


def test_the_trixie_check_catches_unknown_keys_bad_values_and_deprecations(
    trixie_root: Path,
) -> None:
    """The checker itself: an unknown top-level key, a schema error and a key deprecated in
    25.1 (``apt_update``, replaced by ``package_update``) are each reported."""
    bad = "#cloud-config\nno_such_module: 1\nruncmd: 5\napt_update: true\n"
    problems = trixie_problems(trixie_root, {"bad": bad})["bad"]
    assert "unknown top-level key: no_such_module" in problems
    assert any(p.startswith("runcmd:") for p in problems), problems
    assert any(p.startswith("deprecated: apt_update") for p in problems), problems
