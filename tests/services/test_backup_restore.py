"""Backups on a real PostgreSQL 15: the GENERATED backup script, unmodified, dumps the instance
databases; a dump restores into a fresh database with the same rows; rotation keeps exactly
`keep` files; the runbook's swap SQL works.

The server is the one tests/services/test_postgres.py starts (imported fixture: initdb in a temp
dir, the generated postgresql.conf/pg_hba.conf/init SQL, run as the postgres OS user). The script
is run as root, as owui-backup.service runs it, with only what the unit would give it set from
outside: PGHOST/PGPORT (the unit's Environment= lines; here the temp cluster's socket and port),
and CREDENTIALS_DIRECTORY (what LoadCredential= provides; here a temp dir holding the generated
0600 header file). The test blueprint points shared.backups.directory at a temp dir.

Qdrant is a TEST DOUBLE (no Qdrant server on the test machines): a small HTTP server that
answers POST /snapshots, GET and DELETE /snapshots/<name> like Qdrant's API, and refuses any
request without the right api-key header. It listens on the blueprint's shared address inside
a private network namespace (unshare -n) where that address is put on the namespace's own
loopback, so the script talks to the URL it was generated with and no traffic leaves the
namespace. The PostgreSQL socket is a file, so it is reachable from inside the namespace.
"""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Rendered, compile_path, require_tool
from owuibuild.hostconfig import backup
from owuibuild.plan import FLEET_CA, SERVER_CERT, SERVER_KEY
from test_postgres import BLUEPRINT, HOST_OF, PG_BIN, Server, password, server

pytestmark = pytest.mark.services

__all__ = ["server"]  # the imported fixture: one PostgreSQL for this module

KEEP = 2

QDRANT_DOUBLE = r'''
"""TEST DOUBLE of Qdrant's snapshot API (NOT Qdrant): POST /snapshots makes a small file in
SNAPSHOTS and names it; GET/DELETE /snapshots/<name> serve and remove it. It speaks HTTPS only,
with the shared host's generated certificate and key, as Qdrant configured by the generator does.
Every request needs the api-key header to equal the key in KEY_FILE; each request is logged
with its TLS version (never the key).
Usage: qdrant-double ADDRESS PORT KEY_FILE SNAPSHOTS LOG READY CERT KEY [fail-create]"""
import json, ssl, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

address, port, key_file, snapshots, log, ready, cert, tls_key = sys.argv[1:9]
fail_create = sys.argv[9:] == ["fail-create"]
key = Path(key_file).read_text().strip()
snapshots = Path(snapshots)
counter = iter(range(1, 10**6))

class Handler(BaseHTTPRequestHandler):
    def reply(self, code, body, raw=None):
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        ok = self.headers.get("api-key") == key
        with open(log, "a") as fh:
            fh.write(json.dumps({"method": self.command, "path": self.path, "key_ok": ok,
                                 "tls": self.connection.version()}) + "\n")
        if not ok:
            return self.reply(401, {"status": {"error": "Invalid api-key"}})
        path = self.path.split("?")[0]
        if self.command == "POST" and path == "/snapshots":
            if fail_create:
                return self.reply(500, {"status": {"error": "TEST DOUBLE: no space left"}})
            name = f"full-snapshot-{time.strftime('%Y-%m-%d-%H-%M-%S')}-{next(counter)}.snapshot"
            (snapshots / name).write_bytes(b"TEST DOUBLE snapshot " + name.encode())
            return self.reply(200, {"result": {"name": name, "creation_time": None, "size": 1},
                                    "status": "ok", "time": 0.001})
        name = path.removeprefix("/snapshots/")
        file = snapshots / name
        if "/" in name or not file.is_file():
            return self.reply(404, {"status": {"error": "not found"}})
        if self.command == "GET":
            return self.reply(200, None, raw=file.read_bytes())
        if self.command == "DELETE":
            file.unlink()
            return self.reply(200, {"result": True, "status": "ok", "time": 0})
        return self.reply(405, {"status": {"error": "method"}})

    do_GET = do_POST = do_DELETE = handle_any

    def log_message(self, *args):
        pass

server = ThreadingHTTPServer((address, int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.minimum_version = ssl.TLSVersion.TLSv1_2
context.load_cert_chain(cert, tls_key)
server.socket = context.wrap_socket(server.socket, server_side=True)
Path(ready).touch()
server.serve_forever()
'''

