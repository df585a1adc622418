"""The Open WebUI upgrade guard on the PostgreSQL host itself, against a real PostgreSQL 15.

An instance on the database host dumps as postgres over the local socket (its role is admitted
only from its container). The server is the one tests/services/test_postgres.py starts (imported
fixture: the generated pg_hba.conf and init SQL; the blueprint's `gamma-local` runs on the
database host). The GENERATED guard script runs with its unit's own command line, except the
data directory (a temp dir), in a private mount namespace where a tmpfs over the socket
directory holds a link from the generated port's socket name to this cluster's socket: the
only thing that differs from a host. The containers tier runs the other path (over the network
as the instance's role) against a real Open WebUI.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import require_tool
from owuibuild.hostconfig import _upgrade as upgrade
from owuibuild.hostconfig.postgres import SOCKET_DIR
from owuibuild.plan import POSTGRES_PORT, Plan
from test_postgres import PG_BIN, Server, server

pytestmark = pytest.mark.services

__all__ = ["server"]  # the imported fixture

IN_NAMESPACE = """\
set -eu
mount -t tmpfs -o mode=0755 tmpfs "$SOCKETS"
ln -s "$CLUSTER_SOCKET" "$SOCKETS/.s.PGSQL.$PORT"
exec "$@"
"""


def guard(server: Server, data: Path, mode: str, version: str) -> subprocess.CompletedProcess[str]:
    plan = server.rendered.plan
    assert isinstance(plan, Plan)
    (inst,) = [i for i in plan.instances if i.name == "gamma-local"]
    files = {
        f["path"]: f["content"] for f in server.rendered.user_data(inst.host.name)["write_files"]
    }
    script = data.parent / "guard.sh"
    script.write_text(files[upgrade.GUARD_SCRIPT])
    unit = files[f"/etc/systemd/system/{inst.unit_name}"]
    key = "ExecStartPre" if mode == "check" else "ExecStartPost"
    (argv,) = [
        shlex.split(line.split("=", 1)[1])
        for line in unit.splitlines()
        if line.startswith(f"{key}=") and f"{upgrade.GUARD_SCRIPT} {mode} " in line
    ]
    args = [str(data) if a == inst.data_dir else a for a in argv[2:]]
    args[2] = version
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "SOCKETS": SOCKET_DIR,
        "PORT": str(POSTGRES_PORT),
        "CLUSTER_SOCKET": str(server.root / f".s.PGSQL.{server.port}"),
    }
    command = ["unshare", "--mount", "sh", "-c", IN_NAMESPACE, "ns", "sh", str(script), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_the_guard_dumps_over_the_local_socket_and_the_dump_restores(
    server: Server, tmp_path: Path
) -> None:
    require_tool("unshare", "mount")
    data = tmp_path / "data"
    data.mkdir()
    dumps = data / upgrade.DUMP_DIR
    # A new instance: the empty database needs no dump.
    done = guard(server, data, "check", "0.12.4")
    assert done.returncode == 0, done.stderr
    assert "nothing to dump" in done.stderr and not dumps.exists()

    # A fleet from before the stamp: tables and no stamp: dumped as "unknown".
    for sql in (
        "CREATE TABLE notes (body text)",
        "INSERT INTO notes VALUES ('written before the upgrade')",
        "ALTER TABLE notes OWNER TO gamma_local",
    ):
        run_in(server, "gamma_local", sql)
    done = guard(server, data, "check", "0.12.4")
    assert done.returncode == 0, done.stderr
    (unknown,) = dumps.iterdir()
    assert unknown.name.endswith("-openwebui-unknown.dump")
    assert unknown.stat().st_mode & 0o777 == 0o600
    # It did not become healthy: the next try keeps that dump and takes no other.
    done = guard(server, data, "check", "0.12.4")
    assert done.returncode == 0 and "keeping its dump" in done.stderr
    assert list(dumps.iterdir()) == [unknown]
    assert guard(server, data, "stamp", "0.12.4").returncode == 0

    # Each later version dumps the one before; the newest three are kept.
    for old, new in (("0.12.4", "0.12.5"), ("0.12.5", "0.12.10"), ("0.12.10", "0.13.0")):
        subprocess.run(["sleep", "1"], check=True)  # dumps are named to the second
        done = guard(server, data, "check", new)
        assert done.returncode == 0, done.stderr
        assert f"-openwebui-{old}.dump" in done.stderr
        assert guard(server, data, "stamp", new).returncode == 0
    names = sorted(p.name.split("-openwebui-")[1] for p in dumps.iterdir())
    assert names == ["0.12.10.dump", "0.12.4.dump", "0.12.5.dump"]

    # The newest dump restores into a fresh database, with the rows.
    newest = sorted(dumps.iterdir())[-1]
    run_in(server, "postgres", "CREATE DATABASE guard_restored TEMPLATE template0")
    restored = subprocess.run(
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_restore"), "--exit-on-error",
         "--single-transaction", "-h", str(server.root), "-p", str(server.port),
         "--dbname=guard_restored"],
        stdin=newest.open("rb"), capture_output=True, cwd="/",
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert (
        run_in(server, "guard_restored", "SELECT body FROM notes") == "written before the upgrade"
    )
    run_in(server, "postgres", "DROP DATABASE guard_restored")
    run_in(server, "gamma_local", "DROP TABLE notes")

    # 0.12.10 on data 0.13.0 ran on: refused, restoring as postgres over the socket.
    done = guard(server, data, "check", "0.12.10")
    assert done.returncode == 1
    assert "migrated by Open WebUI 0.13.0" in done.stderr
    assert f"runuser -u postgres -- {PG_BIN}/pg_restore --clean --if-exists" in done.stderr


def run_in(server: Server, database: str, sql: str) -> str:
    out = subprocess.run(
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "psql"), "--no-psqlrc", "-At",
         "-v", "ON_ERROR_STOP=1", "-h", str(server.root), "-p", str(server.port),
         "-d", database, "-c", sql],
        capture_output=True, text=True, cwd="/",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()
