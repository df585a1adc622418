"""PostgreSQL: the generated postgresql.conf, pg_hba.conf and init SQL on a real server.

A PostgreSQL from Debian's package (initdb/pg_ctl) runs in a temp dir as the postgres user.
The test blueprint's addresses never touch the host network: ADDRESS_MAP rewrites them to
loopback aliases (all of 127.0.0.0/8 is loopback on Linux) in the generated files, and
clients reach the server through a small relay that binds the source address of the host a
connection must seem to come from (libpq cannot choose its source address).
Only paths and the port are overridden, in lines appended after the generated ones (later
lines win): the paths of this temp cluster (the certificate and key files included: the
generated host certificate and key are copied there, as the setup script copies them on a
host) and a free port. TLS stays on, as generated. Clients verify the server as the instances
do (sslmode=verify-full against the fleet CA, for the blueprint's address), while libpq's
`hostaddr` sends them to the relay: the blueprint's address is only a name here.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Rendered, compile_path, require_tool, unavailable
from owuibuild import pki
from owuibuild.hostconfig import postgres
from owuibuild.secrets import Secrets

pytestmark = pytest.mark.services

PG_BIN = Path("/usr/lib/postgresql/15/bin")

BLUEPRINT = """
apiVersion: owuibuild/v1
name: pgtest
admin:
  user: ops
  ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwuibuildExampleKeyReplaceWithYourOwn00000 ops@x"]
  allow_from: [10.9.0.0/24]
network: {cidr: 10.9.0.0/24, gateway: 10.9.0.1, dns: [10.9.0.1], container_pool: 127.64.0.0/16}
shared:
  host: {name: ai-shared, address: 10.9.0.10, data_volume: {label: owui-data}}
  postgres: {max_connections: 60}
  redis: {mode: %(redis_mode)s}
hosts:
  - {name: web-a, address: 10.9.0.20, data_volume: {label: owui-data}}
  - {name: web-b, address: 10.9.0.21, data_volume: {label: owui-data}}
instances:
  - {name: alpha, host: web-a, port: 3000}
  - {name: beta, host: web-b, port: 3000}
  - {name: gamma-local, host: ai-shared, port: 3000}
