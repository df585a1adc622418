"""The Open WebUI upgrade guard: the steps of each instance's unit, its pgpass file, the client
package, and the GENERATED guard script run for real on its paths that need no database (the
refusal, the stamp, a dump that fails). The paths that dump a real database run in the
containers tier (tests/containers/test_upgrade_dump.py).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Rendered, require_tool
from owuibuild import hostconfig
from owuibuild.hostconfig import _upgrade as upgrade
from owuibuild.hostconfig import docker as docker_section
from owuibuild.plan import InstancePlan, Plan
from owuibuild.quoting import QuotingError, pgpass_field

pytestmark = pytest.mark.unit

BLUEPRINT = """\
apiVersion: owuibuild/v1
name: upgfleet
os: {distro: DISTRO, timezone: UTC}
admin:
  user: ops
  ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeTestKeyOnlyNotARealKey00000000000000000 ops@laptop]
  allow_from: [10.9.0.0/24]
network: {cidr: 10.9.0.0/24, gateway: 10.9.0.1, dns: [10.9.0.1]}
shared:
  host: {name: shared, address: 10.9.0.10, memory_gb: 64, data_volume: {label: owui-data}}
  postgres: {max_connections: 100}
hosts:
  - {name: web-a, address: 10.9.0.20, memory_gb: 64, data_volume: {label: owui-data}}
openwebui: {version: 0.12.4}
instances:
  - {name: far, host: web-a, port: 3001, signup: {enabled: true}}
  - {name: near, host: shared, port: 3002}
