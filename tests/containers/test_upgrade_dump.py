"""Containers tier: changing the Open WebUI version of a real instance dumps its database first.

A REAL Open WebUI 0.12.4 runs from its generated bundle on its data directory, against the REAL
PostgreSQL (and Redis) of the shared-host container that tests/containers/test_instances_live.py
starts from the generated configuration (its fixture and helpers are imported, not copied; see
that module for the test doubles of Qdrant and Ollama). The admin signs in and makes a chat.

Then the blueprint's `openwebui.version` becomes 0.12.5 and the fleet is rendered again. Only
Open WebUI 0.12.4 can be had here, so "0.12.5" is the SAME 0.12.4 image re-tagged v0.12.5 (the
tag is removed afterwards): this checks owuibuild's guard and the instance's steps, not a real
migration between two releases.

The guard runs as the host's unit runs it: the ExecStartPre and ExecStartPost command lines of
the generated unit, unmodified, with the generated guard script and pgpass file at their
generated paths, in a container standing in for the Docker host: it has the host's address on
the test network (so the generated pg_hba.conf admits the instance's role from it, over TLS
verified with the fleet CA), PostgreSQL 15's client, and the instance's data directory at its
generated path. The instance itself starts between the two, as ExecStart would, through the
compose override of the imported fixture. Traffic stays on the Docker network this test creates
and on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Rendered, compile_path
from owuibuild.hostconfig import _upgrade as upgrade
from owuibuild.plan import FLEET_CA, Plan
from owuibuild.targets import ca as ca_target
from test_instance_replacement import data_dir
from test_instances_live import (
    SHARED_IMAGE,
    Fleet,
    Running,
    live_fleet,
    make_chat,
    run,
    sign_in_as_admin,
    write_bundle_files,
)

pytestmark = pytest.mark.containers

SUBNET = "10.213.12.0/24"
GATEWAY = "10.213.12.1"
OLD, NEW = "0.12.4", "0.12.5"
BLUEPRINT = """\
apiVersion: owuibuild/v1
name: upgradetest
os: {distro: debian-12, timezone: UTC}
admin:
  user: ops
  ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeTestKeyOnlyNotARealKey00000000000000000 ops@laptop]
  allow_from: [10.213.12.0/24]
network: {cidr: 10.213.12.0/24, gateway: 10.213.12.1, dns: [10.213.12.1]}
shared:
  host: {name: shared, address: 10.213.12.24, memory_gb: 32, data_volume: {label: owui-data}}
  postgres: {max_connections: 100}
hosts:
  - {name: web-a, address: 10.213.12.30, memory_gb: 8, data_volume: {label: owui-data}}
openwebui: {version: VERSION}
instances:
  - {name: mover, host: web-a, port: 3001, admin: {email: ada@mover.test, name: Ada}}
"""
CHAT_TITLE = "Written by 0.12.4"


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("upgrade")
    with live_fleet(BLUEPRINT.replace("VERSION", OLD), SUBNET, GATEWAY, workdir, start=False) as f:
        yield f


def host_files(r: Rendered, host: str) -> dict[str, str]:
    return {f["path"]: str(f["content"]) for f in r.user_data(host)["write_files"]}


class DockerHost:
    """Runs a command line of the instance's generated unit as the host would, in a container
    with the host's address, the generated guard script and pgpass file, the fleet CA, and the
    instance's data directory at their generated paths."""

    def __init__(self, fleet: Fleet, rendered: Rendered, running: Running, work: Path) -> None:
        self.fleet, self.running = fleet, running
        inst = running.inst
        files = host_files(rendered, inst.host.name)
        self.unit = files[f"/etc/systemd/system/{inst.unit_name}"]
        work.mkdir()
        self.mounts: list[str] = []
        for path, mode in ((upgrade.GUARD_SCRIPT, 0o755), (upgrade.passfile(inst), 0o600)):
            local = work / Path(path).name
            local.write_text(files[path])
            local.chmod(mode)
            self.mounts += ["-v", f"{local}:{path}:ro"]
        ca = work / ca_target.CA_FILE
        ca.write_bytes(rendered.files[ca_target.CA_FILE])
        self.mounts += ["-v", f"{ca}:{FLEET_CA}:ro", "-v", f"{data_dir(running)}:{inst.data_dir}"]

    def lines(self, key: str) -> list[list[str]]:
        return [
            shlex.split(line.split("=", 1)[1])
            for line in self.unit.splitlines()
            if line.startswith(f"{key}=") and upgrade.GUARD_SCRIPT in line
        ]

    def run(self, argv: list[str], *, network: bool) -> tuple[int, str]:
        where = (
            ["--network", self.fleet.network, "--ip", str(self.running.inst.host.address)]
            if network
            else ["--network", "none"]
        )
        out = run("docker", "run", "--rm", *where, *self.mounts, SHARED_IMAGE, *argv,
                  check=False, timeout=600)  # fmt: skip
        return out.returncode, out.stdout + out.stderr

    def check(self) -> tuple[int, str]:
        """The unit's ExecStartPre line of the guard, as written."""
        (argv,) = self.lines("ExecStartPre")
        return self.run(argv, network=True)

    def stamp(self) -> tuple[int, str]:
        """The unit's ExecStartPost line of the guard (it needs no network)."""
        (argv,) = self.lines("ExecStartPost")
        return self.run(argv, network=False)