"""

# Blueprint address -> loopback alias standing in for it in this test.
ADDRESS_MAP = {"10.9.0.10": "127.0.0.10", "10.9.0.20": "127.0.0.20", "10.9.0.21": "127.0.0.21"}
SHARED = ADDRESS_MAP["10.9.0.10"]
# The name clients verify the server's certificate for: the blueprint's address, never dialled.
SHARED_NAME = "10.9.0.10"
# gamma_local runs on the database host itself: its connections come from its container's fixed
# address on its own Docker network (the third /28 of container_pool, 127.64.0.32/28, loopback
# here: .33 is the bridge's gateway, .34 the container), not the host address.
HOST_OF = {"alpha": "127.0.0.20", "beta": "127.0.0.21", "gamma_local": "127.64.0.34"}
# Any process on the database host can bind the bridge's gateway address: it must not pass.
GAMMA_GATEWAY = "127.64.0.33"


def map_addresses(text: str) -> str:
    for real, test in ADDRESS_MAP.items():
        text = text.replace(real, test)
    assert "10.9.0." not in text
    return text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Relay:
    """Accepts on 127.0.0.1 and forwards to ``target``, binding ``source`` as the client address."""

    def __init__(self, source: str, target: tuple[str, int]) -> None:
        self.source, self.target = source, target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket()
            upstream.bind((self.source, 0))
            upstream.connect(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()


@dataclass
class Server:
    root: Path
    port: int
    rendered: Rendered

    def superuser(self, sql: str) -> str:
        """Run SQL as postgres over the unix socket (peer authentication, as on the host)."""
        result = subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "psql"),
                "--no-psqlrc",
                "-At",
                "-h",
                str(self.root),
                "-p",
                str(self.port),
                "-d",
                "postgres",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            cwd="/",
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def apply_sql(self, text: str) -> subprocess.CompletedProcess[str]:
        path = self.root / "init.sql"
        path.write_text(text)
        os.chmod(path, 0o600)
        shutil.chown(path, "postgres", "postgres")
        return subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "psql"),
                "--no-psqlrc",
                "--quiet",
                "-h",
                str(self.root),
                "-p",
                str(self.port),
                "--set=ON_ERROR_STOP=1",
                f"--file={path}",
            ],
            capture_output=True,
            text=True,
            cwd="/",
        )

    @property
    def ca_file(self) -> Path:
        return self.root / "fleet-ca.crt"

    def connect(
        self,
        role: str,
        database: str,
        password: str,
        source: str,
        sql: str = "SELECT current_user",
        tls: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """psql as ``role`` to ``database``, arriving from ``source``; over TLS verified as
        the instances verify it unless ``tls`` gives other libpq settings."""
        relay = Relay(source, (SHARED, self.port))
        tls = tls or f"sslmode=verify-full sslrootcert={self.ca_file}"
        try:
            return subprocess.run(
                [
                    str(PG_BIN / "psql"),
                    "--no-psqlrc",
                    "-At",
                    "-c",
                    sql,
                    f"host={SHARED_NAME} hostaddr=127.0.0.1 port={relay.port} user={role} "
                    f"dbname={database} {tls} connect_timeout=10",
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "PGPASSWORD": password},
                timeout=60,
            )
        finally:
            relay.close()


def _require_postgres() -> None:
    if not (PG_BIN / "initdb").exists():
        unavailable("PostgreSQL 15 server binaries are missing (apt postgresql)")
    if os.geteuid() != 0:
        unavailable("the test runs PostgreSQL as the postgres user, which needs root")
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        unavailable("the postgres system user is missing (apt postgresql)")


def render_blueprint(directory: Path, redis_mode: str = "per-instance") -> Rendered:
    path = directory / f"pgtest-{redis_mode}.yml"
    path.write_text(BLUEPRINT % {"redis_mode": redis_mode})
    return compile_path(path)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server for the module (initdb takes seconds); tests leave it as they found it."""
    _require_postgres()
    rendered = render_blueprint(tmp_path_factory.mktemp("blueprint"))
    root = Path(tempfile.mkdtemp(prefix="owuibuild-pg-"))
    os.chmod(root, 0o755)
    shutil.chown(root, "postgres", "postgres")
    data = root / "data"
    port = free_port()
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(PG_BIN / "initdb"),
            f"--pgdata={data}",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "--username=postgres",
        ],
        check=True,
        capture_output=True,
        cwd="/",
    )
    plan = rendered.plan
    conf = map_addresses(postgres.postgresql_conf(plan))  # type: ignore[arg-type]
    hba = map_addresses(postgres.pg_hba_conf(plan))  # type: ignore[arg-type]
    overrides = (
        "\n# test overrides: this temp cluster's paths and a free port\n"
        f"data_directory = '{data}'\nhba_file = '{root}/pg_hba.conf'\n"
        f"ident_file = '{root}/pg_ident.conf'\nexternal_pid_file = '{root}/pg.pid'\n"
        f"unix_socket_directories = '{root}'\nport = {port}\n"
        f"ssl_cert_file = '{root}/server.crt'\nssl_key_file = '{root}/server.key'\n"
    )
    issued = rendered.secrets.tls.hosts["ai-shared"]  # type: ignore[attr-defined]
    for name, text in (
        ("postgresql.conf", conf + overrides),
        ("pg_hba.conf", hba),
        ("pg_ident.conf", ""),
        ("server.crt", issued.cert),
        ("server.key", issued.key),
        ("fleet-ca.crt", rendered.secrets.tls.ca_cert),  # type: ignore[attr-defined]
    ):
        (root / name).write_text(text)
        shutil.chown(root / name, "postgres", "postgres")
    os.chmod(root / "server.key", 0o600)
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            f"-c config_file={root}/postgresql.conf",
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
        cwd="/",
    )
    srv = Server(root, port, rendered)
    try:
        result = srv.apply_sql(postgres.init_sql(plan, rendered.secrets))  # type: ignore[arg-type]
        assert result.returncode == 0, result.stderr
        yield srv
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-m",
                "immediate",
                "stop",
            ],
            capture_output=True,
            cwd="/",
        )
        shutil.rmtree(root, ignore_errors=True)


def password(srv: Server, role: str) -> str:
    inst = next(i for i in srv.rendered.plan.instances if i.db_role == role)  # type: ignore[attr-defined]
    value: str = srv.rendered.secrets[inst.db_password.name]  # type: ignore[index]
    return value


