"""`owuibuild status --via ssh` against a real OpenSSH server on each host of a test fleet.

The fleet lives in network namespaces that this test makes (names owss-<random>-<host>), joined
by a bridge in the shared host's namespace: ai-shared at 10.88.0.24, web-a at .30 and web-b at
.31, none with a default route. Nothing of the fleet is in the machine's own namespace, so its
addresses are dialled only from inside those namespaces:

- ai-shared runs PostgreSQL 15 with the generated pg_hba.conf (each role only from its own
  Docker host's address), one redis-server per instance, and the Ollama and Qdrant doubles of
  test_status_servers over TLS; web-a and web-b run the Open WebUI double of each instance.
- Every host runs a real sshd on its fleet address with a host key made here, admitting one
  test key for the user running the test. The ssh configuration given with --ssh-config maps
  each fleet address to its host with a ProxyCommand that enters that host's namespace and
  connects there (`ip netns exec`), and knows the host keys (StrictHostKeyChecking yes).

So a probe that went through the wrong host fails: pg_hba admits webui3's role only from
web-b. The run without --via is made from a namespace of its own with only loopback (an admin's
laptop outside the fleet) and from web-a's (one Docker host), never from this machine's.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import require_tool, unavailable
from owuibuild import secrets as store
from owuibuild.hostconfig import postgres as postgres_section
from owuibuild.hostconfig import redis as redis_section
from owuibuild.pipeline import compile_blueprint
from test_status_servers import (
    ALL_ROWS,
    INSTANCES,
    PG_BIN,
    REDIS_BASE,
    Fleet,
    OllamaDouble,
    OpenWebUIDouble,
    QdrantDouble,
    Run,
    _as_postgres,
    blueprint_text,
    cluster_conf,
    generated_lines,
    instance_sql,
    states,
)

pytestmark = pytest.mark.services

NET = "10.88.0"
HOSTS = {"ai-shared": f"{NET}.24", "web-a": f"{NET}.30", "web-b": f"{NET}.31"}
SSH_PORT = 22
CLONE_NEWNET = 0x40000000
LIBC = ctypes.CDLL(None, use_errno=True)
START_TIMEOUT = 20.0

# ssh's ProxyCommand: a byte pipe between ssh and a TCP connection made in the namespace it
# runs in (`ip netns exec`), to the host and port ssh names.
RELAY = """\
import os, socket, sys, threading
conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
conn.settimeout(None)
def upstream():
    while data := os.read(0, 65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
threading.Thread(target=upstream, daemon=True).start()
while data := conn.recv(65536):
    os.write(1, data)
"""

T = TypeVar("T")


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {done.stdout}{done.stderr}")
    return done


class Netns:
    """A thread of this process inside a namespace: the sockets it makes live there (a
    listening socket keeps serving there from any thread)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=name, initializer=self._join)

    def _join(self) -> None:
        if LIBC.setns(self.fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns: {os.strerror(errno)}")

    def call(self, fn: Callable[[], T]) -> T:
        return self.pool.submit(fn).result()

    def close(self) -> None:
        self.pool.shutdown()
        os.close(self.fd)


@dataclass
class SshFleet:
    fleet: Fleet
    prefix: str
    work: Path
    user: str
    key: Path
    config: Path
    netns: dict[str, Netns] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    servers: list[ThreadingHTTPServer] = field(default_factory=list)
    pg_data: Path | None = None

    def ns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def sshd_log(self, host: str) -> str:
        return (self.work / f"sshd-{host}.log").read_text(errors="replace")

    def status(
        self, *args: str, netns: str | None = None, tmp: Path | None = None, key: Path | None = None
    ) -> Run:
        """owuibuild status on the fleet's blueprint: --via ssh unless ``netns`` names the
        namespace to run it (directly) in."""
        argv = [sys.executable, "-m", "owuibuild.cli", "status", str(self.fleet.blueprint)]
        if netns is None:
            argv += ["--via", "ssh", "--ssh-config", str(self.config)]
            argv += ["--ssh-key", str(key or self.key), "--ssh-user", self.user]
        else:
            argv = ["ip", "netns", "exec", netns, *argv]
        env = dict(os.environ)
        env.pop("SSH_AUTH_SOCK", None)  # only the key given here
        if tmp is not None:
            env["TMPDIR"] = str(tmp)
        start = time.monotonic()
        proc = subprocess.run(
            [*argv, *args], capture_output=True, text=True, timeout=120, env=env, check=False
        )
        return Run(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)


def build_network(f: SshFleet) -> None:
    for host in HOSTS:
        sh("ip", "netns", "add", f.ns(host))
        sh("ip", "-n", f.ns(host), "link", "set", "lo", "up")
    shared = f.ns("ai-shared")
    sh("ip", "-n", shared, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", shared, "addr", "add", f"{HOSTS['ai-shared']}/24", "dev", "br0")
    sh("ip", "-n", shared, "link", "set", "br0", "up")
    for index, host in enumerate(("web-a", "web-b")):
        port = f"p{index}"
        sh("ip", "-n", shared, "link", "add", port, "type", "veth",
           "peer", "name", "eth0", "netns", f.ns(host))  # fmt: skip
        sh("ip", "-n", shared, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", f.ns(host), "addr", "add", f"{HOSTS[host]}/24", "dev", "eth0")
        sh("ip", "-n", f.ns(host), "link", "set", "eth0", "up")
    for host in HOSTS:
        f.netns[host] = Netns(f.ns(host))


def wait_for_port(f: SshFleet, host: str, port: int, what: str) -> None:
    def dial() -> None:
        socket.create_connection((HOSTS[host], port), timeout=1).close()

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            f.netns[host].call(dial)
            return
        except OSError:
            assert time.monotonic() < deadline, f"{what} did not start on {host}"
            time.sleep(0.1)


def start_sshd(f: SshFleet) -> None:
    host_key = f.work / "host_key"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test host", "-f", str(host_key))
    authorized = f.work / "authorized_keys"
    shutil.copy(f"{f.key}.pub", authorized)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
    public = " ".join(Path(f"{host_key}.pub").read_text().split()[:2])
    (f.work / "known_hosts").write_text("".join(f"{a} {public}\n" for a in HOSTS.values()))
    relay = f.work / "relay.py"
    relay.write_text(RELAY)
    ip = shutil.which("ip")
    lines = [
        "Host *",
        "  GlobalKnownHostsFile /dev/null",
        f"  UserKnownHostsFile {f.work / 'known_hosts'}",
        "  StrictHostKeyChecking yes",
    ]
    for host, address in HOSTS.items():
        lines += [f"Host {address}", f"  ProxyCommand {ip} netns exec {f.ns(host)} "
                  f"{sys.executable} {relay} %h %p"]  # fmt: skip
        conf = f.work / f"sshd-{host}.conf"
        conf.write_text(
            f"ListenAddress {address}:{SSH_PORT}\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {authorized}\nPidFile none\nUsePAM no\nStrictModes no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            f"PermitRootLogin prohibit-password\nAllowUsers {f.user}\nAllowTcpForwarding yes\n"
        )
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        with (f.work / f"sshd-{host}.log").open("wb") as log:
            f.processes[f"sshd-{host}"] = subprocess.Popen(
                ["ip", "netns", "exec", f.ns(host), sshd, "-D", "-e", "-f", str(conf)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
    f.config.write_text("\n".join(lines) + "\n")
    for host in HOSTS:
        wait_for_port(f, host, SSH_PORT, "sshd")


def start_postgres(f: SshFleet) -> None:
    """PostgreSQL on ai-shared, with the generated pg_hba.conf and TLS settings."""
    fleet = f.fleet
    plan = fleet.compiled.plan
    assert plan is not None
    base = Path(tempfile.mkdtemp(prefix="owuibuild-status-ssh-pg-"))
    shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    f.pg_data = data
    _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--no-sync"])
    cert, key = fleet.write_server_tls(base)
    for path in (cert, key):
        shutil.chown(path, "postgres", "postgres")
    with (data / "postgresql.conf").open("a") as fh:
        fh.write(cluster_conf(fleet, base, cert, key))
    # The generated file: each role from its own Docker host's address only.
    (data / "pg_hba.conf").write_text(postgres_section.pg_hba_conf(plan))
    sql = instance_sql(fleet)
    pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "start"]
    subprocess.run(
        ["ip", "netns", "exec", f.ns("ai-shared"), "runuser", "-u", "postgres", "--", *pg_ctl],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    _as_postgres(
        [str(PG_BIN / "psql"), "-h", str(base), "-U", "postgres", "-d", "postgres", "-q"],
        input="\n".join(sql) + "\n",
    )


def start_redis(f: SshFleet) -> None:
    fleet = f.fleet
    plan, secrets = fleet.compiled.plan, fleet.compiled.secrets
    assert plan is not None and secrets is not None
    cert, key = fleet.write_server_tls(f.work)
    for index, (name, _, _) in enumerate(INSTANCES):
        password = fleet.secrets[f"instances.{name}.redis_password"]
        (server,) = [s for s in plan.redis_servers if s.name == name]
        tls = generated_lines(
            redis_section.redis_conf(plan, server, secrets), r"(port|tls-[a-z-]+) "
        )
        conf = f.work / f"redis-{name}.conf"
        conf.write_text(
            f'bind {fleet.shared}\ndir {f.work}\nsave ""\nappendonly no\n'
            f"{tls}tls-cert-file {cert}\ntls-key-file {key}\nuser default off\n"
            f"user {name} on >{password} ~{name}:* &* +@all -@dangerous\n"
        )
        conf.chmod(0o600)
        f.processes[f"redis-{name}"] = subprocess.Popen(
            ["ip", "netns", "exec", f.ns("ai-shared"), "redis-server", str(conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_port(f, "ai-shared", REDIS_BASE + index, f"redis-server {name}")


def serve(
    f: SshFleet,
    host: str,
    port: int,
    handler: type[BaseHTTPRequestHandler],
    tls: bool = False,
) -> None:
    def make() -> ThreadingHTTPServer:
        server = ThreadingHTTPServer((HOSTS[host], port), handler)
        if tls:
            cert, key = f.fleet.write_server_tls(f.work)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        return server

    server = f.netns[host].call(make)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    f.servers.append(server)


def start_doubles(f: SshFleet) -> None:
    qdrant = type(
        "BoundQdrantDouble", (QdrantDouble,), {"api_key": f.fleet.secrets["qdrant.api_key"]}
    )
    serve(f, "ai-shared", 11434, OllamaDouble, tls=True)
    serve(f, "ai-shared", 6333, qdrant, tls=True)
    for _, host, port in INSTANCES:
        serve(f, host, port, OpenWebUIDouble)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def ssh_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshFleet]:
    require_tool("ip", "ssh", "ssh-keygen", "redis-server", "runuser")
    if shutil.which("sshd") is None and not Path("/usr/sbin/sshd").exists():
        unavailable("sshd is not installed (make system-deps installs openssh-server)")
    if not (PG_BIN / "initdb").exists():
        unavailable("PostgreSQL 15 is not installed (make system-deps installs it)")
    if os.geteuid() != 0:
        unavailable("network namespaces and sshd need root")
    work = tmp_path_factory.mktemp("status-ssh")
    blueprint = work / "fleet.yml"
    blueprint.write_text(blueprint_text(NET))
    compiled = compile_blueprint(blueprint, seed_iso=False)
    assert compiled.ok, [d.as_dict() for d in compiled.diagnostics]
    values, problems = store.read(store.secrets_path(blueprint))
    assert values is not None, problems
    key = work / "admin_key"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test admin", "-f", str(key))
    f = SshFleet(
        Fleet(NET, work, blueprint, values, compiled),
        f"owss-{uuid.uuid4().hex[:6]}",
        work,
        pwd.getpwuid(os.geteuid()).pw_name,
        key,
        work / "ssh_config",
    )
    try:
        build_network(f)
        start_sshd(f)
        start_postgres(f)
        start_redis(f)
        start_doubles(f)
        yield f
    finally:
        for server in f.servers:
            server.shutdown()
            server.server_close()
        if f.pg_data is not None:
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(f.pg_data), "-m", "immediate", "stop"])
            shutil.rmtree(f.pg_data.parent, ignore_errors=True)
        for process in f.processes.values():
            stop(process)
        for netns in f.netns.values():
            netns.close()
        for host in HOSTS:
            sh("ip", "netns", "del", f.ns(host), check=False)


# -- the tests --------------------------------------------------------------------------------------


def assert_no_secret(f: SshFleet, *runs: Run) -> None:
    for run in runs:
        for value in f.fleet.secrets.values():
            assert value not in run.stdout
            assert value not in run.stderr


def ssh_processes_under(path: Path) -> list[str]:
    """Command lines of running processes that name ``path`` (an ssh master would)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(path) in cmdline:
            found.append(cmdline)
    return found


def test_via_ssh_every_row_is_ok_with_one_ssh_login_per_host(
    ssh_fleet: SshFleet, tmp_path: Path
) -> None:
    f = ssh_fleet
    logins = {h: f.sshd_log(h).count("Accepted publickey") for h in HOSTS}
    # A short TMPDIR: status puts the masters' sockets there when their paths fit.
    tmp = Path(tempfile.mkdtemp(prefix="owss-"))
    run = f.status("--format", "json", tmp=tmp)
    assert run.code == 0, run.stdout + run.stderr
    assert states(run.json()["checks"]) == dict.fromkeys(ALL_ROWS, "ok")
    assert run.stderr == ""
    text = f.status(tmp=tmp)
    assert text.code == 0, text.stdout + text.stderr
    assert text.stdout.rstrip().endswith(f"{len(ALL_ROWS)} of {len(ALL_ROWS)} probes ok")
    assert_no_secret(f, run, text)
    # One master per host for each run, every probe multiplexed over it: one login each.
    assert {h: f.sshd_log(h).count("Accepted publickey") - logins[h] for h in HOSTS} == {
        h: 2 for h in HOSTS
    }
    # The masters were closed and their private directory removed.
    assert list(tmp.iterdir()) == []
    assert ssh_processes_under(tmp) == []
    tmp.rmdir()


def test_direct_from_outside_the_fleet_reaches_nothing(ssh_fleet: SshFleet) -> None:
    """The control: from a machine with no route to the fleet, no row is ok without ssh."""
    f = ssh_fleet
    outside = f"{f.prefix}-outside"
    sh("ip", "netns", "add", outside)
    try:
        sh("ip", "-n", outside, "link", "set", "lo", "up")
        run = f.status("--format", "json", "--timeout", "2", netns=outside)
    finally:
        sh("ip", "netns", "del", outside, check=False)
    assert run.code == 1
    dialled = [c for c in run.json()["checks"] if c["instance"] != "fleet CA"]
    assert {(c["state"], c["detail"]) for c in dialled} == {("down", "no route to host")}


def test_direct_from_one_docker_host_is_turned_away_for_another_hosts_instance(
    ssh_fleet: SshFleet,
) -> None:
    """From web-a, pg_hba admits web-a's roles only; via ssh each login goes through its
    instance's own host (the first test), so webui3's is ok there."""
    f = ssh_fleet
    run = f.status("--format", "json", "--only", "postgresql", netns=f.ns("web-a"))
    assert run.code == 1
    checks = {c["instance"]: c for c in run.json()["checks"]}
    assert {name: c["state"] for name, c in checks.items()} == {
        "webui1": "ok",
        "webui2": "ok",
        "webui3": "refused",
    }
    assert checks["webui3"]["detail"].startswith("SQLSTATE 28000")
    assert checks["webui3"]["hint"] == (
        f"pg_hba admits webui3 only from web-b ({HOSTS['web-b']}): run status there, "
        "or with --via ssh"
    )


def test_a_wrong_key_is_a_clear_ssh_error(ssh_fleet: SshFleet, tmp_path: Path) -> None:
    f = ssh_fleet
    other = tmp_path / "other_key"
    sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other))
    run = f.status(key=other)
    assert run.code == 1
    rows = run.rows()
    dialled = [r for r in rows if r["instance"] != "fleet CA"]
    assert {r["state"] for r in dialled} == {"auth-failed"}
    host_of = {name: host for name, host, _ in INSTANCES}
    for r in dialled:
        # An instance's rows go through its own host; a shared service's through its host.
        via = host_of.get(r["instance"], r["host"])
        assert r["detail"] == f"ssh to {via} ({HOSTS[via]}) failed: Permission denied (publickey)."
    hints = [line for line in run.stdout.splitlines() if line.startswith("hint: ")]
    assert len(hints) == len(HOSTS)
    for host in HOSTS:
        (line,) = [h for h in hints if f"ssh to {host} as {f.user} failed" in h]
        assert "Permission denied; check --ssh-key / the admin's key" in line
    assert run.stderr == ""
    assert_no_secret(f, run)


def test_an_unknown_host_key_is_refused_not_accepted(ssh_fleet: SshFleet, tmp_path: Path) -> None:
    f = ssh_fleet
    config = tmp_path / "ssh_config"
    config.write_text(
        f.config.read_text().replace(str(f.work / "known_hosts"), str(tmp_path / "empty"))
    )
    (tmp_path / "empty").write_text("")
    argv = ["--via", "ssh", "--ssh-config", str(config), "--ssh-key", str(f.key)]
    proc = subprocess.run(
        [sys.executable, "-m", "owuibuild.cli", "status", str(f.fleet.blueprint), *argv,
         "--ssh-user", f.user, "--format", "json", "--only", "webui1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    checks = json.loads(proc.stdout)["checks"]
    assert {c["state"] for c in checks} == {"down"}
    assert {c["detail"] for c in checks} == {
        f"ssh to web-a ({HOSTS['web-a']}) failed: host key verification failed"
    }
    assert "known_hosts" in checks[0]["hint"]
    assert (tmp_path / "empty").read_text() == ""  # nothing was added to it


def test_a_stopped_server_turns_its_row(ssh_fleet: SshFleet) -> None:
    """Run last: it stops webui2's redis-server. The jump host's master keeps the reason to
    itself; status asks again without it and reports what a direct probe would."""
    f = ssh_fleet
    stop(f.processes["redis-webui2"])
    run = f.status("--format", "json")
    assert run.code == 1
    expected = dict.fromkeys(ALL_ROWS, "ok") | {("redis", "webui2"): "refused"}
    assert states(run.json()["checks"]) == expected
    (row,) = [
        c for c in run.json()["checks"] if (c["service"], c["instance"]) == ("redis", "webui2")
    ]
    assert row["detail"] == "connection refused"
    assert_no_secret(f, run)
