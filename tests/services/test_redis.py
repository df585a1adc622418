"""Redis: the generated redis.conf files (with their ACL users) on real redis-server processes.

The blueprint and the address mapping are test_postgres's: ADDRESS_MAP rewrites the shared
host's address to a loopback alias in the generated configuration. Besides that, only the
paths (dir, pidfile, the host certificate and key) and the TLS ports (free ones, in case a
Redis already runs here) change: the data directory is rewritten in place, the rest appended
(redis.conf's last line wins). Every client speaks TLS and trusts only the fleet CA.
"""

from __future__ import annotations

import datetime
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Rendered, require_tool
from owuibuild import pki
from owuibuild.hostconfig import redis
from test_postgres import SHARED, free_port, map_addresses, render_blueprint

pytestmark = pytest.mark.services


@dataclass
class RedisServer:
    name: str
    port: int
    users: dict[str, str]  # user -> password


@dataclass
class Fleet:
    rendered: Rendered
    servers: list[RedisServer]

    def password(self, user: str) -> str:
        inst = next(i for i in self.rendered.plan.instances if i.redis_user == user)  # type: ignore[attr-defined]
        value: str = self.rendered.secrets[inst.redis_password.name]  # type: ignore[index]
        return value


# The fleet CA's certificate of the server on each port (each fixture renders its own fleet,
# with its own CA), written when the server starts; redis-cli trusts only it.
CA_OF_PORT: dict[int, Path] = {}


def cli(
    port: int,
    *args: str,
    user: str | None = None,
    password: str | None = None,
    tls: bool = True,
) -> str:
    command = ["redis-cli", "-h", SHARED, "-p", str(port), "--no-auth-warning"]
    if tls:
        command += ["--tls", "--cacert", str(CA_OF_PORT[port])]
    if user is not None:
        command += ["--user", user, "--pass", password or ""]
    result = subprocess.run([*command, *args], capture_output=True, text=True, timeout=30)
    return (result.stdout + result.stderr).strip()


