"""Ollama's TLS terminator: the GENERATED Caddy configuration, byte for byte, on the real Caddy,
in front of the Ollama TEST DOUBLE (tests/doubles/ollama_double.py, NOT Ollama: no Ollama binary
can be had here; it streams as Ollama streams, refuses a non-local Host as Ollama on loopback
does, and records every request that reaches it).

Each fixture runs the pair in fresh network and mount namespaces of its own (unshare -n -m), so
that every generated value is used as it is and nothing but loopback exists:

- The network namespace has its loopback alone, with the shared host's private address added to
  it: no other interface, no default route. Caddy listens where its configuration says (the
  private address, port 11434); the double listens where the generated ollama.service puts
  Ollama (its OLLAMA_HOST: loopback), which is the upstream the configuration dials.
- The mount namespace has a throwaway overlay on /etc that only it sees. The shared host's
  generated files land there at their generated paths with their owners and modes (Caddy's
  configuration, the host certificate and key), then the generated commands that copy the key
  for caddy (from runcmd) run as written. Caddy's home, the unit's HOME, is an empty tmpfs.
- Caddy runs as the generated owui-ollama-tls.service says: its ExecStart, as its User and Group,
  with its Environment (through setpriv; systemd's sandboxing is not reproduced). The double runs
  with the generated ollama.service's OLLAMA_HOST, but its model store and home are temp dirs:
  the unit's are paths on this machine. It holds each streamed answer's last line until the
  test releases it (OLLAMA_DOUBLE_HOLD_LAST=1).

The test process reaches into the namespace from one thread that has joined its network
namespace (setns): every client socket is made there, to the address and port of the
OLLAMA_BASE_URL the instances are given, and clients trust only the generated fleet-ca.crt, as
the instances do. openssl s_client runs in the namespace through nsenter. No socket of this test
is ever made in this machine's own network namespace, where the blueprint's address would go
out by the default route.
"""

from __future__ import annotations

import ctypes
import datetime
import http.client
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Rendered, compile_path, require_tool, unavailable
from doubles import ollama_double
from owuibuild import pki, probes
from owuibuild.hostconfig import ollama, ollama_tls
from owuibuild.plan import SERVER_CERT, SERVER_KEY
from test_postgres import BLUEPRINT

pytestmark = pytest.mark.services

DOUBLE = Path(ollama_double.__file__)
CLONE_NEWNET = 0x40000000  # setns(2): join a network namespace
# Generous bounds that only a failure reaches: no assertion is about time.
START_TIMEOUT = 30.0
READ_TIMEOUT = 30.0  # well below the double's HOLD_TIMEOUT, so a buffered stream fails here
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# What instances use: inference, embeddings, listing, the OpenAI-compatible routes.
ALLOWED = [
    ("GET", "/", None),
    ("HEAD", "/", None),
    ("GET", "/api/version", None),
    ("GET", "/api/tags", None),
    ("GET", "/api/ps", None),
    ("POST", "/api/show", {"model": "absent:latest"}),
    ("POST", "/api/chat", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}),
    ("POST", "/api/generate", {"model": "m", "prompt": "hi", "stream": False}),
    ("POST", "/api/embed", {"model": "e", "input": ["a", "b"]}),
    ("POST", "/api/embeddings", {"model": "e", "prompt": "a"}),
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
]  # fmt: skip
# What instances may never do through the terminator unless the blueprint allows it.
MANAGEMENT = [
    ("POST", "/api/pull", {"model": "intruder:latest"}),
    ("DELETE", "/api/delete", {"model": "intruder:latest"}),
    ("POST", "/api/create", {"model": "intruder:latest", "from": "llama3.2"}),
    ("POST", "/api/copy", {"source": "a", "destination": "b"}),
    ("POST", "/api/push", {"model": "intruder:latest"}),
    ("POST", "/api/blobs/sha256:00", None),
    ("HEAD", "/api/blobs/sha256:00", None),
]
MANAGEMENT_ROUTES = {"/api/pull", "/api/delete", "/api/create", "/api/copy", "/api/push"}
# A Host that Ollama on loopback refuses (neither a local name nor a private address).
FOREIGN_HOSTS = ["ollama.example.org:11434", "203.0.113.7:11434"]


