"""Boot tier: a real two-VM Debian 13 fleet, a shared host and a Docker host, booted from their
generated seeds and talking over a private network through both generated firewalls.

The network the test builds::

    shared  10.0.5.24 (ens17)  <-- fleet link: QEMU UDP sockets on 127.0.0.1 -->  dock  10.0.5.30
      |  ens16: user-mode uplink (ssh forward, Debian's mirror, the doubles' mirror)   |  ens16

The fleet link carries only frames between the two guests; nothing on it leaves the machine.
Each guest's uplink is the QEMU user-mode network, configured by the test base image itself
(tests/infra/vm-image.sh), so the seeds' own network-config drives the fleet NIC exactly as
rendered. The host dials nothing but 127.0.0.1 forwards; every probe of a blueprint address
runs inside a guest.

TEST DOUBLES: the Ollama and Qdrant servers are the mirror's doubles (tests/doubles), and the
instances run a small stand-in image in place of Open WebUI (tests/doubles/openwebui_standin.py,
tagged with the generated image reference): it turns healthy only after it has used every
connection of its env file. No registry can be reached, so the blueprint names the image as a
`docker save` archive on the mirror (openwebui.archive_sha256), which the Docker host's own
install step loads, as an air-gapped site would. The real Open WebUI runs in the containers tier.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fleet_blueprint import (
    OLLAMA_VERSION,
    QDRANT_VERSION,
    REAL_OPENWEBUI,
    STANDIN_IMAGE,
    STANDIN_VERSION,
    BootTiming,
    admin_key,
    assert_cloud_init_clean,
    empty_disk,
    record_boot,
    render_with_cli,
)
from infra.vm import FLEET_INTERFACE, VM, FleetLink, ensure_base_image, missing_tools
from owuibuild.artifacts import ollama_filename, qdrant_filename

pytestmark = pytest.mark.boot

ADMIN = "ops"
SHARED, DOCK = "shared", "dock"
SHARED_ADDRESS, DOCK_ADDRESS = "10.0.5.24", "10.0.5.30"
INSTANCES = {"alpha": 3001, "beta": 3002}
IMAGE, OPENWEBUI_VERSION = STANDIN_IMAGE, STANDIN_VERSION
MEMORY_MB = 2048
# Two real Open WebUI instances need about 875 MB each, and far longer to start under TCG.
DOCK_MEMORY_MB = 6144 if REAL_OPENWEBUI else MEMORY_MB
HEALTHY_TIMEOUT = 5400 if REAL_OPENWEBUI else 1200
# Two guests share the machine's cores under TCG: a vanilla first boot (apt over user-mode
# networking) can take half an hour on a busy 2-core machine.
BOOT_TIMEOUT = 3600
DATA_DEVICE = "/dev/vdb"
PROBES = Path(__file__).resolve().parents[2] / "builder" / "probes.py"


def blueprint_text(mirror: Any, admin_key: str, archive_sha256: str) -> str:
    instances = "\n".join(
        f"  - {{name: {name}, host: {DOCK}, port: {port}}}" for name, port in INSTANCES.items()
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
    name: {SHARED}
    address: {SHARED_ADDRESS}
    data_volume: {{label: owui-data, device: {DATA_DEVICE}}}
  ollama:
    version: "{OLLAMA_VERSION}"
    sha256: {mirror.sha256(ollama_filename(OLLAMA_VERSION))}
    models: [tinyllama]
    embedding_model: tinyllama
  qdrant:
    version: "{QDRANT_VERSION}"
    sha256: {mirror.sha256(qdrant_filename(QDRANT_VERSION))}
hosts:
  - name: {DOCK}
    address: {DOCK_ADDRESS}
    data_volume: {{label: owui-data, device: {DATA_DEVICE}}}
openwebui: {{image: {IMAGE}, version: "{OPENWEBUI_VERSION}", archive_sha256: {archive_sha256}}}
instances:
{instances}
images: {{builders: [qemu], bake_models: false}}
"""


