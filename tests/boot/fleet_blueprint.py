"""The boot tier's test fleet, rendered for QEMU user-mode networking, and the probes that check
a booted shared host from the QEMU host (only through 127.0.0.1 forwards).

The network (what the guest sees)::

    10.0.2.15  shared   the shared-services host (the VM)
    10.0.2.2   dock     QEMU's host address: forwarded connections arrive FROM it, so the test
                        process plays the Docker host "dock" that runs instances alpha and beta
    10.0.2.20  dockb    a Docker host that does not exist; it runs instance gamma, whose
                        database and Redis must stay closed to "dock"
    10.0.2.3   gateway  QEMU's DNS address, declared as the gateway too (a router that is
                        also the DNS server). owuibuild refuses a host at the gateway's
                        address, and forwarded connections come from 10.0.2.2, so 10.0.2.2
                        cannot be the declared gateway. QEMU's user-mode network answers ARP
                        for 10.0.2.3 and routes whatever is sent to its MAC, so the guest's
                        default route (Debian's mirror, for the vanilla image's apt) works.

The Ollama and Qdrant artifacts are TEST DOUBLES served by the local mirror (tests/doubles):
these tests check owuibuild's install steps and configuration, not Ollama or Qdrant.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.client import HTTPException, HTTPSConnection
from pathlib import Path
from typing import Any

from owuibuild import probes
from owuibuild.artifacts import ollama_filename, qdrant_filename
from owuibuild.plan import (
    OLLAMA_PORT,
    POSTGRES_PORT,
    QDRANT_PORT,
    SSH_PORT,
)
from owuibuild.targets.ca import CA_FILE
from vm import FLEET_INTERFACE  # the fleet NIC of a guest with a fleet link

# The vector length of the Ollama TEST DOUBLE's embeddings (tests/doubles/ollama_double.py
# EMBEDDING): the fleet's Qdrant collections are made with it.
EMBEDDING_DIMENSIONS = 4
# The versions the boot conftest's mirror serves (and the golden image was baked with).
OLLAMA_VERSION = "0.12.4"
QDRANT_VERSION = "1.15.4"
# The Open WebUI TEST DOUBLE's image (tests/doubles/openwebui_standin.py): a registry on the
# guest's own closed port, so that a pull can never leave the guest; hosts load the image from
# the mirror's archive instead (openwebui.archive_sha256).
STANDIN_IMAGE = "localhost:1/owuibuild/openwebui-test-double"
STANDIN_VERSION = "0.12.4"
# Opt-in: the two-VM fleet runs the REAL Open WebUI image (the containers tier's) under that
# reference instead of the double. Far too slow under TCG for CI (see the README).
REAL_OPENWEBUI = os.environ.get("OWUIBUILD_BOOT_REAL_OPENWEBUI") == "1"

ADMIN = "ops"
SHARED = "shared"
DOCK = "10.0.2.2"
DOCK_INSTANCES = ("alpha", "beta")
OTHER_INSTANCE = "gamma"  # on dockb (10.0.2.20): must be closed to dock
DATA_LABEL = "owui-data"
DATA_DEVICE = "/dev/vdb"
MODELS = ("tinyllama", "nomic-embed-text")
PG_VERSION = "15"


def blueprint_text(mirror_url: str, ollama_sha256: str, qdrant_sha256: str, admin_key: str) -> str:
    return f"""apiVersion: owuibuild/v1
name: boottest
os: {{distro: debian-12, timezone: UTC}}
mirror: {mirror_url}
admin:
  user: {ADMIN}
  ssh_authorized_keys: ["{admin_key}"]
  allow_from: [{DOCK}/32]
network: {{cidr: 10.0.2.0/24, gateway: 10.0.2.3, dns: [10.0.2.3]}}
shared:
  host:
    name: {SHARED}
    address: 10.0.2.15
    data_volume: {{label: {DATA_LABEL}, device: {DATA_DEVICE}}}
  ollama:
    version: "{OLLAMA_VERSION}"
    sha256: {ollama_sha256}
    models: [{", ".join(MODELS)}]
  qdrant:
    version: "{QDRANT_VERSION}"
    sha256: {qdrant_sha256}
hosts:
  - {{name: dock, address: {DOCK}}}
  - {{name: dockb, address: 10.0.2.20}}
