"""A PostgreSQL major-version change never loses data: a PostgreSQL 15 cluster on the data
volume, met by a host that runs PostgreSQL 17, on real servers and a real systemd.

The old host is this machine's Debian 12 PostgreSQL 15: it makes the cluster in a temp
directory that stands for the data volume, runs the old fleet's init SQL, writes rows as each
instance's role and dumps them with the runbook's dump commands as printed. The new host is a
container of the Debian 13 (trixie) root filesystem that tests/infra/trixie-tools.sh builds
(PostgreSQL 17 from trixie, systemd as PID 1, no network), with that directory mounted where
the data volume goes (/var/lib/owuibuild) and the generated PostgreSQL files installed as
cloud-init would write them. Its generated setup script runs as cloud-init would run it:

- on the 15-only volume it initialises nothing and starts nothing; postgresql@17-main fails
  through the generated drop-in's ExecStartPre guard, with the message in its journal; the
  15 cluster is byte-for-byte untouched (every file's content, mode, owner and mtime);
- after the runbook's new-host commands (as printed: make the 17 cluster, run the setup
  script, restore the dumps) PostgreSQL 17 runs from the volume with the rows, still owned
  by each instance's role, and the 15 cluster is still untouched.

The two hosts' files come from one test blueprint rendered on debian-12 and on debian-13.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import secrets as random_names
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Rendered, compile_path, unavailable
from infra.trixie_tools import trixie_tools, unavailable_reason
from owuibuild.hostconfig import datavolume, postgres, tls
from owuibuild.plan import DATA_MOUNT, POSTGRES_DATA_ROOT, Plan
from owuibuild.secrets import Secrets

pytestmark = pytest.mark.services

OLD, NEW = 15, 17
OLD_BIN = Path(f"/usr/lib/postgresql/{OLD}/bin")
NEW_UNIT = f"postgresql@{NEW}-main.service"

BLUEPRINT = """
apiVersion: owuibuild/v1
name: majortest
os: {distro: %(distro)s, timezone: UTC}
admin:
  user: ops
  ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwuibuildExampleKeyReplaceWithYourOwn00000 ops@x"]
  allow_from: [10.9.0.0/24]
network: {cidr: 10.9.0.0/24, gateway: 10.9.0.1, dns: [10.9.0.1]}
shared:
  host: {name: ai-shared, address: 10.9.0.10, data_volume: {label: owui-data}}
hosts:
  - {name: web-a, address: 10.9.0.20, data_volume: {label: owui-data}}
instances:
  - {name: alpha, host: web-a, port: 3000}
  - {name: beta, host: web-a, port: 3001}