@dataclass
class Fleet:
    workdir: Path
    out: Path
    key: Path
    secrets: dict[str, str]
    plan: Any

    def seed(self, host: str) -> Path:
        return self.out / "hosts" / host / "seed.iso"

    def instance(self, name: str) -> Any:
        return next(i for i in self.plan.instances if i.name == name)


def render(workdir: Path, mirror: Any, archive_sha256: str) -> Fleet:
    key = admin_key(workdir, "fleet-boot")
    blueprint = workdir / "fleetboot.yml"
    blueprint.write_text(
        blueprint_text(mirror, key.with_suffix(".pub").read_text().strip(), archive_sha256)
    )
    out = workdir / "out"
    values, plan = render_with_cli(blueprint, out)
    assert plan.openwebui_image == f"{IMAGE}:v{OPENWEBUI_VERSION}"
    return Fleet(workdir, out, key, values, plan)


# -- in-guest probes -----------------------------------------------------------------------------

# Runs inside a guest with owuibuild's probes module next to it; its input (credentials
# included) arrives on stdin, never on a command line.
GUEST_PROBE = r"""
import json, socket, sys
sys.path.insert(0, "/tmp")
import probes
req = json.load(sys.stdin)
out = {}
for name, p in req.get("pg", {}).items():
    o = probes.pg_login(p["host"], 5432, p["user"], p["db"], p["password"], 10)
    out[name] = o.state.value
for name, p in req.get("redis", {}).items():
    o = probes.redis_ping(p["host"], p["port"], p["user"], p["password"], 10)
    out[name] = o.state.value
for name, (host, port) in req.get("tcp", {}).items():
    try:
        socket.create_connection((host, port), timeout=5).close()
        out[name] = "open"
    except socket.timeout:
        out[name] = "timeout"
    except ConnectionRefusedError:
        out[name] = "refused"
    except OSError as exc:
        out[name] = type(exc).__name__
for name, (host, port, path) in req.get("http", {}).items():
    try:
        out[name] = probes.http_get(host, port, path, 10).status
    except Exception as exc:
        out[name] = type(exc).__name__
print(json.dumps(out))
"""