def ids(cases: Sequence[tuple[str, str, object]]) -> list[str]:
    return [f"{method} {path}" for method, path, _ in cases]


# -- what the render gives ----------------------------------------------------------------------


def blueprint(directory: Path, allow_model_management: bool) -> Rendered:
    text = BLUEPRINT % {"redis_mode": "per-instance"}
    if allow_model_management:
        redis = "  redis: {mode: per-instance}\n"
        assert redis in text
        text = text.replace(redis, redis + "  ollama: {allow_model_management: true}\n")
    path = directory / f"ollamatls-{allow_model_management}.yml".lower()
    path.write_text(text)
    return compile_path(path)


def unit_settings(text: str) -> dict[str, list[str]]:
    """A systemd unit's settings by name, every value of a repeated one in order."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.startswith(("#", ";", "[")):
            settings.setdefault(name.strip(), []).append(value.strip())
    return settings


def unit_environment(settings: dict[str, list[str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for value in settings.get("Environment", []):
        for word in shlex.split(value):
            name, _, text = word.partition("=")
            found[name] = text
    return found


@dataclass(frozen=True)
class Generated:
    """What the test takes from a render: the shared host's files and commands, and what an
    instance is given to reach Ollama (its URL, the CA it trusts)."""

    files: dict[str, dict[str, Any]]  # the shared host's write_files entries, by path
    key_commands: list[list[str]]  # runcmd's commands that copy the host key for caddy
    base_url: str  # every instance's OLLAMA_BASE_URL
    ca: str  # fleet-ca.crt

    def content(self, path: str) -> str:
        text: str = self.files[path]["content"]
        return text

    @property
    def ollama_host(self) -> str:
        """Where the generated ollama.service has Ollama listen (its OLLAMA_HOST)."""
        return unit_environment(unit_settings(self.content(ollama.UNIT)))["OLLAMA_HOST"]

    @property
    def address(self) -> str:
        name = urllib.parse.urlsplit(self.base_url).hostname
        assert name
        return name

    @property
    def port(self) -> int:
        port = urllib.parse.urlsplit(self.base_url).port
        assert port
        return port


def generated(rendered: Rendered) -> Generated:
    plan: Any = rendered.plan
    doc = rendered.user_data(plan.shared.name)
    files = {f["path"]: f for f in doc["write_files"]}
    key_commands = [
        [str(word) for word in command]
        for command in doc["runcmd"]
        if isinstance(command, list)
        and any(str(word).startswith(ollama_tls.TLS_KEY_DIR) for word in command)
    ]
    assert len(key_commands) == 2, key_commands  # the key's directory, then the key
    urls = set()
    for path, data in rendered.files.items():
        if path.startswith("instances/") and path.endswith(".env"):
            for line in data.decode().splitlines():
                if line.startswith("OLLAMA_BASE_URL="):
                    urls.add(line.partition("=")[2])
    assert len(urls) == 1, urls
    (url,) = urls
    assert url.startswith("https://"), url
    return Generated(files, key_commands, url, rendered.text("fleet-ca.crt"))


# -- the namespace --------------------------------------------------------------------------------

LIBC = ctypes.CDLL(None, use_errno=True)


class Namespace:
    """This process's door into a network namespace: one thread that joined it (setns), which
    makes every socket the test dials there. A network namespace is per thread, and a socket
    stays in the one it was made in."""

    def __init__(self, pid: int) -> None:
        self.fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self.inode = os.fstat(self.fd).st_ino
        # Not this machine's own: unshare must have made it already.
        assert self.inode != os.stat("/proc/self/ns/net").st_ino, "not a new network namespace"
        self.path = f"/proc/{pid}/ns/net"
        self.thread = ThreadPoolExecutor(1, thread_name_prefix="netns", initializer=self._join)

    def _join(self) -> None:
        if LIBC.setns(self.fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns: {os.strerror(errno)}")
        # Should that ever fail, the pool is broken and no socket is made anywhere.
        assert os.stat("/proc/thread-self/ns/net").st_ino == self.inode

    def dial(self, address: str, port: int, timeout: float = READ_TIMEOUT) -> socket.socket:
        return self.thread.submit(socket.create_connection, (address, port), timeout).result()

    def close(self) -> None:
        self.thread.shutdown()
        os.close(self.fd)


class NamespacedConnection(http.client.HTTPConnection):
    """HTTP(S) over sockets that ``open_socket`` makes: http.client never dials by itself, not
    even to reconnect."""

    def __init__(
        self, host: str, port: int, open_socket: Callable[[], socket.socket], timeout: float
    ) -> None:
        super().__init__(host, port, timeout=timeout)
        self.open_socket = open_socket

    def connect(self) -> None:
        self.sock = self.open_socket()


@dataclass
class Terminator:
    generated: Generated
    ns: Namespace
    pid: int  # Caddy's (the namespace's first process, which became it)
    upstream: tuple[str, int]  # where the double listens: the generated OLLAMA_HOST
    work: Path

    def logs(self) -> str:
        return logs(self.work)

    def tls_socket(
        self, context: ssl.SSLContext | None = None, name: str | None = None
    ) -> ssl.SSLSocket:
        """A TLS connection as an instance makes one: to the URL's address, verified with the
        fleet CA for that address. An IP address as the name: no SNI is sent."""
        context = context or probes.tls_context(self.generated.ca)
        raw = self.ns.dial(self.generated.address, self.generated.port)
        try:
            return context.wrap_socket(raw, server_hostname=name or self.generated.address)
        except BaseException:
            raw.close()
            raise

    def connection(self) -> NamespacedConnection:
        g = self.generated
        return NamespacedConnection(g.address, g.port, self.tls_socket, READ_TIMEOUT)

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        return exchange(self.connection(), method, path, body, headers)

    def double(
        self, method: str, path: str, body: object = None, host: str | None = None
    ) -> tuple[int, Any]:
        """Straight to the double, past the terminator (its records, or a Host test)."""
        address, port = self.upstream
        conn = NamespacedConnection(address, port, lambda: self.ns.dial(address, port), 10)
        status, data = exchange(conn, method, path, body, {"Host": host} if host else None)
        return status, json.loads(data or b"null")

    def arrived(self) -> list[dict[str, Any]]:
        """Every request the double answered so far, in order."""
        status, doc = self.double("GET", "/api/double/requests")
        assert status == 200
        requests: list[dict[str, Any]] = doc["requests"]
        return requests

    def streams(self) -> list[dict[str, Any]]:
        streams: list[dict[str, Any]] = self.double("GET", "/api/double/streams")[1]["streams"]
        return streams

    def release(self) -> None:
        """Let one held streamed answer write its last line."""
        assert self.double("POST", "/api/double/release")[0] == 200

    def pulls(self) -> int:
        count: int = self.double("GET", "/api/double/pulls")[1]["count"]
        return count

    @property
    def loopback_host(self) -> str:
        """The Host the double sees from the terminator: Ollama's own loopback address."""
        address, port = self.upstream
        return f"{address}:{port}"

    def listeners(self) -> set[tuple[str, str, int]]:
        """Every listening TCP and bound UDP socket in the namespace: (protocol, address, port)."""
        found = set()
        for proto in ("tcp", "tcp6", "udp", "udp6"):
            for line in Path(f"/proc/{self.pid}/net/{proto}").read_text().splitlines()[1:]:
                fields = line.split()
                local, state = fields[1], fields[3]
                if proto.startswith("tcp") and state != "0A":  # LISTEN
                    continue
                raw, port = local.split(":")
                found.add((proto, proc_address(raw), int(port, 16)))
        return found