ROLES = ["alpha", "beta", "gamma_local"]


def test_the_server_listens_on_the_mapped_private_address(server: Server) -> None:
    assert server.superuser("SHOW listen_addresses") == f"{SHARED},localhost"
    assert server.superuser("SHOW max_connections") == "60"
    assert server.superuser("SHOW password_encryption") == "scram-sha-256"


@pytest.mark.parametrize("role", ROLES)
def test_each_role_reaches_its_own_database_from_its_host(server: Server, role: str) -> None:
    result = server.connect(role, role, password(server, role), HOST_OF[role])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == role


@pytest.mark.parametrize("role", ROLES)
def test_no_role_reaches_another_database(server: Server, role: str) -> None:
    for other in ROLES:
        if other != role:
            result = server.connect(role, other, password(server, role), HOST_OF[role])
            assert result.returncode != 0
            assert "pg_hba.conf rejects connection" in result.stderr


@pytest.mark.parametrize("role", ROLES)
def test_no_role_connects_from_another_address(server: Server, role: str) -> None:
    for source in [*HOST_OF.values(), "127.0.0.1", "127.0.0.99"]:
        if source == HOST_OF[role]:
            continue
        result = server.connect(role, role, password(server, role), source)
        assert result.returncode != 0, source
        assert "pg_hba.conf rejects connection" in result.stderr


def test_wrong_password_is_refused(server: Server) -> None:
    result = server.connect("alpha", "alpha", password(server, "beta"), HOST_OF["alpha"])
    assert "password authentication failed" in result.stderr


@pytest.mark.parametrize("role", ROLES)
def test_roles_are_unprivileged(server: Server, role: str) -> None:
    flags = server.superuser(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls "
        f"FROM pg_roles WHERE rolname = '{role}'"
    )
    assert flags == "f|f|f|f|f"
    for sql, message in (
        ("CREATE ROLE intruder", "permission denied to create role"),
        ("CREATE DATABASE intruder", "permission denied to create database"),
    ):
        result = server.connect(role, role, password(server, role), HOST_OF[role], sql)
        assert message in result.stderr


def test_databases_are_utf8_owned_and_closed_to_public(server: Server) -> None:
    rows = server.superuser(
        "SELECT datname, pg_encoding_to_char(encoding), pg_get_userbyid(datdba) FROM pg_database "
        "WHERE datname IN ('alpha', 'beta', 'gamma_local') ORDER BY 1"
    )
    assert rows.splitlines() == [f"{r}|UTF8|{r}" for r in ROLES]
    # REVOKE CONNECT ... FROM PUBLIC: no other role may connect, even if pg_hba allowed it.
    for db in ROLES:
        for role in ROLES:
            allowed = server.superuser(
                f"SELECT has_database_privilege('{role}', '{db}', 'CONNECT')"
            )
            assert allowed == ("t" if role == db else "f"), (role, db)
    public = server.superuser(
        "SELECT count(*) FROM pg_database d, aclexplode(d.datacl) a "
        "WHERE d.datname IN ('alpha', 'beta', 'gamma_local') AND a.grantee = 0"
    )
    assert public == "0"
    # Nor may any instance role connect to the maintenance database or the default template
    # (template0 does not allow connections at all).
    for db in ("postgres", "template1"):
        for role in ROLES:
            allowed = server.superuser(
                f"SELECT has_database_privilege('{role}', '{db}', 'CONNECT')"
            )
            assert allowed == "f", (role, db)