instances:
  - {{name: alpha, host: dock, port: 3000}}
  - {{name: beta, host: dock, port: 3001}}
  - {{name: gamma, host: dockb, port: 3000}}
images: {{builders: [qemu], bake_models: true}}
"""


# -- the two-VM Debian 13 fleet (tests/boot/test_fleet_boot.py and its golden images) ----------

FLEET_SUITE = "trixie"  # the Debian base image its hosts boot
FLEET_SHARED, FLEET_DOCK = "shared", "dock"
FLEET_SHARED_ADDRESS, FLEET_DOCK_ADDRESS = "10.0.5.24", "10.0.5.30"
FLEET_INSTANCES = {"alpha": 3001, "beta": 3002}
# The instances' host names: under .test (RFC 2606), which no DNS resolves, so nothing can
# ever dial them outside the guests; a probe names the Docker host's address for them itself
# (curl --resolve, or probes.http_get's server_name).
FLEET_DOMAIN = "boottest.test"
FLEET_HOST_NAMES = {name: f"{name}.{FLEET_DOMAIN}" for name in FLEET_INSTANCES}
FLEET_DATA_DEVICE = "/dev/vdb"
# Golden images are baked from the fleet's blueprint with this key: no image holds an admin
# key (the seed brings it), so the image, and its cache key, do not depend on the run's key.
BAKE_ADMIN_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleKeyOnlyReplaceWithYourOwnPublicKey00 bake@tests"
)


def fleet_text(mirror: Any, archive_sha256: str, admin_key: str = BAKE_ADMIN_KEY) -> str:
    """The two-VM fleet's blueprint: the shared host and one Docker host with two instances
    behind its front door."""
    instances = "\n".join(
        f"  - {{name: {name}, host: {FLEET_DOCK}, port: {port}, "
        f"url: https://{FLEET_HOST_NAMES[name]}}}"
        for name, port in FLEET_INSTANCES.items()
    )
    return f"""apiVersion: owuibuild/v1
name: fleetboot
os: {{distro: debian-13, timezone: UTC}}
mirror: {mirror.guest_url}
admin:
  user: {ADMIN}
  ssh_authorized_keys: ["{admin_key}"]
  allow_from: [10.0.2.2/32]
network: {{cidr: 10.0.5.0/24, gateway: 10.0.5.1, dns: [10.0.5.1], interface: {FLEET_INTERFACE}}}
shared:
  host:
    name: {FLEET_SHARED}
    address: {FLEET_SHARED_ADDRESS}
    data_volume: {{label: {DATA_LABEL}, device: {FLEET_DATA_DEVICE}}}
  ollama:
    version: "{OLLAMA_VERSION}"
    sha256: {mirror.sha256(ollama_filename(OLLAMA_VERSION))}
    models: [tinyllama]
    embedding_model: tinyllama
    # Not a model owuibuild knows: the length of the Ollama double's /api/embed vectors.
    embedding_dimensions: {EMBEDDING_DIMENSIONS}
  qdrant:
    version: "{QDRANT_VERSION}"
    sha256: {mirror.sha256(qdrant_filename(QDRANT_VERSION))}
hosts:
  - name: {FLEET_DOCK}
    address: {FLEET_DOCK_ADDRESS}
    data_volume: {{label: {DATA_LABEL}, device: {FLEET_DATA_DEVICE}}}
openwebui: {{image: {STANDIN_IMAGE}, version: "{STANDIN_VERSION}", archive_sha256: {archive_sha256}}}
# Caddy on the Docker host serves each instance by its url's host name, with a certificate from
# the fleet CA; 80 and 443 open to the fleet network (allow_from's default).
front_door: {{tls: internal}}
# Prometheus on the shared host scrapes both hosts; no receiver: alerts stay in Prometheus.
monitoring: {{retention: 2d}}
instances:
{instances}
images: {{builders: [qemu], bake_models: true}}
"""


@dataclass
class Fleet:
    """The rendered test fleet: the shared host's seed and what the probes need."""

    workdir: Path
    blueprint: Path
    out: Path
    key: Path  # the admin's private key (a fresh one per run, in a temp dir)
    secrets: dict[str, str]
    redis_ports: dict[str, int]
    db_names: dict[str, str]
    ca_file: Path  # the fleet CA's certificate, as rendered
    shared_address: str  # the name the shared host's certificate carries (never dialled here)

    def tls(self) -> ssl.SSLContext:
        return probes.tls_context(cafile=str(self.ca_file))

    @property
    def seed_iso(self) -> Path:
        return self.out / "hosts" / SHARED / "seed.iso"

    @property
    def guest_ports(self) -> list[int]:
        return [SSH_PORT, POSTGRES_PORT, QDRANT_PORT, OLLAMA_PORT, *self.redis_ports.values()]

    def secret(self, name: str) -> str:
        return self.secrets[name]

    def db_password(self, instance: str) -> str:
        return self.secret(f"instances.{instance}.db_password")

    def redis_password(self, instance: str) -> str:
        return self.secret(f"instances.{instance}.redis_password")