"""

ROWS = {"alpha": ["first note of alpha", "second note of alpha"], "beta": ["only note of beta"]}


# -- the two plans ---------------------------------------------------------------------------------


def render(directory: Path, distro: str) -> Rendered:
    path = directory / "majortest.yml"  # one path for both releases: one secrets file
    path.write_text(BLUEPRINT % {"distro": distro})
    return compile_path(path)


def plans(directory: Path) -> tuple[Plan, Plan, Secrets]:
    """(the old fleet on debian-12, the same fleet on debian-13, the secrets both use)."""
    old, new = render(directory, "debian-12"), render(directory, "debian-13")
    assert isinstance(old.plan, Plan) and isinstance(new.plan, Plan)
    # The same secrets: only the store's record of each host's seed generation moved on.
    assert isinstance(old.secrets, Secrets) and isinstance(new.secrets, Secrets)
    assert new.secrets.values == old.secrets.values and new.secrets.pki == old.secrets.pki
    assert new.secrets.allocations == old.secrets.allocations
    assert old.plan.fleet.shared.postgres.version == OLD
    assert new.plan.fleet.shared.postgres.version == NEW
    return old.plan, new.plan, old.secrets


# -- the old host: this machine's PostgreSQL 15 on the volume directory ----------------------------


def as_postgres(*argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["runuser", "-u", "postgres", "--", *argv],
        capture_output=True,
        text=True,
        cwd="/",
        check=False,
        **kwargs,  # type: ignore[arg-type]
    )


def make_old_cluster(volume: Path, old_plan: Plan, secrets: Secrets, dump_block: str) -> None:
    """The volume as the old host leaves it: its cluster with rows, and the runbook's dumps."""
    root = volume / POSTGRES_DATA_ROOT.removeprefix(DATA_MOUNT + "/")
    for d in (root, root / str(OLD)):
        d.mkdir(mode=0o700)
        shutil.chown(d, "postgres", "postgres")
    data = root / str(OLD) / "main"
    initdb = postgres.initdb_command(OLD)
    assert initdb[4] == f"{OLD_BIN}/initdb"
    args = [a for a in initdb[5:] if not a.startswith("--pgdata=")]
    done = as_postgres(str(OLD_BIN / "initdb"), f"--pgdata={data}", *args)
    assert done.returncode == 0, done.stderr
    socket_dir = Path(tempfile.mkdtemp(prefix="owuibuild-pg15-"))
    shutil.chown(socket_dir, "postgres", "postgres")
    options = f"-c listen_addresses='' -c unix_socket_directories={socket_dir} -c port=5432"
    start = as_postgres(
        str(OLD_BIN / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(socket_dir / "log"),
        "-w",
        "start",
    )
    assert start.returncode == 0, start.stderr + start.stdout
    try:

        def psql(database: str, sql: str) -> None:
            done = as_postgres(
                str(OLD_BIN / "psql"),
                "--no-psqlrc",
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(socket_dir),
                "-d",
                database,
                input=sql,
            )
            assert done.returncode == 0, done.stderr

        psql("postgres", postgres.init_sql(old_plan, secrets))
        for role, notes in ROWS.items():
            values = ", ".join(f"({n}, '{text}')" for n, text in enumerate(notes))
            psql(
                role,
                f"SET ROLE {role};\nCREATE TABLE notes (id int PRIMARY KEY, body text);\n"
                f"INSERT INTO notes VALUES {values};\n",
            )
        # The runbook's dump commands as printed, where the volume is mounted on the old host:
        # a private mount namespace puts the directory at DATA_MOUNT (over a tmpfs /var/lib, so
        # nothing is created on this machine); PGHOST/PGPORT name this server's socket.
        script = (
            f"mount -t tmpfs tmpfs /var/lib && mkdir -p {DATA_MOUNT} && "
            f'mount --bind {volume} {DATA_MOUNT} && exec sh -euc "$1"'
        )
        env = {**os.environ, "PGHOST": str(socket_dir), "PGPORT": "5432"}
        dumped = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, "sh", dump_block],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        assert dumped.returncode == 0, dumped.stderr
    finally:
        stop = as_postgres(str(OLD_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(socket_dir, ignore_errors=True)
    assert stop.returncode == 0, stop.stderr


def snapshot(tree: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under ``tree``: type and mode, owner, size, mtime, and a file's sha256."""
    out: dict[str, tuple[object, ...]] = {}
    for path in sorted([tree, *tree.rglob("*")]):
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(tree))] = (
            stat.filemode(st.st_mode),
            st.st_uid,
            st.st_gid,
            st.st_size,
            st.st_mtime_ns,
            digest,
        )
    return out


# -- the new host: a trixie container with systemd ----------------------------------------------


@dataclass
class Host:
    container: str

    def run(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["docker", "exec", "-i", self.container, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def install(self, path: str, content: str, mode: str, owner: str) -> None:
        done = self.run(
            "sh",
            "-c",
            'install -d "$(dirname "$1")" && cat >"$1" && chmod "$2" "$1" && chown "$3" "$1"',
            "sh",
            path,
            mode,
            owner,
            stdin=content,
        )
        assert done.returncode == 0, done.stderr

    def superuser(self, database: str, sql: str) -> str:
        done = self.run(
            "runuser",
            "-u",
            "postgres",
            "--",
            f"/usr/lib/postgresql/{NEW}/bin/psql",
            "--no-psqlrc",
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            database,
            "-c",
            sql,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()


def start_host(image: str, volume: Path) -> Host:
    name = f"owuibuild-test-pgmajor-{random_names.token_hex(4)}"
    started = subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "none",
            # systemd as PID 1 needs to mount inside its container; nothing else is granted.
            "--cap-add",
            "SYS_ADMIN",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "-v",
            f"{volume}:{DATA_MOUNT}",
            image,
            # Hosts with cgroup v1 only: systemd 257 runs there only when told to.
            "/lib/systemd/systemd",
            "SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode == 0, started.stderr
    host = Host(name)
    deadline = time.monotonic() + 90
    while True:
        state = host.run("systemctl", "is-system-running").stdout.strip()
        if state in ("running", "degraded"):
            return host
        if time.monotonic() > deadline:
            logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
            pytest.fail(f"systemd in {name} did not come up ({state}): {logs.stderr[-2000:]}")
        time.sleep(0.5)


def install_postgres_files(host: Host, plan: Plan, secrets: Secrets) -> None:
    """What cloud-init writes for PostgreSQL (and the state-dir script it uses), as written."""
    shared = next(h for h in plan.hosts if "postgres" in h.services)
    part = postgres.part(plan, shared, secrets)
    volume_part = datavolume.part(plan, shared, secrets)
    tls_part = tls.part(plan, shared, secrets)  # the host certificate and key it installs
    assert part is not None and tls_part is not None
    for f in (*part.files, *volume_part.files, *tls_part.files):
        host.install(f.path, f.content, f.permissions, f.owner)
    # The seed's runcmd reloads systemd once before its configuration steps.
    reloaded = host.run("systemctl", "daemon-reload")
    assert reloaded.returncode == 0, reloaded.stderr


def system_identifier(host: Host, data: str) -> str:
    """The cluster's ``Database system identifier``: initdb draws a new one every time."""
    done = host.run(f"/usr/lib/postgresql/{NEW}/bin/pg_controldata", data)
    assert done.returncode == 0, done.stderr
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("Database system id"))
    return line.split(":", 1)[1].strip()


@dataclass
class Scenario:
    volume: Path
    host: Host
    plan: Plan
    old_tree: dict[str, tuple[object, ...]]
    refused: subprocess.CompletedProcess[str]
    unit_state: str
    journal: str
    restart: subprocess.CompletedProcess[str]
    running_after_refusal: str
    tree_after_refusal: dict[str, tuple[object, ...]]

    @property
    def old_cluster(self) -> Path:
        return self.volume / "postgresql" / str(OLD)


@pytest.fixture(scope="module")
def image() -> str:
    """The trixie tools image (PostgreSQL 17 and systemd), once this machine can run it."""
    if not (OLD_BIN / "initdb").exists():
        unavailable(f"PostgreSQL {OLD} server binaries are missing (apt postgresql)")
    reason = unavailable_reason(docker_image=True)
    if reason:
        unavailable(reason)
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        unavailable("the postgres system user is missing (apt postgresql)")
    if subprocess.run(["docker", "info"], capture_output=True, check=False).returncode != 0:
        unavailable("no Docker daemon answers (tests/infra/docker-up.sh starts one)")
    return trixie_tools(docker_image=True)["OWUIBUILD_TRIXIE_IMAGE"]


@pytest.fixture(scope="module")
def scenario(image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    """The old host's volume, then the new host's first boot on it (the setup script run as
    cloud-init runs it, then the unit started again as a reboot would)."""
    old_plan, new_plan, secrets = plans(tmp_path_factory.mktemp("blueprint"))
    volume = Path(tempfile.mkdtemp(prefix="owuibuild-volume-"))
    os.chmod(volume, 0o755)
    host: Host | None = None
    try:
        make_old_cluster(volume, old_plan, secrets, postgres.upgrade_commands(new_plan).dump)
        old_tree = snapshot(volume / "postgresql" / str(OLD))
        host = start_host(image, volume)
        install_postgres_files(host, new_plan, secrets)
        refused = host.run("/bin/sh", postgres.SETUP_SCRIPT)
        unit_state = host.run("systemctl", "is-failed", NEW_UNIT).stdout.strip()
        journal = host.run("journalctl", "--no-pager", "-u", NEW_UNIT).stdout
        # A reboot starts the unit through postgresql.service; it must fail the same way.
        restart = host.run("systemctl", "restart", NEW_UNIT)
        running = host.run("sh", "-c", "pgrep -a postgres || true").stdout.strip()
        yield Scenario(
            volume,
            host,
            new_plan,
            old_tree,
            refused,
            unit_state,
            journal,
            restart,
            running,
            snapshot(volume / "postgresql" / str(OLD)),
        )
    finally:
        if host is not None:
            subprocess.run(["docker", "rm", "-f", host.container], capture_output=True)
        shutil.rmtree(volume, ignore_errors=True)


def test_a_volume_of_another_major_is_neither_initialised_nor_started(scenario: Scenario) -> None:
    assert scenario.refused.returncode == 1, scenario.refused.stdout + scenario.refused.stderr
    message = scenario.refused.stderr
    assert f"refusing to initialise or start PostgreSQL {NEW}." in message
    assert f"found: PostgreSQL {OLD} in {POSTGRES_DATA_ROOT}/{OLD}/main\n" in message
    assert postgres.UPGRADE_SECTION in message
    assert f"{NEW_UNIT} not started" in message
    # no initdb, not even a directory for the new major; no server process
    assert not (scenario.volume / "postgresql" / str(NEW)).exists()
    assert scenario.running_after_refusal == ""
    assert scenario.tree_after_refusal == scenario.old_tree


def test_the_unit_itself_fails_with_the_message(scenario: Scenario) -> None:
    assert scenario.unit_state == "failed"
    assert f"refusing to initialise or start PostgreSQL {NEW}" in scenario.journal
    assert scenario.restart.returncode != 0
    status = scenario.host.run("systemctl", "status", "--no-pager", "-n", "20", NEW_UNIT).stdout
    assert "ExecStartPre=/bin/sh /usr/local/lib/owuibuild/postgresql-guard.sh" in status
    assert "status=1/FAILURE" in status


def test_after_the_runbooks_dump_and_restore_the_new_major_runs_with_the_data(
    scenario: Scenario,
) -> None:
    host = scenario.host
    upgraded = host.run("sh", "-euc", postgres.upgrade_commands(scenario.plan).new_host)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert host.run("systemctl", "is-active", NEW_UNIT).stdout.strip() == "active"
    assert host.superuser("postgres", "SHOW server_version_num").startswith(str(NEW))
    assert host.superuser("postgres", "SHOW data_directory") == postgres.data_dir(NEW)
    for role, notes in ROWS.items():
        assert host.superuser(role, "SELECT body FROM notes ORDER BY id").splitlines() == notes
        assert (
            host.superuser(role, "SELECT tableowner FROM pg_tables WHERE tablename = 'notes'")
            == role
        )
        owner = host.superuser(
            "postgres", f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{role}'"
        )
        assert owner == role
    # The setup script keeps working on the upgraded volume (a reboot, a re-run).
    again = host.run("/bin/sh", postgres.SETUP_SCRIPT)
    assert again.returncode == 0, again.stderr
    assert host.superuser("alpha", "SELECT count(*) FROM notes") == str(len(ROWS["alpha"]))
    # The old cluster stays as it was until the operator removes it.
    assert snapshot(scenario.old_cluster) == scenario.old_tree


@pytest.mark.parametrize("template", [False, True], ids=["initdb", "template"])
def test_an_empty_volume_gets_a_new_cluster(image: str, tmp_path: Path, template: bool) -> None:
    """The guard stands aside where there is nothing to protect: a new fleet's empty volume
    gets its PostgreSQL 17 cluster and the instances' databases. Without a template, initdb
    makes it; where the install step ran (a golden image runs it at bake time) its empty
    cluster on the root disk is copied instead: that very cluster (same system identifier),
    and the template stays for the next volume."""
    _, plan, secrets = plans(tmp_path)
    volume = Path(tempfile.mkdtemp(prefix="owuibuild-volume-"))
    os.chmod(volume, 0o755)
    host: Host | None = None
    try:
        host = start_host(image, volume)
        install_postgres_files(host, plan, secrets)
        kept = postgres.template_dir(NEW)
        if template:
            made = host.run("/bin/sh", postgres.TEMPLATE_SCRIPT)
            assert made.returncode == 0, made.stdout + made.stderr
            again = host.run("/bin/sh", postgres.TEMPLATE_SCRIPT)
            assert again.stdout.strip().endswith("already there"), again.stdout
        cluster = volume / "postgresql" / str(NEW) / "main"
        if template:
            # A golden image's first boot: its first-boot unit prepares the cluster and queues
            # its start, and returns; the seed's own run below then only applies init.sql.
            early = host.run("/bin/sh", postgres.SETUP_SCRIPT, postgres.START_ONLY)
            assert early.returncode == 0, early.stdout + early.stderr
            assert (cluster / "PG_VERSION").read_text() == f"{NEW}\n"
            ready = host.run(
                "timeout",
                "120",
                "sh",
                "-c",
                f"until /usr/lib/postgresql/{NEW}/bin/pg_isready -q --host=/var/run/postgresql;"
                " do sleep 1; done",
            )
            assert ready.returncode == 0, ready.stdout + ready.stderr
            pending = "SELECT count(*) FROM pg_database WHERE datname IN ('alpha', 'beta')"
            assert host.superuser("postgres", pending) == "0"  # init.sql is the seed's step
        done = host.run("/bin/sh", postgres.SETUP_SCRIPT)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "refusing" not in done.stderr
        assert (cluster / "PG_VERSION").read_text() == f"{NEW}\n"
        assert stat.S_IMODE(cluster.stat().st_mode) == 0o700
        assert not cluster.with_name("main.copy").exists()
        assert host.run("systemctl", "is-active", NEW_UNIT).stdout.strip() == "active"
        databases = host.superuser(
            "postgres",
            "SELECT datname FROM pg_database WHERE datname IN ('alpha', 'beta') ORDER BY 1",
        )
        assert databases.splitlines() == ["alpha", "beta"]
        has_template = host.run("test", "-s", f"{kept}/PG_VERSION").returncode == 0
        assert has_template == template
        if template:
            data = postgres.data_dir(NEW)
            assert system_identifier(host, data) == system_identifier(host, kept)
    finally:
        if host is not None:
            subprocess.run(["docker", "rm", "-f", host.container], capture_output=True)
        shutil.rmtree(volume, ignore_errors=True)