def proc_address(raw: str) -> str:
    """An address as /proc/net/{tcp,udp}[6] writes it: 32-bit words in host (little) order."""
    data = b"".join(int(raw[i : i + 8], 16).to_bytes(4, "little") for i in range(0, len(raw), 8))
    return socket.inet_ntop(socket.AF_INET if len(data) == 4 else socket.AF_INET6, data)


def exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def namespace_script(g: Generated, work: Path) -> str:
    """The shell script the namespace runs (see the module docstring), from the render."""
    caddy = unit_settings(g.content(ollama_tls.UNIT))
    (user,), (group,) = caddy["User"], caddy["Group"]
    caddy_env = unit_environment(caddy)
    home = caddy_env["HOME"]
    (exec_start,) = caddy["ExecStart"]
    double_env = {
        "PATH": PATH,
        "OLLAMA_HOST": g.ollama_host,
        "OLLAMA_MODELS": str(work / "models"),
        "HOME": str(work / "double-home"),
        "OLLAMA_DOUBLE_HOLD_LAST": "1",
    }
    q = shlex.quote
    lines = [
        "set -eu",
        "ip link set lo up",
        f"ip addr add {q(g.address)}/32 dev lo",
        "mount -t overlay overlay -o "
        + q(f"lowerdir=/etc,upperdir={work}/etc-upper,workdir={work}/etc-work")
        + " /etc",
        f"mount -t tmpfs -o mode=0750 tmpfs {q(home)}",
        f"chown {q(user)}:{q(group)} {q(home)}",
    ]
    for path in (ollama_tls.CONFIG, SERVER_CERT, SERVER_KEY):
        assert path.startswith("/etc/"), path  # only /etc is overlaid
        entry = g.files[path]
        staged = work / "files" / path.lstrip("/")
        staged.parent.mkdir(parents=True, exist_ok=True)
        staged.write_text(entry["content"])
        staged.chmod(0o600)
        owner, _, owner_group = entry["owner"].partition(":")
        install = ["install", "-D", "-o", owner, "-g", owner_group, "-m", entry["permissions"]]
        lines.append(shlex.join([*install, str(staged), path]))
    lines += [shlex.join(command) for command in g.key_commands]
    lines.append(f"touch {q(str(work / 'netns-ready'))}")
    double = ["env", "-i", *(f"{k}={v}" for k, v in double_env.items())]
    double += [sys.executable, str(DOUBLE), "serve"]
    lines.append(f"{shlex.join(double)} >{q(str(work / 'ollama-double.log'))} 2>&1 &")
    caddy_run = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--"]
    caddy_run += ["env", "-i", f"PATH={PATH}", *(f"{k}={v}" for k, v in caddy_env.items())]
    caddy_run += shlex.split(exec_start)
    lines.append(f"exec {shlex.join(caddy_run)} >{q(str(work / 'caddy.log'))} 2>&1")
    return "\n".join(lines) + "\n"