"""


@pytest.fixture
def rendered(render_text: Callable[[str], Rendered]) -> Rendered:
    return render_text(BLUEPRINT.replace("DISTRO", "debian-12"))


def plan_of(r: Rendered) -> Plan:
    assert isinstance(r.plan, Plan)
    return r.plan


def written(r: Rendered, host: str) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in r.user_data(host)["write_files"]}


def instance(r: Rendered, name: str) -> InstancePlan:
    (found,) = [i for i in plan_of(r).instances if i.name == name]
    return found


def exec_lines(unit: str, key: str) -> list[list[str]]:
    return [
        shlex.split(line.split("=", 1)[1])
        for line in unit.splitlines()
        if line.startswith(f"{key}=")
    ]


def unit_of(r: Rendered, inst: InstancePlan) -> str:
    return str(written(r, inst.host.name)[f"/etc/systemd/system/{inst.unit_name}"]["content"])


def test_the_guard_runs_before_the_start_and_the_stamp_after_the_ready_check(
    rendered: Rendered,
) -> None:
    far = instance(rendered, "far")
    unit = unit_of(rendered, far)
    pre = exec_lines(unit, "ExecStartPre")
    # After the data directory and the CA bundle exist; before compose starts anything.
    assert pre[-1] == [
        "/bin/sh", upgrade.GUARD_SCRIPT, "check", "far", "0.12.4", far.data_dir, far.db_name,
        far.db_role, "10.9.0.10", f"{far.bundle_dir}/far.pgpass", far.unit_name,
    ]  # fmt: skip
    assert pre[0][:4] == ["/usr/bin/install", "-d", "-m", "0750"]
    assert unit.index("ExecStartPre=/bin/sh " + upgrade.GUARD_SCRIPT) < unit.index("ExecStart=")
    post = exec_lines(unit, "ExecStartPost")
    # The ready check, then the stamp, then sign-up's one restart (already healthy).
    assert post[0][0] == "/usr/bin/curl"
    assert post[1] == ["/bin/sh", upgrade.GUARD_SCRIPT, "stamp", "far", "0.12.4", far.data_dir]
    assert post[2][1] == docker_section.OPEN_SIGNUP_SCRIPT


def test_on_the_postgres_host_the_guard_uses_the_local_socket_and_no_password(
    rendered: Rendered,
) -> None:
    near = instance(rendered, "near")
    (check,) = [p for p in exec_lines(unit_of(rendered, near), "ExecStartPre") if "check" in p]
    assert check[-3:] == [upgrade.LOCAL, upgrade.NO_PASSFILE, near.unit_name]
    files = written(rendered, "shared")
    assert not any(path.endswith(".pgpass") for path in files)
    assert upgrade.GUARD_SCRIPT in files


def test_the_pgpass_file_is_root_only_and_holds_the_password_once(rendered: Rendered) -> None:
    far = instance(rendered, "far")
    files = written(rendered, "web-a")
    entry = files[upgrade.passfile(far)]
    assert entry["permissions"] == "0600" and entry["owner"] == "root:root"
    password = rendered.secrets[far.db_password.name]  # type: ignore[index]
    assert entry["content"] == f"10.9.0.10:5432:far:far:{pgpass_field(password)}\n"
    # Nowhere else on a command line or in a script.
    for path in (f"/etc/systemd/system/{far.unit_name}", upgrade.GUARD_SCRIPT):
        assert password not in files[path]["content"]


def test_pgpass_fields_escape_colon_and_backslash() -> None:
    assert pgpass_field("a:b\\c") == "a\\:b\\\\c"
    assert pgpass_field("plain") == "plain"
    with pytest.raises(QuotingError):
        pgpass_field("two\nlines")


@pytest.mark.parametrize(
    ("distro", "major"), [("debian-12", 15), ("debian-13", 17), ("ubuntu-24.04", 16)]
)
def test_docker_hosts_install_the_client_of_the_servers_major(
    render_text: Callable[[str], Rendered], distro: str, major: int
) -> None:
    r = render_text(BLUEPRINT.replace("DISTRO", distro))
    plan = plan_of(r)
    for host in plan.hosts:
        parts = hostconfig.parts_for(plan, host, r.secrets)  # type: ignore[arg-type]
        # An install step, so a golden image bakes it too.
        assert f"postgresql-client-{major}" in hostconfig.install_steps(parts).packages
    assert f"/usr/lib/postgresql/{major}/bin" in upgrade.guard_script(plan)


def test_the_runbook_describes_the_guard(rendered: Rendered) -> None:
    readme = rendered.text("README.md")
    section = readme[readme.index(f"## {upgrade.SECTION}") :]
    for fact in (upgrade.STAMP_FILE, upgrade.DUMP_DIR, upgrade.GUARD_SCRIPT, "refuses"):
        assert fact in section
    assert "Take and check a backup" in readme
    assert "systemctl start owui-backup.service" in section
    assert "Upgrade Open WebUI safely" not in readme  # the old, untrue procedure is gone
    # The guard's refusal points at this very section.
    assert f"SECTION='{upgrade.SECTION}'" in upgrade.guard_script(plan_of(rendered))


# -- the generated script, run for real -----------------------------------------------------------


class Guard:
    """The generated guard script with the unit's own arguments, except the data directory,
    which is a temp dir here."""

    def __init__(self, r: Rendered, inst: InstancePlan, tmp: Path) -> None:
        self.script = tmp / "guard.sh"
        self.script.write_text(written(r, inst.host.name)[upgrade.GUARD_SCRIPT]["content"])
        self.data = tmp / "data"
        self.data.mkdir()
        self.unit = unit_of(r, inst)
        self.inst = inst

    def argv(self, mode: str, version: str | None = None) -> list[str]:
        key = "ExecStartPre" if mode == "check" else "ExecStartPost"
        (line,) = [a for a in exec_lines(self.unit, key) if a[2:3] == [mode]]
        args = [str(self.data) if a == self.inst.data_dir else a for a in line[1:]]
        if version is not None:
            args[3] = version
        return ["sh", str(self.script), *args[1:]]

    def run(
        self, mode: str, version: str | None = None, netns: bool = False
    ) -> subprocess.CompletedProcess[str]:
        argv = self.argv(mode, version)
        if netns:
            argv = ["unshare", "--net", *argv]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    @property
    def stamp(self) -> Path:
        return self.data / upgrade.STAMP_FILE

    @property
    def dumps(self) -> Path:
        return self.data / upgrade.DUMP_DIR


@pytest.fixture
def guard(rendered: Rendered, tmp_path: Path) -> Guard:
    return Guard(rendered, instance(rendered, "far"), tmp_path)


def test_the_stamp_is_written_atomically_and_clears_a_pending_dump(guard: Guard) -> None:
    (guard.data / upgrade.PENDING_FILE).write_text("/somewhere.dump\n")
    done = guard.run("stamp")
    assert done.returncode == 0, done.stderr
    assert guard.stamp.read_text() == "0.12.4\n"
    assert not (guard.data / upgrade.PENDING_FILE).exists()
    assert sorted(p.name for p in guard.data.iterdir()) == [upgrade.STAMP_FILE]


def test_the_same_version_starts_without_a_dump(guard: Guard) -> None:
    guard.stamp.write_text("0.12.4\n")
    done = guard.run("check")
    assert done.returncode == 0, done.stderr
    assert not guard.dumps.exists()


@pytest.mark.parametrize("stamped", ["0.12.10", "0.13", "1.0.0", "0.12.5-rc1"])
def test_an_older_version_is_refused_with_the_way_back(guard: Guard, stamped: str) -> None:
    guard.stamp.write_text(f"{stamped}\n")
    guard.dumps.mkdir()
    older = guard.dumps / "far-20260101T000000Z-openwebui-0.12.4.dump"
    newest = guard.dumps / "far-20260301T000000Z-openwebui-0.12.4.dump"
    other = guard.dumps / "far-20260401T000000Z-openwebui-0.12.3.dump"
    for dump in (older, newest, other):
        dump.write_bytes(b"PGDMP")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in guard.data.rglob("*"))
    done = guard.run("check")
    assert done.returncode == 1
    message = done.stderr
    assert "refusing to start Open WebUI 0.12.4 for instance far" in message
    assert f"migrated by Open WebUI {stamped}" in message
    assert f"set openwebui.version back to {stamped}" in message
    assert str(newest) in message and str(older) not in message and str(other) not in message
    assert "pg_restore --clean --if-exists --single-transaction --exit-on-error" in message
    assert f"<{newest}" in message and "PGPASSFILE=/opt/owuibuild/far/far.pgpass" in message
    assert f"printf '%s\\n' 0.12.4 >{guard.stamp}" in message
    assert "systemctl stop owui-far.service" in message
    assert f'"{upgrade.SECTION}"' in message
    # Nothing changed.
    assert sorted((p.name, p.stat().st_mtime_ns) for p in guard.data.rglob("*")) == before


def test_a_refusal_without_a_dump_says_so(guard: Guard) -> None:
    guard.stamp.write_text("0.12.10\n")
    done = guard.run("check")
    assert done.returncode == 1
    assert "no dump of 0.12.4" in done.stderr and "pg_restore" not in done.stderr


@pytest.mark.parametrize("stamped", ["garbage", "v0.12.5", "0.12.4 extra", "1", ""])
def test_an_unreadable_stamp_refuses(guard: Guard, stamped: str) -> None:
    guard.stamp.write_text(f"{stamped}\n")
    done = guard.run("check")
    assert done.returncode == 1
    assert "not a version" in done.stderr
    assert not guard.dumps.exists()


def test_an_unparsable_version_to_start_is_refused(guard: Guard) -> None:
    done = guard.run("check", version="latest")
    assert done.returncode == 2
    assert "latest is not a version" in done.stderr


def test_a_failed_dump_stops_the_start_and_leaves_no_file(guard: Guard) -> None:
    """An older stamp needs a dump. In a network namespace of its own (no route anywhere, so
    nothing leaves this machine) pg_dump cannot reach PostgreSQL: the start must stop."""
    require_tool("unshare")
    if os.geteuid() != 0 or not Path("/usr/lib/postgresql/15/bin/pg_dump").exists():
        pytest.skip("needs root (unshare --net) and PostgreSQL 15's pg_dump")
    guard.stamp.write_text("0.12.3\n")
    done = guard.run("check", netns=True)
    assert done.returncode == 1, done.stderr
    assert "FAILED: the dump of database far failed; not starting 0.12.4" in done.stderr
    assert sorted(p.name for p in guard.dumps.iterdir()) == []
    assert not (guard.data / upgrade.PENDING_FILE).exists()
    assert guard.stamp.read_text() == "0.12.3\n"