def admin_key(workdir: Path, comment: str) -> Path:
    """A fresh ed25519 key pair for the fleet's admin (the private key's path)."""
    key = workdir / "admin_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)],
        check=True,
    )
    return key


def render_with_cli(blueprint: Path, out: Path) -> tuple[dict[str, str], Any]:
    """Render ``blueprint`` into ``out`` with the real CLI; its secrets and its plan."""
    from owuibuild import secrets as store
    from owuibuild.pipeline import compile_blueprint

    proc = subprocess.run(
        [sys.executable, "-m", "owuibuild.cli", "render", str(blueprint), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    values, diagnostics = store.read(store.secrets_path(blueprint))
    assert values, diagnostics
    compiled = compile_blueprint(blueprint, write_secrets=False)
    assert compiled.ok and compiled.plan is not None
    return dict(values), compiled.plan


def render_fleet(workdir: Path, mirror: Any) -> Fleet:
    """Write the blueprint with a fresh admin key and render it with the real CLI."""
    for name in (ollama_filename(OLLAMA_VERSION), qdrant_filename(QDRANT_VERSION)):
        assert name in mirror.files, f"the mirror does not serve {name}: versions drifted"
    key = admin_key(workdir, "boot-test")
    blueprint = workdir / "boottest.yml"
    blueprint.write_text(
        blueprint_text(
            mirror.guest_url,
            mirror.sha256(ollama_filename(OLLAMA_VERSION)),
            mirror.sha256(qdrant_filename(QDRANT_VERSION)),
            key.with_suffix(".pub").read_text().strip(),
        )
    )
    out = workdir / "out"
    values, plan = render_with_cli(blueprint, out)
    return Fleet(
        workdir=workdir,
        blueprint=blueprint,
        out=out,
        key=key,
        secrets=values,
        redis_ports={i.name: i.redis_port for i in plan.instances},
        db_names={i.name: i.db_name for i in plan.instances},
        ca_file=out / CA_FILE,
        shared_address=str(plan.shared.host.address),
    )


def empty_disk(path: Path, size: str = "2G") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


# -- probes from the QEMU host, through 127.0.0.1 forwards -------------------------------------

LOOPBACK = "127.0.0.1"


def pg_login(
    vm: Any, fleet: Fleet, user: str, database: str, password: str | None = None
) -> probes.Outcome:
    return probes.pg_login(
        LOOPBACK,
        vm.host_port(POSTGRES_PORT),
        user,
        fleet.db_names.get(database, database),
        fleet.db_password(user) if password is None else password,
        timeout=20,
        tls=fleet.tls(),
        server_name=fleet.shared_address,
    )


def redis_ping(
    vm: Any, fleet: Fleet, server: str, user: str, password: str | None = None
) -> probes.Outcome:
    return probes.redis_ping(
        LOOPBACK,
        vm.host_port(fleet.redis_ports[server]),
        user,
        fleet.redis_password(user) if password is None else password,
        timeout=10,
        tls=fleet.tls(),
        server_name=fleet.shared_address,
    )


def redis_call(vm: Any, fleet: Fleet, instance: str, *command: str) -> Any:
    """AUTH as the instance's ACL user on its own server, then one command; its reply."""
    port = vm.host_port(fleet.redis_ports[instance])
    deadline = probes.Deadline(20)
    tls, name = fleet.tls(), fleet.shared_address
    with probes.connect(LOOPBACK, port, deadline, tls=tls, server_name=name) as sock:
        sock.settimeout(20)
        replies = []
        for args in (("AUTH", instance, fleet.redis_password(instance)), command):
            sock.sendall(probes.resp_encode(*args))
            buffer = b""
            while True:
                decoded = probes.resp_decode(buffer)
                if decoded is not None:
                    replies.append(decoded[0])
                    break
                chunk = sock.recv(65536)
                assert chunk, "redis closed the connection"
                buffer += chunk
        assert replies[0] == "OK", "AUTH failed"
        return replies[1]


def plain_http(
    vm: Any, guest_port: int, path: str, headers: dict[str, str] | None = None
) -> probes.HttpAnswer:
    """Plain HTTP to a guest port through its forward (Qdrant and Ollama's terminator refuse
    it: they speak HTTPS only)."""
    return probes.http_get(LOOPBACK, vm.host_port(guest_port), path, 20, headers)


class _ForwardedHTTPS(HTTPSConnection):
    """HTTPS to a guest port through its 127.0.0.1 forward, the server's certificate verified
    against the fleet CA for the name the guest's service has (its blueprint address), as an
    instance host would dial it."""

    def __init__(self, port: int, server_name: str, tls: ssl.SSLContext, timeout: float) -> None:
        super().__init__(LOOPBACK, port, timeout=timeout, context=tls)
        self.server_name, self.tls = server_name, tls

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.server_name)


def https(
    vm: Any,
    fleet: Fleet,
    guest_port: int,
    path: str,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: bytes | None = None,
) -> probes.HttpAnswer:
    """An HTTPS request to the shared host's Qdrant or Ollama (its TLS terminator), verified
    with the fleet CA for the shared host's address. Raises ssl.SSLError or OSError."""
    conn = _ForwardedHTTPS(vm.host_port(guest_port), fleet.shared_address, fleet.tls(), 20)
    try:
        conn.request(
            method, path, body=body, headers={"Accept": "application/json", **(headers or {})}
        )
        response = conn.getresponse()
        return probes.HttpAnswer(response.status, response.read())
    finally:
        conn.close()


def tcp_listeners(vm: Any, port: int) -> dict[str, str]:
    """The guest's TCP listeners on ``port``: local address -> the systemd unit of the process
    that listens (from its cgroup), e.g. ``{"127.0.0.1:11434": "ollama.service"}``."""
    shown = vm.ssh(f"sudo ss -Hltnp 'sport = :{port}'", check=True, timeout=60).stdout
    found = {}
    for line in shown.splitlines():
        fields = line.split()
        pid = re.search(r"pid=(\d+)", line)
        assert pid, line
        cgroup = vm.ssh(f"sudo cat /proc/{pid[1]}/cgroup", check=True, timeout=60).stdout
        found[fields[3]] = cgroup.strip().rsplit("/", 1)[-1]
    return found


def psql(vm: Any, fleet: Fleet, user: str, sql: str) -> str:
    """Run SQL as an instance role on its own database (psql; the password only in env)."""
    conn = (
        f"host={fleet.shared_address} hostaddr={LOOPBACK} port={vm.host_port(POSTGRES_PORT)} "
        f"user={user} dbname={fleet.db_names[user]} connect_timeout=20 "
        f"sslmode=verify-full sslrootcert={fleet.ca_file}"
    )
    proc = subprocess.run(
        ["psql", "--no-psqlrc", "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", conn, "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PGPASSWORD": fleet.db_password(user)},
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def readiness(vm: Any, fleet: Fleet) -> dict[str, str]:
    """What is not healthy yet (empty when every service answers as it should)."""
    bad: dict[str, str] = {}
    for name in DOCK_INSTANCES:
        pg = pg_login(vm, fleet, name, name)
        if pg.state is not probes.State.OK:
            bad[f"postgres {name}"] = str(pg)
        rd = redis_ping(vm, fleet, name, name)
        if rd.state is not probes.State.OK:
            bad[f"redis {name}"] = str(rd)
    try:
        answer = https(vm, fleet, QDRANT_PORT, "/readyz")
        if answer.status != 200:
            bad["qdrant"] = f"HTTP {answer.status}"
        answer = https(vm, fleet, OLLAMA_PORT, "/api/tags")
        names = {m["name"].split(":")[0] for m in json.loads(answer.body).get("models", [])}
        if answer.status != 200 or not set(MODELS) <= names:
            bad["ollama"] = f"HTTP {answer.status}, models {sorted(names)}"
    except (OSError, ValueError, HTTPException, probes.ProbeFailure) as exc:
        bad["http"] = repr(exc)
    return bad


def wait_until_ready(vm: Any, fleet: Fleet, timeout: float = 600) -> float:
    """Poll every service through the forwards; the VM's uptime once all are healthy."""
    deadline = time.monotonic() + timeout
    while True:
        bad = readiness(vm, fleet)
        if not bad:
            return float(vm.uptime())
        if time.monotonic() > deadline:
            raise AssertionError(f"services not healthy after {timeout:.0f} s: {bad}")
        time.sleep(3)


# -- cloud-init ----------------------------------------------------------------------------------


def cloud_init_report(vm: Any) -> str:
    """The guest's cloud-init logs, for a failure message."""
    parts = []
    for command in (
        "cloud-init status --long",
        "sudo grep -hE 'WARNING|ERROR|CRITICAL|Traceback' /var/log/cloud-init.log | tail -n 80",
        "sudo tail -n 200 /var/log/cloud-init-output.log",
        "sudo systemctl --failed --no-legend",
    ):
        proc = vm.ssh(command, timeout=120)
        parts.append(f"--- {command}\n{proc.stdout}{proc.stderr}")
    return "\n".join(parts)


def assert_cloud_init_clean(vm: Any, timeout: float = 1800) -> Any:
    status = vm.wait_for_cloud_init(timeout=timeout)
    clean = (
        status.status == "done"
        and not status.errors
        and not status.recoverable
        and not status.log_warnings
    )
    if not clean:
        raise AssertionError(
            f"cloud-init not clean: {status.status} errors={status.errors} "
            f"recoverable={status.recoverable} warnings={status.log_warnings}\n"
            + cloud_init_report(vm)
        )
    return status


# -- the benchmark record --------------------------------------------------------------------


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "owuibuild"
    return Path(os.environ.get("OWUIBUILD_CACHE", default))


def bench_path() -> Path:
    return cache_root() / "bench" / "boot.json"


@dataclass
class BootTiming:
    """Seconds from QEMU's start: first SSH login, cloud-init done, ready (every service of the
    host healthy; for a Docker host, its instances healthy). ``image`` names the row:
    ``bare`` (one guest: the base image with a seed that only sets the admin user) or
    ``<kind>/<bare|vanilla|golden>`` with kind ``shared`` or ``instance-host`` (two guests side
    by side; ``<kind>/bare``: the plain base image and the host's seed cut down to its admin
    user)."""

    image: str
    ssh_s: float
    cloud_init_done_s: float
    ready_s: float
    extra: dict[str, Any] = field(default_factory=dict)


KINDS = ("shared", "instance-host")
# One id for every row measured by one test process: rows of one run were measured side by
# side, on the same machine under the same load.
RUN_ID = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"


HISTORY = 120


def record_boot(timing: BootTiming, path: Path | None = None) -> dict[str, Any]:
    """Merge one measurement into boot.json (atomically) and recompute the ratios."""
    path = path or bench_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    rows = data.setdefault("rows", {})
    rows[timing.image] = {
        "boot_to_ready_s": round(timing.ready_s, 1),
        "ssh_s": round(timing.ssh_s, 1),
        "cloud_init_done_s": round(timing.cloud_init_done_s, 1),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": RUN_ID,
        **timing.extra,
    }
    # Every measurement also goes to a history (the last HISTORY rows), so the bench can show
    # how golden/bare moves from run to run: the same images' ratio moves by a fifth between
    # runs on a shared two-core machine.
    history = data.setdefault("history", [])
    history.append({"image": timing.image, **rows[timing.image]})
    del history[:-HISTORY]
    ratios = {}
    for kind in KINDS:
        # The bare pair boots side by side as the golden pair does; a lone bare guest has
        # the machine to itself, so it is the comparison only when no pair was measured.
        bare = rows.get(f"{kind}/bare") or rows.get("bare")
        golden = rows.get(f"{kind}/golden")
        if bare and golden and bare["boot_to_ready_s"] > 0:
            ratios[kind] = round(golden["boot_to_ready_s"] / bare["boot_to_ready_s"], 2)
    data["ratio_golden_to_bare"] = ratios
    data["cpus"] = os.cpu_count()
    data["accelerator"] = "tcg"
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return data


def ssh_lines(vm: Any, command: str) -> list[str]:
    return [line for line in vm.ssh(command, check=True, timeout=120).stdout.splitlines() if line]