def logs(work: Path) -> str:
    """The ends of the namespace's, Caddy's and the double's logs."""
    return "\n".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(work.glob("*.log"))
    )


def wait_for(
    what: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], work: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            if ready():
                return
        except OSError:
            pass
        assert proc.poll() is None, f"{what}: the namespace's process exited\n{logs(work)}"
        assert time.monotonic() < deadline, f"{what} did not start\n{logs(work)}"
        time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End the namespace's process group (Caddy and the double), which this test started."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)


def start(rendered: Rendered, work: Path) -> Iterator[Terminator]:
    require_tool("caddy", "unshare", "nsenter", "setpriv", "ip", "mount", "openssl")
    g = generated(rendered)
    caddy_user = unit_settings(g.content(ollama_tls.UNIT))["User"][0]
    try:
        pwd.getpwnam(caddy_user)
    except KeyError:
        unavailable(f"no user {caddy_user}: the caddy package makes it (make system-deps)")
    for name in ("etc-upper", "etc-work", "models", "double-home"):
        (work / name).mkdir()
    script = work / "in-namespace.sh"
    script.write_text(namespace_script(g, work))
    address, _, port = g.ollama_host.rpartition(":")
    with (work / "namespace.log").open("wb") as log:
        proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "sh", str(script)],
            stdout=log, stderr=subprocess.STDOUT, env={"PATH": PATH}, cwd="/",
            start_new_session=True,
        )  # fmt: skip
    ns: Namespace | None = None
    try:
        wait_for("the namespace", (work / "netns-ready").exists, proc, work)
        ns = Namespace(proc.pid)
        t = Terminator(g, ns, proc.pid, (address, int(port)), work)
        wait_for("the Ollama double", lambda: t.double("GET", "/api/version")[0] == 200, proc, work)

        def caddy_ready() -> bool:
            t.tls_socket().close()
            return True

        wait_for("caddy", caddy_ready, proc, work)
        yield t
    finally:
        stop(proc)
        if ns is not None:
            ns.close()
        shutil.rmtree(work / "files", ignore_errors=True)  # the host key's copies
        shutil.rmtree(work / "etc-upper", ignore_errors=True)
        shutil.rmtree(work / "etc-work", ignore_errors=True)