def start(rendered: Rendered, root: Path) -> Iterator[Fleet]:
    plan = rendered.plan
    processes = []
    servers = []
    tls = rendered.secrets.tls  # type: ignore[attr-defined]
    for name, text in (
        ("server.crt", tls.hosts["ai-shared"].cert),
        ("server.key", tls.hosts["ai-shared"].key),
        ("fleet-ca.crt", tls.ca_cert),
    ):
        (root / name).write_text(text)
        (root / name).chmod(0o600)
    try:
        for server in plan.redis_servers:  # type: ignore[attr-defined]
            port = free_port()
            CA_OF_PORT[port] = root / "fleet-ca.crt"
            data = root / server.name
            data.mkdir()
            conf = map_addresses(redis.redis_conf(plan, server, rendered.secrets))  # type: ignore[arg-type]
            # redis changes into `dir` while it reads the file, so that line is rewritten.
            conf = conf.replace(f'dir "{redis.data_dir(server)}"', f'dir "{data}"')
            conf += (
                f"\n# test overrides\npidfile {data}/redis.pid\ntls-port {port}\nsupervised no\n"
                f"tls-cert-file {root}/server.crt\ntls-key-file {root}/server.key\n"
            )
            path = root / f"redis-{server.name}.conf"
            path.write_text(conf)
            processes.append(
                subprocess.Popen(
                    ["redis-server", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
                )
            )
            servers.append(
                RedisServer(server.name, port, {i.redis_user: "" for i in server.instances})
            )
        fleet = Fleet(rendered, servers)
        for s in servers:
            for _ in range(100):
                if "NOAUTH" in cli(s.port, "PING") or "denied" in cli(s.port, "PING"):
                    break
                time.sleep(0.1)
        yield fleet
    finally:
        for p in processes:
            p.terminate()
            p.wait(10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def per_instance(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_tool("redis-server", "redis-cli")
    rendered = render_blueprint(tmp_path_factory.mktemp("bp"))
    yield from start(rendered, tmp_path_factory.mktemp("redis"))


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_tool("redis-server", "redis-cli")
    rendered = render_blueprint(tmp_path_factory.mktemp("bp"), redis_mode="shared")
    yield from start(rendered, tmp_path_factory.mktemp("redis"))


USERS = ["alpha", "beta", "gamma-local"]


def test_one_server_per_instance_on_the_private_address(per_instance: Fleet) -> None:
    assert [s.name for s in per_instance.servers] == USERS
    for s in per_instance.servers:
        assert list(s.users) == [s.name]
        info = cli(
            s.port, "CONFIG", "GET", "bind", user=s.name, password=per_instance.password(s.name)
        )
        # CONFIG is an admin command: instance users may not run it.
        assert "NOPERM" in info


# @admin commands whose effect, were one allowed, is harmless to the running test server.
ADMIN_COMMANDS = [
    ("CONFIG", "GET", "bind"),
    ("ACL", "LIST"),
    ("CONFIG", "RESETSTAT"),
    ("SLOWLOG", "GET"),
    ("CLIENT", "LIST"),
    ("LASTSAVE",),
]


@pytest.mark.parametrize("command", ADMIN_COMMANDS, ids=lambda c: " ".join(c))
def test_instance_users_may_not_run_admin_commands(
    per_instance: Fleet, shared: Fleet, command: tuple[str, ...]
) -> None:
    for fleet in (per_instance, shared):
        for s in fleet.servers:
            for user in s.users:
                answer = cli(s.port, *command, user=user, password=fleet.password(user))
                assert "NOPERM" in answer, (s.name, user, command, answer)


def test_migrate_cannot_make_the_server_dial_out(per_instance: Fleet, shared: Fleet) -> None:
    """MIGRATE (and every other @dangerous command) is refused, so an instance cannot make the
    shared host's Redis open a connection past the firewall to a loopback listener."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        for fleet in (per_instance, shared):
            for s in fleet.servers:
                for user in s.users:
                    secret = fleet.password(user)
                    assert cli(s.port, "SET", f"{user}:m", "v", user=user, password=secret) == "OK"
                    for command in (
                        ("MIGRATE", "127.0.0.1", str(port), f"{user}:m", "0", "1000"),
                        ("SORT", f"{user}:m"),
                        ("FLUSHALL",),
                        ("KEYS", "*"),
                    ):
                        answer = cli(s.port, *command, user=user, password=secret)
                        assert "NOPERM" in answer, (s.name, user, command, answer)
        with pytest.raises(TimeoutError):
            listener.accept()[0].close()


def test_acl_users_are_known_by_their_password_hash(per_instance: Fleet) -> None:
    """The configuration holds no password, and the hash it holds admits the real one."""
    plan = per_instance.rendered.plan
    for s, server in zip(per_instance.servers, plan.redis_servers, strict=True):  # type: ignore[attr-defined]
        text = redis.redis_conf(plan, server, per_instance.rendered.secrets)  # type: ignore[arg-type]
        secret = per_instance.password(s.name)
        assert secret not in text and redis.acl_password(secret) in text
        assert cli(s.port, "PING", user=s.name, password=secret) == "PONG"
        assert "WRONGPASS" in cli(s.port, "PING", user=s.name, password=secret[:-1] + "x")


@pytest.mark.parametrize("user", USERS)
def test_each_user_works_on_its_own_server_only(per_instance: Fleet, user: str) -> None:
    secret = per_instance.password(user)
    for s in per_instance.servers:
        if s.name == user:
            assert cli(s.port, "SET", f"{user}:k", "v", user=user, password=secret) == "OK"
            assert cli(s.port, "GET", f"{user}:k", user=user, password=secret) == "v"
            assert cli(s.port, "PUBLISH", "socketio", "x", user=user, password=secret) == "0"
        else:
            answer = cli(s.port, "PING", user=user, password=secret)
            assert "WRONGPASS" in answer, (s.name, answer)


def test_default_user_is_off(per_instance: Fleet) -> None:
    for s in per_instance.servers:
        assert "NOAUTH" in cli(s.port, "PING")
        assert "WRONGPASS" in cli(s.port, "PING", user="default", password="")
        assert "WRONGPASS" in cli(s.port, "PING", user="default", password="nopass")


def test_protected_mode_and_maxmemory_from_the_blueprint(per_instance: Fleet) -> None:
    plan = per_instance.rendered.plan
    text = redis.redis_conf(plan, plan.redis_servers[0], per_instance.rendered.secrets)  # type: ignore[attr-defined,arg-type]
    assert "\nprotected-mode yes\n" in text
    assert f"\nmaxmemory {plan.fleet.shared.redis.maxmemory_mb}mb\n" in text  # type: ignore[attr-defined]


def test_shared_mode_confines_each_user_to_its_prefix(shared: Fleet) -> None:
    (server,) = shared.servers
    assert set(server.users) == set(USERS)
    for user in USERS:
        secret = shared.password(user)
        assert cli(server.port, "SET", f"{user}:k", "v", user=user, password=secret) == "OK"
        for other in USERS:
            if other != user:
                answer = cli(server.port, "GET", f"{other}:k", user=user, password=secret)
                assert "NOPERM" in answer, answer
        assert "NOPERM" in cli(server.port, "FLUSHALL", user=user, password=secret)
        assert "NOPERM" in cli(server.port, "KEYS", "*", user=user, password=secret)
    assert "NOAUTH" in cli(server.port, "PING")


def test_shared_mode_leaks_what_its_warning_says(shared: Fleet) -> None:
    """The validator's warning for mode: shared is true: prefixes do not hide key names."""
    (server,) = shared.servers
    user, other = USERS[0], USERS[1]
    secret = shared.password(user)
    assert (
        cli(
            server.port, "SET", f"{other}:visible", "v", user=other, password=shared.password(other)
        )
        == "OK"
    )
    assert f"{other}:visible" in cli(
        server.port, "SCAN", "0", "COUNT", "1000", user=user, password=secret
    )
    assert int(cli(server.port, "DBSIZE", user=user, password=secret)) >= 1


# -- TLS ------------------------------------------------------------------------------------------

# The name clients verify the server's certificate for: the blueprint's address, never dialled.
SHARED_NAME = "10.9.0.10"


def test_tls_1_2_or_later_with_the_host_certificate(per_instance: Fleet) -> None:
    require_tool("openssl")
    s = per_instance.servers[0]

    def s_client(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"{SHARED}:{s.port}", "-verify_return_error",
             "-brief", "-CAfile", str(CA_OF_PORT[s.port]), *args],
            input="", capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    ok = s_client("-verify_ip", SHARED_NAME)
    assert ok.returncode == 0, ok.stderr
    assert "Verification: OK" in ok.stderr and "Peer certificate: CN = ai-shared" in ok.stderr
    assert re.search(r"Protocol version: TLSv1\.[23]\b", ok.stderr), ok.stderr
    for old in ("-tls1", "-tls1_1"):
        assert s_client(old).returncode != 0, old
    # The certificate names the shared host's address: any other name fails verification.
    assert s_client("-verify_ip", "10.9.0.99").returncode != 0


def test_plain_text_and_unverified_clients_are_refused(
    per_instance: Fleet, tmp_path: Path
) -> None:
    s = per_instance.servers[0]
    secret = per_instance.password(s.name)
    # No plain-text port: a client without TLS gets no answer at all.
    plain = cli(s.port, "PING", user=s.name, password=secret, tls=False)
    assert "PONG" not in plain and "NOPERM" not in plain, plain
    # A client that trusts another CA refuses the server before it sends the password.
    other = tmp_path / "other-ca.crt"
    other.write_text(pki.issue_ca("another", datetime.date.today()).cert)
    context = ssl.create_default_context(cafile=str(other))
    with (
        socket.create_connection((SHARED, s.port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname=SHARED_NAME)
    # As Open WebUI's client connects: the fleet CA and the address as the name; then AUTH.
    context = ssl.create_default_context(cafile=str(CA_OF_PORT[s.port]))
    with (
        socket.create_connection((SHARED, s.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=SHARED_NAME) as conn,
    ):
        assert conn.version() in ("TLSv1.2", "TLSv1.3")
        conn.sendall(f"AUTH {s.name} {secret}\r\nPING\r\n".encode())
        answer = b""
        while answer.count(b"\r\n") < 2:
            answer += conn.recv(100)
        assert answer == b"+OK\r\n+PONG\r\n"