# Runs in fresh network and mount namespaces: the shared address on its loopback, the fleet CA
# at its generated path (in a throwaway overlay of /etc that only this namespace sees), the
# Qdrant double on the address, then the generated script exactly as written.
IN_NAMESPACE = """\
set -eu
ip link set lo up
ip addr add "$QDRANT_ADDRESS/32" dev lo
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$OVERLAY/upper,workdir=$OVERLAY/work" /etc
install -D -m 0644 "$CA_COPY" "$FLEET_CA"
"$PYTHON" "$DOUBLE" "$QDRANT_ADDRESS" "$QDRANT_PORT" "$KEY" "$SNAPSHOTS" "$LOG" "$READY" \\
    "$TLS_CERT" "$TLS_KEY" $DOUBLE_MODE &
double=$!
tries=0
until [ -e "$READY" ]; do
    tries=$((tries + 1))
    [ "$tries" -lt 200 ] || { echo "the Qdrant TEST DOUBLE did not start" >&2; exit 99; }
    sleep 0.05
done
set +e
sh "$SCRIPT"
status=$?
kill "$double"
exit "$status"
"""


@dataclass
class Setup:
    rendered: Rendered
    backups: Path
    work: Path
    key: str

    @property
    def plan(self) -> Any:
        return self.rendered.plan

    def generated(self, path: str) -> str:
        """A file from the shared host's generated user-data."""
        doc = self.rendered.user_data(self.plan.shared.name)
        files = {f["path"]: f for f in doc["write_files"]}
        content: str = files[path]["content"]
        return content

    def dumps(self, database: str) -> list[Path]:
        return sorted((self.backups / "postgres" / database).glob("*.dump"))

    def snapshots(self) -> list[Path]:
        return sorted((self.backups / "qdrant").glob("*.snapshot"))

    def requests(self) -> list[dict[str, Any]]:
        log = self.work / "qdrant-requests.log"
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def make_setup(tmp_path: Path, extra_instance: str = "") -> Setup:
    work = tmp_path / "work"
    work.mkdir()
    backups = tmp_path / "backups"
    text = BLUEPRINT % {"redis_mode": "per-instance"}
    pg_line = "  postgres: {max_connections: 60}\n"
    assert pg_line in text
    text = text.replace(pg_line, f"{pg_line}  backups: {{keep: {KEEP}, directory: {backups}}}\n")
    if extra_instance:
        text = text.replace("instances:\n", f"instances:\n  - {extra_instance}\n")
    path = tmp_path / "backuptest.yml"
    path.write_text(text)
    rendered = compile_path(path)
    key: str = rendered.secrets[rendered.plan.qdrant_api_key.name]  # type: ignore[attr-defined, index]
    return Setup(rendered, backups, work, key)


