"""The release table: every release-dependent fact comes from builder/release.py, and a blueprint
that names no release keeps meaning what it meant (debian-12: PostgreSQL 15, Docker's repo)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml
from conftest import BLUEPRINTS, EXAMPLES, REPO, Rendered
from fleetdoc import BASE, diagnose, edit, one, where
from owuibuild.hostconfig import docker as docker_section
from owuibuild.plan import Plan
from owuibuild.release import (
    DEFAULT_DISTRO,
    DOCKER_ARCHIVE,
    DOCKER_UPSTREAM,
    DOCKER_UPSTREAM_PACKAGES,
    NEW_FLEET_DISTRO,
    RELEASES,
)

pytestmark = pytest.mark.unit

SCHEMA = json.loads((REPO / "schemas" / "blueprint.schema.json").read_text())
OS_SCHEMA = SCHEMA["properties"]["os"]["properties"]


def user_data(r: Rendered, host: str) -> dict[str, Any]:
    doc = r.user_data(host)
    assert isinstance(doc, dict)
    return doc


def paths_written(doc: dict[str, Any]) -> set[str]:
    return {f["path"] for f in doc.get("write_files", [])}


def test_schema_lists_exactly_the_releases_of_the_table() -> None:
    assert set(OS_SCHEMA["distro"]["enum"]) == set(RELEASES)
    assert OS_SCHEMA["distro"]["default"] == DEFAULT_DISTRO == "debian-12"
    majors = {r.postgres_major for r in RELEASES.values()}
    pg = SCHEMA["properties"]["shared"]["properties"]["postgres"]["properties"]["version"]
    assert set(pg["enum"]) == majors


def test_new_fleets_start_on_debian_13() -> None:
    starter = REPO / "builder" / "templates" / "starter.yml"
    assert NEW_FLEET_DISTRO == "debian-13"
    # The examples only: `make demo` leaves a secrets file beside the one it renders.
    for text in [starter.read_text(), *((BLUEPRINTS / name).read_text() for name in EXAMPLES)]:
        assert yaml.safe_load(text)["os"]["distro"] == NEW_FLEET_DISTRO


def test_release_names_live_only_in_the_table() -> None:
    """No scattered conditionals: no other module of the package names a release or codename."""
    names = re.compile(
        "|".join(re.escape(word) for r in RELEASES.values() for word in (r.distro, r.codename))
    )
    offenders = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sorted((REPO / "builder").rglob("*.py"))
        if path.name != "release.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if names.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == []


@pytest.mark.parametrize(
    ("os_line", "distro", "pg", "source"),
    [
        ("", "debian-12", 15, DOCKER_UPSTREAM),  # no os: what it always meant
        ("os: {distro: debian-12}\n", "debian-12", 15, DOCKER_UPSTREAM),
        ("os: {distro: debian-13}\n", "debian-13", 17, DOCKER_ARCHIVE),
        ("os: {distro: debian-13, docker_source: docker}\n", "debian-13", 17, DOCKER_UPSTREAM),
        ("os: {distro: ubuntu-24.04}\n", "ubuntu-24.04", 16, DOCKER_ARCHIVE),
    ],
)
def test_release_decides_postgres_and_docker(
    render_text: Callable[[str], Rendered], os_line: str, distro: str, pg: int, source: str
) -> None:
    r = render_text(edit(BASE, "name: fleet\n", f"name: fleet\n{os_line}"))
    plan = r.plan
    assert isinstance(plan, Plan)
    release = RELEASES[distro]
    assert plan.fleet.os.distro == distro
    assert plan.fleet.os.docker_source == source
    assert plan.fleet.shared.postgres.version == pg
    shared = user_data(r, "shared")
    assert f"data_directory = '/var/lib/owuibuild/postgresql/{pg}/main'" in next(
        f["content"] for f in shared["write_files"] if f["path"].endswith("/postgresql.conf")
    )
    web = user_data(r, "web-a")
    packages = set(web["packages"])
    sources = web.get("apt", {}).get("sources", {})
    if source == DOCKER_UPSTREAM:
        assert set(DOCKER_UPSTREAM_PACKAGES) <= packages
        line = sources["docker"]["source"]
        assert f"/linux/{release.family} {release.codename} stable" in line
        assert "signed-by=/etc/apt/keyrings/docker.asc" in line
        assert docker_section.DOCKER_KEYRING in paths_written(web)
    else:
        assert release.docker_archive_packages is not None
        assert set(release.docker_archive_packages) <= packages
        assert not packages & set(DOCKER_UPSTREAM_PACKAGES)
        assert "docker" not in sources  # no third-party repository at all
        assert docker_section.DOCKER_KEYRING not in paths_written(web)
    # Packer starts from the same release's cloud image.
    variables = r.text("packer/variables.pkr.hcl")
    assert release.base_image.qemu_url in variables


def test_debian_12_archive_docker_is_a_located_error() -> None:
    text = edit(
        BASE, "name: fleet\n", "name: fleet\nos: {distro: debian-12, docker_source: archive}\n"
    )
    d = one(diagnose(text), "os.docker_source")
    assert "no compose v2" in d.message
    assert d.hint is not None and "debian-13" in d.hint
    assert (d.line, d.column) == where(text, "docker_source: archive", "archive")


def test_postgres_version_follows_the_release() -> None:
    text = edit(
        BASE,
        "name: fleet\n",
        "name: fleet\nos: {distro: debian-13}\n",
    )
    pinned = edit(text, "{max_connections: 200}", "{max_connections: 200, version: 15}")
    d = one(diagnose(pinned), "shared.postgres.version")
    assert d.message == "PostgreSQL 15 is not the version debian-13 ships (17)"
    assert (
        diagnose(edit(text, "{max_connections: 200}", "{max_connections: 200, version: 17}")) == []
    )


def test_unhashable_distro_is_a_schema_error_not_a_crash() -> None:
    text = edit(BASE, "name: fleet\n", "name: fleet\nos: {distro: [debian-13]}\n")
    d = one(diagnose(text), "os.distro")
    assert d.severity.value == "error"


# -- the Open WebUI image from the mirror (hosts without a registry) ---------------------------

ARCHIVE_SHA = "ab" * 32


def archive_blueprint(extra: str = "") -> str:
    text = edit(
        BASE,
        "name: fleet\n",
        "name: fleet\nos: {distro: debian-13}\nmirror: http://mirror.example/owui\n",
    )
    return text + f"openwebui: {{archive_sha256: {ARCHIVE_SHA}}}\n" + extra


def test_image_archive_is_loaded_from_the_mirror_and_never_pulled(
    render_text: Callable[[str], Rendered],
) -> None:
    r = render_text(archive_blueprint())
    web = user_data(r, "web-a")
    script = next(f for f in web["write_files"] if f["path"] == docker_section.LOAD_IMAGE_SCRIPT)
    assert script["permissions"] == "0755"
    assert f"SHA256={ARCHIVE_SHA}" in script["content"]
    assert "URL=http://mirror.example/owui/openwebui-v0.12.4.docker.tar" in script["content"]
    # An install step: it runs before the instances are started, and Packer runs it too.
    runcmd = web["runcmd"]
    load = next(
        i for i, c in enumerate(runcmd) if f"/bin/sh {docker_section.LOAD_IMAGE_SCRIPT}" in c[2]
    )
    starts = [i for i, c in enumerate(runcmd) if c[:2] == ["systemctl", "enable"]]
    assert starts and load < min(starts)
    compose = yaml.safe_load(r.files["instances/one/compose.yaml"])
    assert compose["services"]["openwebui"]["pull_policy"] == "never"
    packer_script = r.text("packer/scripts/instance-host-install.sh")
    assert docker_section.LOAD_IMAGE_SCRIPT in packer_script
    assert "docker pull" not in packer_script


def test_registry_image_is_pulled_into_the_golden_image_unless_told_not_to(
    render_text: Callable[[str], Rendered],
) -> None:
    r = render_text(BASE)
    assert "docker pull ghcr.io/open-webui/open-webui:v0.12.4" in r.text(
        "packer/scripts/instance-host-install.sh"
    )
    assert "pull_policy" not in r.text("instances/one/compose.yaml")
    assert docker_section.LOAD_IMAGE_SCRIPT not in paths_written(user_data(r, "web-a"))
    off = render_text(BASE + "images: {preload_openwebui: false}\n")
    assert "docker pull" not in off.text("packer/scripts/instance-host-install.sh")


def test_image_archive_without_a_mirror_is_a_located_error() -> None:
    text = BASE + f"openwebui: {{archive_sha256: {ARCHIVE_SHA}}}\n"
    d = one(diagnose(text), "openwebui.archive_sha256")
    assert d.message == "an image archive needs a mirror to be loaded from"
    assert (d.line, d.column) == where(text, "archive_sha256")


def test_first_step_checks_every_package_of_the_seed(
    render_example: Callable[[str], Rendered],
) -> None:
    """A golden image skips cloud-init's package step; the seed's first runcmd step finds a
    package that the image lacks instead of failing later in a stranger way."""
    from owuibuild.hostconfig import CHECK_PACKAGES

    r = render_example("seed-example.yml")
    for host in ("ai-shared", "web-a"):
        doc = user_data(r, host)
        first = doc["runcmd"][1]  # after `set -e`
        assert first[:4] == ["/bin/sh", "-c", CHECK_PACKAGES, "owuibuild-check-packages"]
        assert first[4:] == doc["packages"]


@pytest.mark.parametrize(
    ("os_line", "engine"),
    [
        ("", 27),  # debian-12: Docker's repository
        ("os: {distro: debian-13}\n", 26),
        ("os: {distro: ubuntu-24.04}\n", 24),
        ("os: {distro: ubuntu-24.04, docker_source: docker}\n", 27),
    ],
)
def test_healthcheck_start_interval_only_where_the_engine_has_it(
    render_text: Callable[[str], Rendered], os_line: str, engine: int
) -> None:
    """Compose refuses a healthcheck's start_interval on an engine older than 25: an instance
    is checked more often while it starts only where its host's engine takes that."""
    r = render_text(edit(BASE, "name: fleet\n", f"name: fleet\n{os_line}"))
    plan = r.plan
    assert isinstance(plan, Plan)
    assert plan.fleet.os.release.docker_engine(plan.fleet.os.docker_source) == engine
    composes = [yaml.safe_load(v) for k, v in r.files.items() if k.endswith("/compose.yaml")]
    assert composes
    for compose in composes:
        health = compose["services"]["openwebui"]["healthcheck"]
        assert health["start_period"] == "600s"
        if engine >= 25:
            assert health["start_interval"] == "5s"
        else:
            assert "start_interval" not in health
