"""Validators tier: Debian 13's own cloud-init (25.1) accepts the user-data of every debian-13
example, strictly, and no top-level key is unknown to it.

cloud-init runs with Debian 13's python3 inside a trixie root filesystem that
tests/infra/trixie-tools.sh builds with mmdebstrap (cached by its recipe; the same tree gives
the services tier its PostgreSQL 17), entered with chroot. The documents go in on stdin, so
the cached tree is never written to. Strict mode in 25.1 raises on deprecated keys too (a
booted host would log them as warnings), so those count as problems here.

Which user-data is checked follows the examples: every example whose ``os.distro`` is
debian-13. While no example is (before the release table lands), a debian-13 variant of each
example is rendered if the blueprint schema accepts that distro, and otherwise the examples
as they are (their user-data is what a trixie host would get today). debian-12 examples keep
their cloud-init 22.4 check in test_shared_host.py and test_docker_host.py.
"""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from conftest import BLUEPRINTS, EXAMPLES, Rendered, compile_path, unavailable
from infra.trixie_tools import trixie_tools, unavailable_reason

pytestmark = pytest.mark.validators

DISTRO = "debian-13"
CLOUD_INIT_SERIES = "25.1."

# Run by trixie's python3. Reads {name: user-data text} on stdin, prints the cloud-init
# version and {name: [problem, ...]}.
CLOUD_INIT_CHECK = r"""
import json, sys, yaml
import cloudinit.version
from cloudinit.config.schema import SchemaValidationError, get_schema, validate_cloudconfig_schema
schema = get_schema()
known = set(schema.get("properties", {}))
for part in schema.get("allOf", []):
    if "$ref" in part:
        part = schema["$defs"][part["$ref"].rsplit("/", 1)[-1]]
    known |= set(part.get("properties", {}))
out = {}
for name, text in json.load(sys.stdin).items():
    cfg = yaml.safe_load(text)
    problems = sorted("unknown top-level key: " + k for k in cfg if k not in known)
    try:
        validate_cloudconfig_schema(cfg, schema, strict=True, log_details=False)
    except SchemaValidationError as exc:
        problems += [f"{p}: {m}" for p, m in exc.schema_errors]
        problems += [f"deprecated: {p}: {m}" for p, m in exc.schema_deprecations]
    out[name] = problems
print(json.dumps({"version": cloudinit.version.version_string(), "problems": out}))
"""


@pytest.fixture(scope="module")
def trixie_root() -> Path:
    reason = unavailable_reason()
    if reason:
        unavailable(reason)
    return Path(trixie_tools()["OWUIBUILD_TRIXIE_ROOT"])


def check_with_trixie_cloud_init(root: Path, documents: dict[str, str]) -> dict[str, list[str]]:
    result = subprocess.run(
        ["chroot", str(root), "/usr/bin/python3", "-c", CLOUD_INIT_CHECK],
        input=json.dumps(documents),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["version"].startswith(CLOUD_INIT_SERIES), answer["version"]
    problems: dict[str, list[str]] = answer["problems"]
    return problems


def user_data_texts(rendered: Rendered) -> Iterator[tuple[str, str]]:
    for path, data in rendered.files.items():
        if path.endswith("/user-data"):
            raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
            yield path.split("/")[1], raw.decode()


def distro_of(rendered: Rendered) -> str:
    distro: str = rendered.plan.fleet.os.distro  # type: ignore[attr-defined]
    return distro


def debian13_variant(name: str, tmp_path: Path) -> Rendered | None:
    """The example with os.distro set to debian-13, or None while the schema refuses it."""
    from owuibuild.pipeline import compile_blueprint

    doc = yaml.safe_load((BLUEPRINTS / name).read_text())
    doc["os"] = {**(doc.get("os") or {}), "distro": DISTRO}
    path = tmp_path / f"d13-{name}"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    if not compile_blueprint(path, seed_iso=False).ok:
        return None
    return compile_path(path)


def trixie_cases(
    render_example: Callable[[str], Rendered], tmp_path: Path
) -> tuple[str, dict[str, Rendered]]:
    """(how they were chosen, {case: rendered}) for the 25.1 check; see the module docstring."""
    examples = {name: render_example(name) for name in EXAMPLES}
    chosen = {n: r for n, r in examples.items() if distro_of(r) == DISTRO}
    if chosen:
        return "debian-13 examples", chosen
    variants = {name: debian13_variant(name, tmp_path) for name in EXAMPLES}
    if all(v is not None for v in variants.values()):
        return "debian-13 variants", {f"{n} ({DISTRO})": v for n, v in variants.items() if v}
    return "examples as they are (no debian-13 in the schema yet)", examples


def test_user_data_passes_trixie_cloud_init_schema_strictly(
    trixie_root: Path, render_example: Callable[[str], Rendered], tmp_path: Path
) -> None:
    how, cases = trixie_cases(render_example, tmp_path)
    documents = {
        f"{case}:{host}": text
        for case, rendered in cases.items()
        for host, text in user_data_texts(rendered)
    }
    assert cases, how
    assert len(documents) >= len(cases), how
    problems = check_with_trixie_cloud_init(trixie_root, documents)
    assert problems == {name: [] for name in documents}, how


def test_the_trixie_check_catches_unknown_keys_bad_values_and_deprecations(
    trixie_root: Path,
) -> None:
    """The checker itself: an unknown top-level key, a schema error and a key deprecated in
    25.1 (``apt_update``, replaced by ``package_update``) are each reported."""
    bad = "#cloud-config\nno_such_module: 1\nruncmd: 5\napt_update: true\n"
    problems = check_with_trixie_cloud_init(trixie_root, {"bad": bad})["bad"]
    assert "unknown top-level key: no_such_module" in problems
    assert any(p.startswith("runcmd:") for p in problems), problems
    assert any(p.startswith("deprecated: apt_update") for p in problems), problems