def run_backup(
    server: Server, setup: Setup, double_mode: str = "", header_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The generated script, as owui-backup.service would run it (see the module docstring)."""
    require_tool("unshare", "ip", "curl", "mount")
    work = setup.work
    script = work / "backup.sh"
    script.write_text(setup.generated(backup.SCRIPT))
    credentials = work / "credentials"
    credentials.mkdir(mode=0o700, exist_ok=True)
    header = credentials / backup.CREDENTIAL
    header.write_text(setup.generated(backup.KEY_FILE) if header_text is None else header_text)
    header.chmod(0o600)
    (work / "double.py").write_text(QDRANT_DOUBLE)
    (work / "expected-key").write_text(setup.key)
    snapshots = work / "qdrant-snapshots"
    snapshots.mkdir(exist_ok=True)
    (work / "ready").unlink(missing_ok=True)
    address, port = setup.plan.qdrant_url.removeprefix("https://").rsplit(":", 1)
    assert FLEET_CA.startswith("/etc/"), FLEET_CA
    for name, path in (("ca.crt", FLEET_CA), ("server.crt", SERVER_CERT), ("server.key", SERVER_KEY)):
        (work / name).write_text(setup.generated(path))
        (work / name).chmod(0o600)
    overlay = work / "etc-overlay"
    shutil.rmtree(overlay, ignore_errors=True)
    (overlay / "upper").mkdir(parents=True)
    (overlay / "work").mkdir()
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PGHOST": str(server.root),
        "PGPORT": str(server.port),
        "CREDENTIALS_DIRECTORY": str(credentials),
        # for the namespace wrapper only; the script does not read these
        "QDRANT_ADDRESS": address, "QDRANT_PORT": port, "PYTHON": sys.executable,
        "DOUBLE": str(work / "double.py"), "KEY": str(work / "expected-key"),
        "SNAPSHOTS": str(snapshots), "LOG": str(work / "qdrant-requests.log"),
        "READY": str(work / "ready"), "SCRIPT": str(script), "DOUBLE_MODE": double_mode,
        "OVERLAY": str(overlay), "CA_COPY": str(work / "ca.crt"), "FLEET_CA": FLEET_CA,
        "TLS_CERT": str(work / "server.crt"), "TLS_KEY": str(work / "server.key"),
    }  # fmt: skip
    return subprocess.run(
        ["unshare", "-n", "-m", "sh", "-c", IN_NAMESPACE], env=env, capture_output=True, text=True,
        cwd="/", timeout=300,
    )  # fmt: skip


def superuser(server: Server, database: str, sql: str) -> str:
    result = subprocess.run(
        ["runuser", "-u", "postgres", "--", str(PG_BIN / "psql"), "--no-psqlrc", "-At",
         "-v", "ON_ERROR_STOP=1", "-h", str(server.root), "-p", str(server.port),
         "-d", database, "-c", sql],
        capture_output=True, text=True, cwd="/",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def as_role(server: Server, role: str, sql: str) -> str:
    """SQL as the instance's own role, over TCP from its host, with its generated password."""
    result = server.connect(role, role, password(server, role), HOST_OF[role], sql)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def notes(server: Server) -> Iterator[Callable[[str, int], None]]:
    """Give an instance database a table of ``rows`` rows, created by the instance's role."""
    made: list[str] = []

    def make(role: str, rows: int) -> None:
        as_role(server, role, "DROP TABLE IF EXISTS notes; "
                "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL); "
                f"INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, {rows}) g")  # fmt: skip
        made.append(role)

    yield make
    for role in made:
        as_role(server, role, "DROP TABLE IF EXISTS notes")


def test_backup_dumps_every_database_and_a_dump_restores_the_rows(
    server: Server, tmp_path: Path, notes: Callable[[str, int], None]
) -> None:
    notes("alpha", 1234)
    notes("beta", 7)
    setup = make_setup(tmp_path)
    result = run_backup(server, setup)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stderr

    for db in ("alpha", "beta", "gamma_local"):
        (dump,) = setup.dumps(db)
        assert dump.name.startswith(f"{db}-") and dump.name.endswith("Z.dump")
        st = dump.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == 0, dump
        assert dump.read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
        assert f"database {db} -> {dump}" in result.stdout
    assert stat.S_IMODE((setup.backups / "postgres" / "alpha").stat().st_mode) == 0o700
    assert not list(setup.backups.rglob(".*"))  # no partial file is left behind

    # Restore as the runbook says: a fresh database owned by the role, pg_restore on stdin.
    (dump,) = setup.dumps("alpha")
    try:
        superuser(server, "postgres", "CREATE DATABASE alpha_fresh OWNER alpha "
                  "ENCODING 'UTF8' LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' TEMPLATE template0")  # fmt: skip
        with dump.open("rb") as stdin:
            restored = subprocess.run(
                ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_restore"),
                 "--exit-on-error", "--single-transaction", "-h", str(server.root),
                 "-p", str(server.port), "--dbname=alpha_fresh"],
                stdin=stdin, capture_output=True, text=True, cwd="/",
            )  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        original = as_role(server, "alpha", "SELECT count(*), sum(id) FROM notes")
        copy = superuser(server, "alpha_fresh", "SELECT count(*), sum(id) FROM notes")
        assert copy == original == f"1234|{sum(range(1, 1235))}"
        owner = superuser(server, "alpha_fresh", "SELECT tableowner FROM pg_tables "
                          "WHERE tablename = 'notes'")  # fmt: skip
        assert owner == "alpha"
    finally:
        superuser(server, "postgres", "DROP DATABASE IF EXISTS alpha_fresh")


def test_qdrant_snapshot_is_copied_with_the_key_from_the_credential(
    server: Server, tmp_path: Path
) -> None:
    setup = make_setup(tmp_path)
    result = run_backup(server, setup)
    assert result.returncode == 0, result.stdout + result.stderr
    (snapshot,) = setup.snapshots()
    assert snapshot.read_bytes().startswith(b"TEST DOUBLE snapshot full-snapshot-")
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
    requests = setup.requests()
    assert [r["method"] for r in requests] == ["POST", "GET", "DELETE"]
    assert all(r["key_ok"] for r in requests), requests
    assert all(r["tls"] in ("TLSv1.2", "TLSv1.3") for r in requests), requests
    assert requests[0]["path"] == "/snapshots?wait=true"
    # Qdrant's own copy is gone: only the backup directory holds snapshots.
    assert not list((setup.work / "qdrant-snapshots").iterdir())
    assert setup.key not in result.stdout + result.stderr