@pytest.fixture(scope="module")
def terminator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Terminator]:
    rendered = blueprint(tmp_path_factory.mktemp("bp"), allow_model_management=False)
    yield from start(rendered, tmp_path_factory.mktemp("terminator"))


@pytest.fixture(scope="module")
def managed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Terminator]:
    rendered = blueprint(tmp_path_factory.mktemp("bp"), allow_model_management=True)
    yield from start(rendered, tmp_path_factory.mktemp("managed"))


# -- where it listens -----------------------------------------------------------------------------


def test_caddy_listens_on_the_private_address_and_ollama_on_loopback(
    terminator: Terminator,
) -> None:
    g = terminator.generated
    address, port = terminator.upstream
    tcp = {(a, p) for proto, a, p in terminator.listeners() if proto.startswith("tcp")}
    assert tcp == {(g.address, g.port), (address, port)}, terminator.listeners()
    assert address == "127.0.0.1" and (address, port) != (g.address, g.port)
    # Nothing else, in any protocol: no port 80, no admin endpoint, and no UDP socket for
    # HTTP/3 (Caddy binds one unless the server's protocols leave h3 out).
    assert {proto for proto, _, _ in terminator.listeners()} == {"tcp"}, terminator.listeners()


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_1_2_or_later_with_the_host_certificate(terminator: Terminator) -> None:
    host_cert = terminator.generated.content(SERVER_CERT)
    with terminator.tls_socket() as conn:
        assert conn.version() in ("TLSv1.2", "TLSv1.3")
        der = conn.getpeercert(binary_form=True)
    assert der == ssl.PEM_cert_to_DER_cert(host_cert)
    # TLS 1.2 alone is enough (older clients), and the same certificate comes back.
    context = probes.tls_context(terminator.generated.ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with terminator.tls_socket(context) as conn:
        assert conn.version() == "TLSv1.2"
        assert conn.getpeercert(binary_form=True) == der


def s_client(terminator: Terminator, *options: str) -> subprocess.CompletedProcess[str]:
    """openssl s_client in the namespace, trusting only the fleet CA, verifying the address."""
    g = terminator.generated
    ca = terminator.work / "fleet-ca.crt"
    ca.write_text(g.ca)
    return subprocess.run(
        ["nsenter", f"--net={terminator.ns.path}", "openssl", "s_client",
         "-connect", f"{g.address}:{g.port}", "-CAfile", str(ca), "-verify_ip", g.address,
         "-verify_return_error", "-brief", *options],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_openssl_verifies_the_host_certificate_with_the_fleet_ca(terminator: Terminator) -> None:
    for version in ("-tls1_2", "-tls1_3"):
        result = s_client(terminator, version)
        assert result.returncode == 0, (version, result.stdout, result.stderr)
        assert "Verification: OK" in result.stderr, result.stderr


def test_tls_1_1_is_refused_by_the_server(terminator: Terminator) -> None:
    # SECLEVEL=0 lets this client offer TLS 1.1 at all; the server's alert is what refuses it.
    result = s_client(terminator, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert result.returncode != 0, result.stderr
    assert "alert protocol version" in result.stderr, result.stderr


def test_a_client_trusting_another_ca_refuses_the_server(terminator: Terminator) -> None:
    other = pki.issue_ca("another", datetime.date.today())
    with pytest.raises(ssl.SSLCertVerificationError):
        terminator.tls_socket(probes.tls_context(other.cert)).close()
    # The certificate names the shared host alone: verified for another address, it fails.
    with pytest.raises(ssl.SSLCertVerificationError):
        terminator.tls_socket(name="10.9.0.99").close()


def test_plain_http_gets_no_answer_from_ollama(terminator: Terminator) -> None:
    g = terminator.generated
    before = len(terminator.arrived())
    with terminator.ns.dial(g.address, g.port) as raw:
        raw.sendall(b"GET /api/tags HTTP/1.1\r\nHost: " + g.address.encode() + b"\r\n\r\n")
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0]
    assert b" 200 " not in status_line and b"models" not in answer, answer
    assert len(terminator.arrived()) == before


# -- what passes ----------------------------------------------------------------------------------


def assert_reaches_ollama(terminator: Terminator, method: str, path: str, body: object) -> None:
    """The request reaches the double exactly once, as Ollama's loopback host, and its answer
    is the double's, passed on."""
    before = len(terminator.arrived())
    status, answer = terminator.request(method, path, body)
    reached = terminator.arrived()[before:]
    assert [(r["method"], r["path"]) for r in reached] == [(method, path)], (status, answer)
    assert reached[0]["host"] == terminator.loopback_host
    assert status == reached[0]["status"], answer


@pytest.mark.parametrize(("method", "path", "body"), ALLOWED, ids=ids(ALLOWED))
def test_inference_and_listing_reach_ollama_as_its_loopback_host(
    terminator: Terminator, method: str, path: str, body: object
) -> None:
    assert_reaches_ollama(terminator, method, path, body)


def test_embeddings_come_back_whole(terminator: Terminator) -> None:
    status, body = terminator.request("POST", "/api/embed", {"model": "e", "input": ["a", "b"]})
    assert status == 200, body
    assert json.loads(body)["embeddings"] == [ollama_double.embedding()] * 2


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
def test_a_streamed_answer_arrives_in_pieces(terminator: Terminator, path: str) -> None:
    """The double holds each streamed answer's last line until the test releases it: the first
    line in the client's hands before that release came through as it was written. A buffering
    terminator passes nothing on while the last line is held, not even the headers, and the read
    times out (READ_TIMEOUT, well before the double's HOLD_TIMEOUT): seen with the generated
    reverse_proxy given Caddy's buffer_responses."""
    before = len(terminator.streams())
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "prompt": "hi"}
    conn = terminator.connection()
    released = False
    try:
        conn.request("POST", path, body=json.dumps(body).encode())
        try:  # a buffering proxy holds back the headers too
            answer = conn.getresponse()
            first_line = answer.readline()
        except TimeoutError:
            pytest.fail(
                f"nothing came through while the double held its last line\n{terminator.logs()}"
            )
        assert answer.status == 200, first_line
        assert answer.getheader("Content-Type") == "application/x-ndjson"
        first = json.loads(first_line)
        (stream,) = terminator.streams()[before:]
        assert stream["path"] == path
        # Received while the last line was still unwritten (held until the release below).
        assert not stream["done"] and stream["sent"] < stream["of"], stream
        assert first["done"] is False
        terminator.release()
        released = True
        rest = [json.loads(line) for line in answer.read().splitlines() if line.strip()]
    finally:
        if not released:
            terminator.release()  # one release per stream, so none is left over for the next
        conn.close()
    chunks = [first, *rest]
    assert len(chunks) == ollama_double.STREAM_CHUNKS
    assert [c["done"] for c in chunks] == [False] * (len(chunks) - 1) + [True]
    (stream,) = terminator.streams()[before:]
    assert stream["done"] and stream["sent"] == stream["of"], stream


def test_the_host_header_is_rewritten_for_ollama_on_loopback(terminator: Terminator) -> None:
    # The double, like Ollama on loopback, refuses a Host it does not take for local...
    for host in FOREIGN_HOSTS:
        assert terminator.double("GET", "/api/tags", host=host)[0] == 403, host
    # ...yet such a Host, as a client that names the server otherwise sends it, passes the
    # terminator: Ollama is asked as its loopback address.
    for host in FOREIGN_HOSTS:
        status, body = terminator.request("GET", "/api/tags", headers={"Host": host})
        assert status == 200, (host, body)
        last = terminator.arrived()[-1]
        assert (last["path"], last["status"]) == ("/api/tags", 200)
        assert last["host"] == terminator.loopback_host


# -- what is refused ------------------------------------------------------------------------------


def routes_to_management(path: str) -> bool:
    route = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
    return route in MANAGEMENT_ROUTES or route.startswith("/api/blobs")


@pytest.mark.parametrize(("method", "path", "body"), MANAGEMENT, ids=ids(MANAGEMENT))
def test_model_management_is_refused_before_ollama(
    terminator: Terminator, method: str, path: str, body: object
) -> None:
    before = len(terminator.arrived())
    status, answer = terminator.request(method, path, body)
    assert status == 403, answer
    if method != "HEAD":
        assert "allow_model_management" in json.loads(answer)["error"]
    assert terminator.arrived()[before:] == []
    assert terminator.pulls() == 0


# Ways to spell a management path that a path matcher might not see as one.
TRICKS = [
    "/api/pull/",
    "//api/pull",
    "/API/PULL",
    "/api/pull?stream=false",
    "/api/%70ull",
    "/api/chat/../pull",
    "/api/chat/%2e%2e/pull",
    "/v1/../api/pull",
    "/v1/%2e%2e/api/pull",
    "/./api/pull",
]


@pytest.mark.parametrize("path", TRICKS)
def test_no_spelling_of_a_management_path_reaches_it(terminator: Terminator, path: str) -> None:
    before = len(terminator.arrived())
    status, answer = terminator.request("POST", path, {"model": "intruder:latest"})
    reached = terminator.arrived()[before:]
    assert not [r for r in reached if routes_to_management(r["path"])], (status, reached)
    assert status in (403, 404), (status, answer)
    assert terminator.pulls() == 0


@pytest.mark.parametrize(("method", "path", "body"), MANAGEMENT, ids=ids(MANAGEMENT))
def test_management_passes_when_the_blueprint_allows_it(
    managed: Terminator, method: str, path: str, body: object
) -> None:
    assert_reaches_ollama(managed, method, path, body)


def test_a_model_pulled_through_an_open_terminator_is_listed(managed: Terminator) -> None:
    status, body = managed.request("POST", "/api/pull", {"model": "granted:latest"})
    assert status == 200, body
    status, body = managed.request("GET", "/api/tags")
    assert status == 200 and "granted:latest" in body.decode(), body
    status, body = managed.request("DELETE", "/api/delete", {"model": "granted:latest"})
    assert status == 200, body
    status, body = managed.request("GET", "/api/tags")
    assert status == 200 and "granted:latest" not in body.decode(), body