def test_init_sql_is_idempotent_and_realigns_passwords(server: Server) -> None:
    plan, secrets = server.rendered.plan, server.rendered.secrets
    again = server.apply_sql(postgres.init_sql(plan, secrets))  # type: ignore[arg-type]
    assert again.returncode == 0, again.stderr
    assert (
        server.connect("alpha", "alpha", password(server, "alpha"), HOST_OF["alpha"]).returncode
        == 0
    )

    # Someone changed alpha's password on the server; the next run brings it back in line.
    server.superuser("ALTER ROLE alpha PASSWORD 'drifted'")
    assert server.apply_sql(postgres.init_sql(plan, secrets)).returncode == 0  # type: ignore[arg-type]
    assert (
        server.connect("alpha", "alpha", password(server, "alpha"), HOST_OF["alpha"]).returncode
        == 0
    )

    # A new secret (as after editing the secrets file) replaces the old password.
    name = next(i.db_password.name for i in plan.instances if i.db_role == "alpha")  # type: ignore[attr-defined]
    rotated = Secrets({**secrets.values, name: "rotated-password-0123456789abcdef"})  # type: ignore[attr-defined]
    assert server.apply_sql(postgres.init_sql(plan, rotated)).returncode == 0  # type: ignore[arg-type]
    assert (
        server.connect(
            "alpha", "alpha", "rotated-password-0123456789abcdef", HOST_OF["alpha"]
        ).returncode
        == 0
    )
    old = server.connect("alpha", "alpha", password(server, "alpha"), HOST_OF["alpha"])
    assert "password authentication failed" in old.stderr
    assert server.superuser("SELECT count(*) FROM pg_roles WHERE rolname = 'alpha'") == "1"
    # Leave the server as the fixture made it for any test that runs later.
    assert server.apply_sql(postgres.init_sql(plan, secrets)).returncode == 0  # type: ignore[arg-type]


# -- TLS ------------------------------------------------------------------------------------------


def s_client(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """openssl s_client through PostgreSQL's STARTTLS, verifying as the instances do."""
    return subprocess.run(
        ["openssl", "s_client", "-starttls", "postgres", "-connect", f"{SHARED}:{server.port}",
         "-verify_return_error", "-brief", *args],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_tls_1_2_or_later_with_the_host_certificate(server: Server) -> None:
    require_tool("openssl")
    ok = s_client(server, "-CAfile", str(server.ca_file), "-verify_ip", SHARED_NAME)
    assert ok.returncode == 0, ok.stderr
    assert "Verification: OK" in ok.stderr
    assert "Peer certificate: CN = ai-shared" in ok.stderr
    assert re.search(r"Protocol version: TLSv1\.[23]\b", ok.stderr), ok.stderr
    for old in ("-tls1", "-tls1_1"):
        refused = s_client(server, "-CAfile", str(server.ca_file), old)
        assert refused.returncode != 0, old


def test_plain_text_and_unverified_clients_are_refused(
    server: Server, tmp_path_factory: pytest.TempPathFactory
) -> None:
    role = "alpha"
    plain = server.connect(role, role, password(server, role), HOST_OF[role], tls="sslmode=disable")
    assert plain.returncode != 0 and "no encryption" in plain.stderr, plain.stderr
    # A client that trusts another CA refuses the server (and so never sends the password).
    other = tmp_path_factory.mktemp("other-ca") / "ca.crt"
    other.write_text(pki.issue_ca("another", datetime.date.today()).cert)
    wrong_ca = server.connect(role, role, password(server, role), HOST_OF[role],
                              tls=f"sslmode=verify-full sslrootcert={other}")  # fmt: skip
    assert wrong_ca.returncode != 0 and "certificate verify failed" in wrong_ca.stderr
    # verify-full also checks the name: the certificate is the shared host's alone.
    relay = Relay(HOST_OF[role], (SHARED, server.port))
    try:
        wrong_name = subprocess.run(
            [str(PG_BIN / "psql"), "--no-psqlrc", "-At", "-c", "SELECT 1",
             f"host=10.9.0.99 hostaddr=127.0.0.1 port={relay.port} user={role} dbname={role} "
             f"sslmode=verify-full sslrootcert={server.ca_file} connect_timeout=10"],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "PGPASSWORD": password(server, role)},
        )  # fmt: skip
    finally:
        relay.close()
    assert wrong_name.returncode != 0 and "does not match host name" in wrong_name.stderr
    # The right CA and name work (the other tests connect this way).
    right = server.connect(role, role, password(server, role), HOST_OF[role])
    assert right.returncode == 0 and right.stdout.strip() == role, right.stderr


def test_the_bridge_gateway_of_a_local_instance_is_not_that_instance(server: Server) -> None:
    """pg_hba admits gamma_local's container address alone, not its Docker network: a local
    process bound to the bridge's gateway address gets no login with gamma_local's password."""
    role = "gamma_local"
    own = server.connect(role, role, password(server, role), HOST_OF[role])
    assert own.returncode == 0, own.stderr
    gateway = server.connect(role, role, password(server, role), GAMMA_GATEWAY)
    assert gateway.returncode != 0 and "pg_hba.conf rejects connection" in gateway.stderr