def test_a_wrong_key_is_refused_and_reported(server: Server, tmp_path: Path) -> None:
    """The double really checks the header: with another key the snapshot step fails."""
    setup = make_setup(tmp_path)
    result = run_backup(server, setup, header_text="api-key: not-the-key\n")
    assert result.returncode == 1
    assert "owuibuild-backup: FAILED: Qdrant did not create a snapshot" in result.stderr
    assert [r["key_ok"] for r in setup.requests()] == [False]
    assert not setup.snapshots()
    assert len(setup.dumps("alpha")) == 1


def test_rotation_keeps_exactly_keep_files(server: Server, tmp_path: Path) -> None:
    setup = make_setup(tmp_path)
    names: list[list[str]] = []
    for _ in range(KEEP + 2):
        result = run_backup(server, setup)
        assert result.returncode == 0, result.stdout + result.stderr
        names.append([p.name for p in setup.dumps("beta")])
        time.sleep(1.1)  # names carry the time to the second
    assert [len(n) for n in names] == [1, 2, 2, 2]
    for db in ("alpha", "beta", "gamma_local"):
        assert len(setup.dumps(db)) == KEEP, db
    assert len(setup.snapshots()) == KEEP
    # The newest ones are kept: the last run's file and the one before it.
    assert names[-1] == sorted({*names[-2], *names[-1]})[-KEEP:]
    assert names[-1][0] == names[-2][-1]


def test_a_failed_step_is_loud_and_does_not_stop_the_others(server: Server, tmp_path: Path) -> None:
    """A database that is missing and a Qdrant that refuses: both reported, exit 1, and every
    other database is still dumped."""
    setup = make_setup(tmp_path, extra_instance="{name: delta, host: web-b, port: 3001}")
    assert "delta" in setup.generated(backup.SCRIPT)
    result = run_backup(server, setup, double_mode="fail-create")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "owuibuild-backup: FAILED: pg_dump of database delta" in result.stderr
    assert "owuibuild-backup: FAILED: Qdrant did not create a snapshot" in result.stderr
    assert not setup.dumps("delta")
    assert not list((setup.backups / "postgres" / "delta").iterdir())  # no partial file
    for db in ("alpha", "beta", "gamma_local"):
        assert len(setup.dumps(db)) == 1, db
    assert not setup.snapshots()


def test_the_runbook_swap_puts_the_restored_database_in_place(
    server: Server, tmp_path: Path, notes: Callable[[str, int], None]
) -> None:
    """The runbook's restore steps, run for real: the role reaches the restored database under
    the real name, from its host, with its own password."""
    notes("beta", 42)
    setup = make_setup(tmp_path)
    assert run_backup(server, setup).returncode == 0
    example = setup.plan.instances[0].db_name
    runbook = backup.restore_runbook(setup.plan).replace(example, "beta")
    swap = runbook.split("<<'SQL'\n", 1)[1].split("\nSQL\n", 1)[0]
    assert "RENAME TO" in swap and "GRANT CONNECT" in swap
    (dump,) = setup.dumps("beta")
    as_role(server, "beta", "DELETE FROM notes WHERE id > 10")  # the damage to undo
    try:
        superuser(server, "postgres", "CREATE DATABASE beta_restore OWNER beta ENCODING 'UTF8' "
                  "LC_COLLATE 'C.UTF-8' LC_CTYPE 'C.UTF-8' TEMPLATE template0")  # fmt: skip
        with dump.open("rb") as stdin:
            subprocess.run(
                ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_restore"),
                 "--exit-on-error", "--single-transaction", "-h", str(server.root),
                 "-p", str(server.port), "--dbname=beta_restore"],
                stdin=stdin, check=True, capture_output=True, cwd="/",
            )  # fmt: skip
        superuser(server, "postgres", swap)
        assert as_role(server, "beta", "SELECT count(*) FROM notes") == "42"
        assert superuser(server, "postgres", "SELECT has_database_privilege('alpha', 'beta', "
                         "'CONNECT')") == "f"  # fmt: skip
    finally:
        superuser(server, "postgres", "DROP DATABASE IF EXISTS beta_before_restore")
        superuser(server, "postgres", "DROP DATABASE IF EXISTS beta_restore")


def test_script_is_run_unmodified(tmp_path: Path) -> None:
    """What the tests above run is byte for byte what the shared host gets."""
    setup = make_setup(tmp_path)
    assert setup.generated(backup.SCRIPT) == backup.script(setup.plan, setup.plan.shared)