def guest_probe(vm: VM, request: dict[str, Any]) -> dict[str, Any]:
    vm.ssh("cat > /tmp/probes.py", input=PROBES.read_text(), check=True, timeout=60)
    vm.ssh("cat > /tmp/owuibuild_probe.py", input=GUEST_PROBE, check=True, timeout=60)
    proc = vm.ssh(
        "python3 /tmp/owuibuild_probe.py", input=json.dumps(request), check=True, timeout=300
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def instance_health(vm: VM, fleet: Fleet) -> dict[str, str]:
    health = {}
    for name in INSTANCES:
        inst = fleet.instance(name)
        unit = vm.ssh(f"systemctl is-active {inst.unit_name}", timeout=60).stdout.strip()
        state = vm.ssh(
            f"sudo docker compose -p {name} ps --format json openwebui", timeout=60
        ).stdout
        healthy = '"Health":"healthy"' in state.replace(" ", "")
        health[name] = f"{unit} {'healthy' if healthy else state.strip()[:200]}"
    return health


def wait_instances_healthy(vm: VM, fleet: Fleet, timeout: float = HEALTHY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        health = instance_health(vm, fleet)
        if all(h == "active healthy" for h in health.values()):
            return
        if time.monotonic() > deadline:
            checks = vm.ssh(
                f"curl -s http://{DOCK_ADDRESS}:{INSTANCES['alpha']}/checks", timeout=60
            ).stdout
            journal = vm.ssh("sudo journalctl -u 'owuibuild-*' --no-pager | tail -n 60").stdout
            raise AssertionError(f"instances not healthy: {health}\n{checks}\n{journal}")
        time.sleep(5)


def boot_pair(fleet: Fleet, disks: dict[str, Path], links: dict[str, FleetLink]) -> dict[str, VM]:
    base = ensure_base_image("trixie")
    vms = {
        host: VM(
            base,
            fleet.seed(host),
            data_disk=disks[host],
            memory_mb=DOCK_MEMORY_MB if host == DOCK else MEMORY_MB,
            name=f"fleet-{host}",
            fleet_link=links[host],
            forwards={3001: None} if host == DOCK else None,
        )
        for host in (SHARED, DOCK)
    }
    for vm in vms.values():
        vm.start()
    return vms


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(mirror: Any, openwebui_standin: str, tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    missing = missing_tools(extra=["mmdebstrap"])
    if missing:
        from conftest import unavailable

        unavailable(f"the boot tier needs {', '.join(missing)} (make system-deps installs them)")
    return render(tmp_path_factory.mktemp("fleet2"), mirror, openwebui_standin)


@pytest.fixture(scope="module")
def booted(fleet: Fleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Both VMs, booted in parallel from the trixie base image, cloud-init clean, instances
    healthy. Yields the VMs and what the tests share."""
    disks = {
        h: empty_disk(tmp_path_factory.mktemp(f"data-{h}") / "data.qcow2") for h in (SHARED, DOCK)
    }
    a, b = FleetLink.pair()
    links = {SHARED: a, DOCK: b}
    vms = boot_pair(fleet, disks, links)
    try:
        ssh = {h: vm.wait_for_ssh(fleet.key, ADMIN, timeout=BOOT_TIMEOUT) for h, vm in vms.items()}
        statuses, done = {}, {}
        for host, vm in vms.items():
            statuses[host] = assert_cloud_init_clean(vm, BOOT_TIMEOUT)
            done[host] = vm.uptime()
        wait_instances_healthy(vms[DOCK], fleet)
        ready = {SHARED: done[SHARED], DOCK: vms[DOCK].uptime()}
        for host, kind in ((SHARED, "shared"), (DOCK, "instance-host")):
            record_boot(BootTiming(f"{kind}/vanilla", ssh[host], done[host], ready[host]))
        yield {"vms": vms, "disks": disks, "links": links, "statuses": statuses}
    finally:
        for vm in vms.values():
            vm.close()


# -- the tests -----------------------------------------------------------------------------------


def test_fleet_boots_and_instances_are_healthy(booted: dict[str, Any], fleet: Fleet) -> None:
    for status in booted["statuses"].values():
        assert status.status == "done" and not status.errors
    dock = booted["vms"][DOCK]
    output = dock.ssh("sudo cat /var/log/cloud-init-output.log", check=True).stdout
    assert f"owuibuild: loaded {fleet.plan.openwebui_image}" in output
    # Docker from Debian's own archive: no third-party apt source on the host.
    sources = dock.ssh("grep -rh '^[^#]' /etc/apt/sources.list.d/ || true").stdout
    assert "docker.com" not in sources, sources
    assert dock.ssh("docker compose version", check=True).stdout.startswith("Docker Compose")
    assert all(h == "active healthy" for h in instance_health(dock, fleet).values())
    if REAL_OPENWEBUI:
        print(f"real Open WebUI healthy on the Docker host after {dock.uptime():.0f} s")
        return
    # The double got healthy only by using every connection its env file names.
    for name, port in INSTANCES.items():
        checks = json.loads(
            dock.ssh(f"curl -sf http://{DOCK_ADDRESS}:{port}/checks", check=True).stdout
        )
        assert {k: v["ok"] for k, v in checks.items()} == dict.fromkeys(
            ("postgres", "redis", "qdrant", "ollama"), True
        ), (name, checks)


def pg_request(inst: Any, database: str, password: str) -> dict[str, Any]:
    return {"host": SHARED_ADDRESS, "user": inst.db_role, "db": database, "password": password}


def redis_request(inst: Any, port: int, password: str) -> dict[str, Any]:
    return {"host": SHARED_ADDRESS, "port": port, "user": inst.redis_user, "password": password}


def test_credentials_are_refused_across_instances(booted: dict[str, Any], fleet: Fleet) -> None:
    dock = booted["vms"][DOCK]
    a, b = fleet.instance("alpha"), fleet.instance("beta")
    pw = fleet.secrets
    result = guest_probe(
        dock,
        {
            "pg": {
                "pg-own": pg_request(a, a.db_name, pw[a.db_password.name]),
                "pg-other-db": pg_request(a, b.db_name, pw[a.db_password.name]),
            },
            "redis": {
                "redis-own": redis_request(a, a.redis_port, pw[a.redis_password.name]),
                "redis-other-server": redis_request(a, b.redis_port, pw[a.redis_password.name]),
            },
        },
    )
    assert result == {
        "pg-own": "ok",
        "pg-other-db": "refused",
        "redis-own": "ok",
        "redis-other-server": "auth-failed",
    }, result


def test_shared_firewall_drops_ports_outside_the_plan(booted: dict[str, Any]) -> None:
    dock = booted["vms"][DOCK]
    result = guest_probe(
        dock,
        {
            "tcp": {
                "postgres": (SHARED_ADDRESS, 5432),
                "ssh": (SHARED_ADDRESS, 22),
                "unused": (SHARED_ADDRESS, 9),
            }
        },
    )
    # In the plan: open. SSH (only from admin.allow_from) and an unused port: dropped, so the
    # connection times out instead of being refused.
    assert result == {"postgres": "open", "ssh": "timeout", "unused": "timeout"}, result


def test_instance_ports_answer_only_on_the_private_address(booted: dict[str, Any]) -> None:
    dock, shared = booted["vms"][DOCK], booted["vms"][SHARED]
    port = INSTANCES["alpha"]
    health = f"http://{DOCK_ADDRESS}:{port}/health"
    assert http_status(dock, health) == "200"
    assert guest_probe(dock, {"tcp": {"loopback": ("127.0.0.1", port)}}) == {"loopback": "refused"}
    # A host of the fleet network reaches it.
    assert http_status(shared, health) == "200"
    # From outside the fleet network (the uplink forward, from 10.0.2.2) nothing answers.
    from owuibuild import probes

    with pytest.raises((OSError, probes.ProbeFailure)):
        probes.http_get("127.0.0.1", dock.host_port(port), "/health", 10)
    # A sender on the fleet link but outside the fleet network: Docker's DOCKER-USER chain,
    # through the generated filter, drops it (its DROP rule for that port counts the packets).
    drops_before = drop_count(dock, port)
    shared.ssh(f"sudo ip addr add {OUTSIDER}/24 dev {FLEET_INTERFACE}", check=True)
    try:
        probe = http_status(shared, f"--interface {OUTSIDER} {health}")
    finally:
        shared.ssh(f"sudo ip addr del {OUTSIDER}/24 dev {FLEET_INTERFACE}", check=True)
    assert probe == "000", probe
    assert drop_count(dock, port) > drops_before


OUTSIDER = "10.0.6.5"  # on the fleet link, outside the fleet's 10.0.5.0/24


def http_status(vm: VM, url: str) -> str:
    """The HTTP status a GET of ``url`` gets from inside ``vm`` ("000": no answer)."""
    proc = vm.ssh(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 {url}", timeout=60)
    return proc.stdout.strip()


def drop_count(dock: VM, port: int) -> int:
    """Packets the published-port filter dropped for ``port`` (iptables counters)."""
    rules = dock.ssh("sudo iptables -w -L OWUIBUILD-PORTS -v -n -x", check=True).stdout
    counts = [
        int(line.split()[0])
        for line in rules.splitlines()
        if " DROP " in f" {line} " and f"ctorigdstport {port}" in line
    ]
    assert counts, rules
    return sum(counts)