def render_version(fleet: Fleet, version: str) -> Rendered:
    """The same blueprint (and secrets file) with another Open WebUI version."""
    fleet.blueprint.write_text(BLUEPRINT.replace("VERSION", version))
    return compile_path(fleet.blueprint)


def started_at(running: Running) -> tuple[datetime.datetime, str]:
    (container,) = running.compose("ps", "--quiet").stdout.split()
    fmt = "{{.State.StartedAt}} {{.Config.Image}}"
    stamp, image = run("docker", "inspect", "-f", fmt, container).stdout.split()
    # RFC 3339 with nanoseconds: Python takes microseconds.
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    parsed = datetime.datetime.fromisoformat(f"{whole}.{(fraction + '000000')[:6]}+00:00")
    return parsed, image


def mtime(path: Path) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC)


def test_a_new_version_starts_only_after_a_dump_of_the_old_one_that_restores(
    fleet: Fleet, tmp_path: Path
) -> None:
    (running,) = fleet.instances.values()
    inst = running.inst
    data = data_dir(running)
    stamp_file = data / upgrade.STAMP_FILE
    dumps = data / upgrade.DUMP_DIR
    old_host = DockerHost(fleet, fleet.rendered, running, tmp_path / "old")

    # A new instance: an empty database, no stamp: it starts without a dump.
    status, out = old_host.check()
    assert status == 0, out
    assert "nothing to dump" in out and not dumps.exists()
    running.compose("up", "--detach", "--wait")
    status, out = old_host.stamp()
    assert status == 0, out
    assert stamp_file.read_text() == f"{OLD}\n"

    # Data through the real interfaces.
    status, admin = sign_in_as_admin(fleet, running)
    assert status == 200, (status, admin)
    make_chat(running, admin["token"], CHAT_TITLE, "keep me")

    # The same start again (a reboot): same version, no dump.
    running.compose("down", "--timeout", "20")  # the unit's ExecStop
    status, out = old_host.check()
    assert status == 0, out
    assert not dumps.exists()

    # The blueprint now says 0.12.5: the same image under that tag (see the docstring).
    new = render_version(fleet, NEW)
    assert isinstance(new.plan, Plan)
    new_image = new.plan.openwebui_image
    assert new_image.endswith(f":v{NEW}") and new_image != fleet.plan.openwebui_image
    run("docker", "tag", fleet.plan.openwebui_image, new_image)
    try:
        write_bundle_files(new, inst, running.bundle_dir)
        new_host = DockerHost(fleet, new, running, tmp_path / "new")
        status, out = new_host.check()
        assert status == 0, out
        (dump,) = dumps.iterdir()
        assert dump.name.startswith(f"{inst.name}-") and dump.name.endswith(
            f"-openwebui-{OLD}.dump"
        )
        assert f"{inst.data_dir}/{upgrade.DUMP_DIR}/{dump.name}" in out
        assert dump.stat().st_mode & 0o777 == 0o600
        assert dump.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
        assert stamp_file.read_text() == f"{OLD}\n"  # not claimed before it is healthy
        dumped_at = mtime(dump)

        running.compose("up", "--detach", "--wait")
        began, image = started_at(running)
        assert image == new_image
        assert dumped_at < began, (dumped_at, began)
        status, out = new_host.stamp()
        assert status == 0, out
        assert stamp_file.read_text() == f"{NEW}\n"
        assert not (data / upgrade.PENDING_FILE).exists()
        status, again = sign_in_as_admin(fleet, running)
        assert status == 200 and again["id"] == admin["id"]

        # The dump restores into a fresh database and holds the user and the chat.
        fleet.in_shared("install", "-d", "-m", "0755", "/srv/restore")
        run("docker", "cp", str(dump), f"{fleet.shared}:/srv/restore/old.dump")
        fleet.in_shared("chmod", "0644", "/srv/restore/old.dump")
        fleet.in_shared("createdb", "--template=template0", "restored", user="postgres")
        fleet.in_shared("pg_restore", "--exit-on-error", "--single-transaction", "--no-owner",
                        "--dbname=restored", "/srv/restore/old.dump", user="postgres")  # fmt: skip
        assert fleet.psql("restored", 'SELECT email FROM "user"').split() == ["ada@mover.test"]
        assert fleet.psql("restored", "SELECT title FROM chat").splitlines() == [CHAT_TITLE]

        # Back to 0.12.4 on the data 0.12.5 ran on: refused, with the way back.
        running.compose("down", "--timeout", "20")
        before = sorted(p.name for p in dumps.iterdir())
        status, out = old_host.check()
        assert status == 1, out
        assert f"refusing to start Open WebUI {OLD} for instance {inst.name}" in out
        assert f"migrated by Open WebUI {NEW}" in out
        assert f"{inst.data_dir}/{upgrade.DUMP_DIR}/{dump.name}" in out
        assert "pg_restore --clean --if-exists" in out
        assert sorted(p.name for p in dumps.iterdir()) == before
        assert stamp_file.read_text() == f"{NEW}\n"

        # The restore the message gives works as written, on the Docker host.
        (restore,) = [line.strip() for line in out.splitlines() if "pg_restore" in line]
        status, restored = old_host.run(["sh", "-ec", restore], network=True)
        assert status == 0, restored
        assert fleet.psql(inst.db_name, "SELECT title FROM chat").splitlines() == [CHAT_TITLE]
    finally:
        run("docker", "image", "rm", new_image, check=False)  # the tag only: 0.12.4 stays
