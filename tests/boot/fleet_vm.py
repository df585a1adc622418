"""The two-VM Debian 13 fleet of the boot tier: rendering it, booting it, and probing it from
inside its guests (tests/boot/test_fleet_boot.py, tests/boot/test_fleet_vanilla.py).

The network the tests build::

    shared  10.0.5.24 (ens17)  <-- fleet link: QEMU UDP sockets on 127.0.0.1 -->  dock  10.0.5.30
      |  ens16: user-mode uplink (ssh forward, Debian's mirror, the doubles' mirror)   |  ens16

The Docker host serves its instances through its front door (Caddy on 10.0.5.30:443, and :80
for redirects), by host names under .test that no DNS resolves: a probe names the address for
them itself (curl --resolve). The instances' own ports are on the Docker host's loopback only.

The fleet link carries only frames between the two guests; nothing on it leaves the machine.
It is two UDP ports on the machine's loopback, one frame a datagram, so tcpdump on ``lo``
records the whole wire between the hosts (tests/boot/fleet_capture.py). Every service on it
speaks TLS with the fleet CA's certificates: PostgreSQL, Redis, Qdrant, and Ollama through its
Caddy terminator (Ollama itself listens on the shared host's loopback only).
Each guest's uplink is the QEMU user-mode network, configured by the test base image itself
(tests/infra/vm-image.sh), so the seeds' own network-config drives the fleet NIC exactly as
rendered. The host dials nothing but 127.0.0.1 forwards; every probe of a blueprint address
runs inside a guest.

TEST DOUBLES: the Ollama and Qdrant servers are the mirror's doubles (tests/doubles), and the
instances run a small stand-in image in place of Open WebUI (tests/doubles/openwebui_standin.py,
tagged with the generated image reference): it turns healthy only after it has used every
connection of its env file. No registry can be reached, so the blueprint names the image as a
`docker save` archive on the mirror (openwebui.archive_sha256), which the Docker host's own
install step loads (at first boot on a vanilla host, at bake time for the golden image), as an
air-gapped site would. The real Open WebUI runs in the containers tier.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from fleet_blueprint import (
    ADMIN,
    FLEET_DATA_DEVICE,
    FLEET_DOCK,
    FLEET_DOCK_ADDRESS,
    FLEET_HOST_NAMES,
    FLEET_INSTANCES,
    FLEET_SHARED,
    FLEET_SHARED_ADDRESS,
    REAL_OPENWEBUI,
    STANDIN_IMAGE,
    STANDIN_VERSION,
    BootTiming,
    admin_key,
    assert_cloud_init_clean,
    bench_path,
    fleet_text,
    record_boot,
    render_with_cli,
)
from infra.vm import VM, BaseImage, FleetLink, cloud_init_done_wait
from owuibuild.hostconfig import docker as docker_section
from owuibuild.hostconfig import qdrant as qdrant_section
from owuibuild.plan import DATA_MOUNT, FLEET_CA, HTTP_PORT, HTTPS_PORT, LOOPBACK, OLLAMA_PORT
from owuibuild.seed_iso import make_seed_iso
from owuibuild.targets.hosts import unpack_user_data

SHARED, DOCK = FLEET_SHARED, FLEET_DOCK
SHARED_ADDRESS, DOCK_ADDRESS = FLEET_SHARED_ADDRESS, FLEET_DOCK_ADDRESS
INSTANCES = FLEET_INSTANCES
HOST_NAMES = FLEET_HOST_NAMES  # instance -> the host name of its url
IMAGE, OPENWEBUI_VERSION = STANDIN_IMAGE, STANDIN_VERSION
KINDS = {SHARED: "shared", DOCK: "instance-host"}
MEMORY_MB = 2048
# Two real Open WebUI instances need about 875 MB each, and far longer to start under TCG.
DOCK_MEMORY_MB = 6144 if REAL_OPENWEBUI else MEMORY_MB
HEALTHY_TIMEOUT = 5400 if REAL_OPENWEBUI else 1200
# Two guests share the machine's cores under TCG: a vanilla first boot (apt over user-mode
# networking) can take half an hour on a busy 2-core machine.
BOOT_TIMEOUT = 3600
DATA_DEVICE = FLEET_DATA_DEVICE
MODELS_DIR = f"{DATA_MOUNT}/ollama/models"
PROBES = Path(__file__).resolve().parents[2] / "builder" / "probes.py"


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
        fleet_text(mirror, archive_sha256, key.with_suffix(".pub").read_text().strip())
    )
    out = workdir / "out"
    values, plan = render_with_cli(blueprint, out)
    assert plan.openwebui_image == f"{IMAGE}:v{OPENWEBUI_VERSION}"
    return Fleet(workdir, out, key, values, plan)


# -- in-guest probes -----------------------------------------------------------------------------

# Runs inside a guest with owuibuild's probes module next to it; its input (credentials
# included) arrives on stdin, never on a command line.
GUEST_PROBE = r"""
import http.client, json, socket, ssl, sys
sys.path.insert(0, "/tmp")
import probes
req = json.load(sys.stdin)
out = {}
# Over TLS verified against the fleet CA at this path, as the instances connect; a probe with
# "plain" set speaks plain text instead.
tls = probes.tls_context(cafile=req["cafile"]) if req.get("cafile") else None
for name, p in req.get("pg", {}).items():
    o = probes.pg_login(p["host"], 5432, p["user"], p["db"], p["password"], 10,
                        tls=None if p.get("plain") else tls)
    out[name] = o.state.value
for name, p in req.get("redis", {}).items():
    o = probes.redis_ping(p["host"], p["port"], p["user"], p["password"], 10,
                          tls=None if p.get("plain") else tls)
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
# HTTP requests: over HTTPS verified with the fleet CA ("tls": "fleet", the default), with the
# system's CAs alone ("system": the fleet CA is not among them), or in plain text ("plain").
# The answer's status, or what went wrong ("certificate-refused", an exception's name).
for name, r in req.get("http", {}).items():
    mode = r.get("tls", "fleet")
    try:
        if mode == "plain":
            conn = http.client.HTTPConnection(r["host"], r["port"], timeout=20)
        else:
            context = tls if mode == "fleet" else ssl.create_default_context()
            conn = http.client.HTTPSConnection(r["host"], r["port"], timeout=20, context=context)
        body = r.get("body")
        conn.request(r.get("method", "GET"), r["path"], body=None if body is None else body.encode(),
                     headers=r.get("headers", {}))
        response = conn.getresponse()
        response.read()
        out[name] = response.status
    except ssl.SSLCertVerificationError:
        out[name] = "certificate-refused"
    except Exception as exc:
        out[name] = type(exc).__name__
# Requests to a front door as a browser that resolved a name to its address would send them:
# TCP to "address", TLS with "server_name" as SNI (None: no SNI), verified with the fleet CA
# for that name, or not verified ("verify": false), or plain HTTP ("tls": false), and the Host
# header "host" (default: the server name). The status, headers (name -> values) and body, or
# what went wrong ("certificate-refused", an exception's name).
for name, r in req.get("door", {}).items():
    try:
        conn = http.client.HTTPConnection(r["address"], r["port"], timeout=20)
        conn.connect()
        if r["tls"]:
            context = tls if r["verify"] else ssl._create_unverified_context()
            conn.sock = context.wrap_socket(conn.sock, server_hostname=r["server_name"])
        conn.request("GET", r["path"], headers={"Host": r["host"] or r["server_name"]})
        response = conn.getresponse()
        headers = {}
        for key, value in response.getheaders():
            headers.setdefault(key.lower(), []).append(value)
        out[name] = {"status": response.status, "headers": headers,
                     "body": response.read().decode(errors="replace")}
    except ssl.SSLCertVerificationError:
        out[name] = "certificate-refused"
    except Exception as exc:
        out[name] = type(exc).__name__
# GET through a front door with owuibuild's own probe, as `owuibuild status` asks an instance's
# /health there: probes.http_get to the address, with the name as SNI and Host.
for name, r in req.get("named", {}).items():
    try:
        answer = probes.http_get(r["address"], r["port"], r["path"], 20, tls=tls,
                                 server_name=r["server_name"])
        out[name] = {"status": answer.status, "body": answer.body.decode(errors="replace")}
    except Exception as exc:
        out[name] = type(exc).__name__
print(json.dumps(out))
"""


def web(
    host: str,
    port: int,
    path: str,
    *,
    tls: str = "fleet",
    method: str = "GET",
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One HTTP request of a guest probe (its "http" requests): over HTTPS verified with the
    fleet CA (``tls="fleet"``, the request's "cafile"), with the system's CAs alone
    (``"system"``) or in plain text (``"plain"``)."""
    return {
        "host": host,
        "port": port,
        "path": path,
        "tls": tls,
        "method": method,
        "body": body,
        "headers": headers or {},
    }


def door(
    server_name: str | None,
    path: str,
    *,
    tls: bool = True,
    verify: bool = True,
    host: str | None = None,
) -> dict[str, Any]:
    """One request of a guest probe (its "door" requests) to the Docker host's front door: over
    HTTPS to port 443 with ``server_name`` as SNI (verified with the fleet CA unless
    ``verify=False``), or plain HTTP to port 80 (``tls=False``); the Host header ``host``, by
    default the server name."""
    return {
        "address": DOCK_ADDRESS,
        "port": HTTPS_PORT if tls else HTTP_PORT,
        "server_name": server_name,
        "path": path,
        "tls": tls,
        "verify": verify,
        "host": host,
    }


def named(server_name: str, path: str) -> dict[str, Any]:
    """One request of a guest probe (its "named" requests): GET ``path`` from the front door
    with owuibuild's probes.http_get, as `owuibuild status` does."""
    return {"address": DOCK_ADDRESS, "port": HTTPS_PORT, "server_name": server_name, "path": path}


def door_url(name: str, path: str = "/health", *, scheme: str = "https") -> str:
    """curl's arguments for ``path`` of instance ``name`` through the Docker host's front door,
    from the other host: the instance's host name resolved to the Docker host's address (no
    DNS knows it), the certificate verified with the fleet CA (the host's copy)."""
    port = HTTPS_PORT if scheme == "https" else HTTP_PORT
    host = HOST_NAMES[name]
    return f"--resolve {host}:{port}:{DOCK_ADDRESS} --cacert {FLEET_CA} {scheme}://{host}{path}"


def instance_url(name: str, path: str) -> str:
    """``path`` of instance ``name`` on its own port, on the Docker host's loopback: the only
    address it is published on (ask it from the Docker host itself)."""
    return f"http://{LOOPBACK}:{INSTANCES[name]}{path}"


def instance_log(dock: VM, name: str) -> str:
    """What instance ``name``'s container logged (the test double logs each request it
    answered: client address, request line, status)."""
    container = f"$(sudo docker ps -q --filter label=com.docker.compose.project={name})"
    return dock.ssh(f"sudo docker logs {container} 2>&1", check=True, timeout=120).stdout


def front_door_serves(shared: VM, timeout: int = 120) -> dict[str, str]:
    """From the shared host: each instance's /health through the front door (its HTTP
    status), waiting up to ``timeout`` seconds for 200 (a host just booted may still be
    starting its front door after its instances)."""
    found = {}
    for name in INSTANCES:
        command = (
            f"timeout {timeout} sh -c 'until curl -sf -o /dev/null --max-time 10"
            f" {door_url(name)}; do sleep 2; done'"
        )
        shared.ssh(command, timeout=timeout + 60)
        found[name] = http_status(shared, door_url(name))
    return found


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


# Waits inside the guest until every instance's unit is active. A unit is active once its ready
# check (curl from the host) got an answer from /health. First one blocking wait, no polling: a
# transient unit ordered after the instance units runs once their queued start jobs are done
# (it starts nothing of theirs). Then `systemctl is-active` each second, which returns at once
# unless a unit is still to come back (a failed start that systemd restarts, or no job queued
# yet). Polling alone cost a tenth of a CPU second a second under TCG, and `docker ps` ten
# times that: CPU taken from the very start that is being timed.
HEALTHY_WAIT = (
    "timeout {timeout} sh -c '"
    "sudo systemd-run --quiet --wait --collect {after} /bin/true; "
    "until systemctl is-active --quiet {units}; do sleep 1; done'"
)


def wait_instances_healthy(vm: VM, fleet: Fleet, timeout: float = HEALTHY_TIMEOUT) -> float:
    """Wait until every instance's container is healthy and its unit active. Returns the
    guest's age (seconds since QEMU's start) when the in-guest wait saw them all healthy."""
    healthy_at = instances_active_at(vm, fleet, timeout)
    confirm_instances_healthy(vm, fleet, timeout)
    return healthy_at


def instances_active_wait(fleet: Fleet, timeout: float = HEALTHY_TIMEOUT) -> str:
    """The guest's shell wait until every instance unit is active (its ready check got an
    answer from the container's /health): see HEALTHY_WAIT."""
    units = [fleet.instance(n).unit_name for n in sorted(INSTANCES)]
    after = " ".join(f"--property=After={unit}" for unit in units)
    return HEALTHY_WAIT.format(timeout=int(timeout), after=after, units=" ".join(units))


def instances_active_at(vm: VM, fleet: Fleet, timeout: float = HEALTHY_TIMEOUT) -> float:
    """The guest's age when every instance unit was active."""
    return vm.wait_milestones([("ready", instances_active_wait(fleet, timeout))], timeout)["ready"]


def confirm_instances_healthy(vm: VM, fleet: Fleet, timeout: float = HEALTHY_TIMEOUT) -> None:
    """Docker's own word that every container is healthy (an SSH login and a compose run per
    instance, seconds apiece under TCG: not part of the boot's time)."""
    deadline = time.monotonic() + timeout
    while True:
        health = instance_health(vm, fleet)
        if all(h == "active healthy" for h in health.values()):
            return
        if time.monotonic() > deadline:
            checks = vm.ssh(f"curl -s {instance_url('alpha', '/checks')}", timeout=60).stdout
            journal = vm.ssh("sudo journalctl -u 'owuibuild-*' --no-pager | tail -n 60").stdout
            raise AssertionError(f"instances not healthy: {health}\n{checks}\n{journal}")
        time.sleep(5)


def start_fleet(
    fleet: Fleet,
    images: dict[str, BaseImage],
    disks: dict[str, Path],
    links: dict[str, FleetLink],
    label: str,
    restrict: bool = False,
    seeds: dict[str, Path] | None = None,
) -> dict[str, VM]:
    """Start both guests side by side, each from its image, with its data disk and fleet link
    (``restrict``: their uplink lets nothing out, so nothing can be fetched), from the rendered
    seeds unless ``seeds`` names others."""
    vms = {
        host: VM(
            images[host],
            (seeds or {}).get(host) or fleet.seed(host),
            data_disk=disks[host],
            memory_mb=DOCK_MEMORY_MB if host == DOCK else MEMORY_MB,
            name=f"fleet-{host}-{label}",
            fleet_link=links[host],
            # The test dials alpha's port through this forward (from 10.0.2.2, outside the
            # fleet network): nothing may answer (the port is on loopback only).
            forwards={INSTANCES["alpha"]: None} if host == DOCK else None,
            restrict=restrict,
        )
        for host in (SHARED, DOCK)
    }
    try:
        for vm in vms.values():
            vm.start()
    except BaseException:
        for vm in vms.values():
            vm.close()
        raise
    return vms


def wait_fleet_ready(
    vms: dict[str, VM], fleet: Fleet, label: str, record: bool = True
) -> dict[str, Any]:
    """SSH, cloud-init done on both hosts and the instances healthy, then cloud-init clean;
    records the boot timings as ``<kind>/<label>``. The cloud-init statuses."""
    booted = wait_booted(vms, fleet.key, ready={DOCK: instances_active_wait(fleet)})
    confirm_instances_healthy(vms[DOCK], fleet)
    record_pair(vms, label, booted.ssh, booted.done, booted.ready, record)
    return booted.statuses


@dataclass
class Booted:
    """Per host: seconds from QEMU's start to the first SSH login, to cloud-init done and to
    ready, and cloud-init's status."""

    ssh: dict[str, float]
    done: dict[str, float]
    ready: dict[str, float]
    statuses: dict[str, Any]


def wait_booted(
    vms: dict[str, VM],
    key: Path,
    timeout: float = BOOT_TIMEOUT,
    ready: dict[str, str] | None = None,
) -> Booted:
    """Wait for every guest at once (one thread each, so no guest's time includes waiting for
    another): SSH as the admin, then, in one more SSH session, cloud-init done and the shell
    wait ``ready[host]`` where given (else ready is done). Only when every guest is ready are
    their cloud-init statuses read and checked: that costs seconds of guest CPU (Python, SSH
    logins), which a guest still booting would lose to its neighbour on the same host cores."""
    from concurrent.futures import ThreadPoolExecutor

    def one(host: str, vm: VM) -> tuple[float, float, float]:
        ssh = vm.wait_for_ssh(key, ADMIN, timeout=timeout)
        waits = [("done", cloud_init_done_wait(timeout))]
        if ready and host in ready:
            waits.append(("ready", ready[host]))
        at = vm.wait_milestones(waits, timeout)
        return ssh, at["done"], at.get("ready", at["done"])

    with ThreadPoolExecutor(max_workers=len(vms)) as pool:
        jobs = {host: pool.submit(one, host, vm) for host, vm in vms.items()}
        results = {host: job.result() for host, job in jobs.items()}
    return Booted(
        ssh={h: r[0] for h, r in results.items()},
        done={h: r[1] for h, r in results.items()},
        ready={h: r[2] for h, r in results.items()},
        statuses={h: assert_cloud_init_clean(vm, timeout) for h, vm in vms.items()},
    )


def record_pair(
    vms: dict[str, VM],
    label: str,
    ssh: dict[str, float],
    done: dict[str, float],
    ready: dict[str, float],
    record: bool = True,
) -> None:
    """Record both hosts' rows as ``<kind>/<label>``, with where the boot's time went."""
    for host, kind in KINDS.items():
        timing = BootTiming(f"{kind}/{label}", ssh[host], done[host], ready[host])
        if record:
            record_boot(timing)
        print(f"{timing.image}: ssh {ssh[host]:.0f} s, ready {ready[host]:.0f} s")
        print(boot_profile(vms[host], f"{kind}-{label}"))


# Where a boot's time went, from the guest's own clocks (kept beside boot.json; read, never
# asserted): systemd's and cloud-init's accounts, and every reload of the manager.
PROFILE_COMMANDS = (
    "systemd-analyze time",
    "sudo cloud-init analyze show",
    "systemd-analyze blame --no-pager | head -n 25",
    "sudo journalctl -b -o short-monotonic --no-pager"
    " | grep -E 'preset|Reloading|Reloaded|cloud-init\\[[0-9]+\\]: Cloud-init v|finished at'",
    # The owuibuild units' own starts (on a Docker host, the instances' compose runs).
    "sudo journalctl -b -o short-monotonic --no-pager -u 'owui*' -u 'owuibuild-*'"
    " -u docker.service -u 'postgresql@*' -u 'redis-server@*' -u qdrant -u ollama | tail -n 80",
    "sudo tail -n 60 /var/log/cloud-init-output.log",
    # Where the CPU went (TCG makes every boot CPU-bound): the whole guest, then each service.
    "awk '/^cpu /{printf \"guest cpu: %.1f s busy, %.1f s idle\\n\", ($2+$3+$4+$7+$8)/100, ($5+$6)/100}'"
    " /proc/stat",
    "{ systemctl show --property=Id,CPUUsageNSec '*.service'; echo; }"
    " | awk -F= '/^Id=/{id=$2} /^CPUUsageNSec=/{c=$2}"
    ' /^$/{if (c ~ /^[0-9]+$/) printf "%7.1f s %s\\n", c/1e9, id; id=""; c=""}\''
    " | sort -rn | head -n 15",
)


def boot_profile(vm: VM, name: str) -> str:
    """Save the guest's account of its boot under the bench folder; a one-line summary."""
    sections = []
    for command in PROFILE_COMMANDS:
        proc = vm.ssh(command, timeout=180)
        sections.append(f"$ {command}\n{proc.stdout}{proc.stderr}")
    text = "\n".join(sections)
    path = bench_path().parent / "profile" / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    reloads = re.findall(r"Reloading finished in (\d+) ms", text)
    total = sum(int(ms) for ms in reloads) / 1000
    return f"{name}: {len(reloads)} reloads of systemd ({total:.0f} s); profile in {path}"


def bare_seed(fleet: Fleet, host: str, workdir: Path) -> Path:
    """The bench's bare seed for ``host``: its rendered meta-data and network-config with a
    user-data that only sets the admin user (the rendered one's own ``users``)."""
    seed_dir = fleet.out / "hosts" / host
    users = yaml.safe_load(unpack_user_data((seed_dir / "user-data").read_bytes()))["users"]
    user_data = "#cloud-config\n" + yaml.safe_dump({"users": users}, sort_keys=True)
    path = workdir / f"{host}-bare-seed.iso"
    path.write_bytes(
        make_seed_iso(
            {
                "user-data": user_data.encode(),
                "meta-data": (seed_dir / "meta-data").read_bytes(),
                "network-config": (seed_dir / "network-config").read_bytes(),
            }
        )
    )
    return path


def pg_request(inst: Any, database: str, password: str) -> dict[str, Any]:
    return {"host": SHARED_ADDRESS, "user": inst.db_role, "db": database, "password": password}


def redis_request(inst: Any, port: int, password: str) -> dict[str, Any]:
    return {"host": SHARED_ADDRESS, "port": port, "user": inst.redis_user, "password": password}


OUTSIDER = "10.0.6.5"  # on the fleet link, outside the fleet's 10.0.5.0/24


def http_status(vm: VM, url: str) -> str:
    """The HTTP status a GET of ``url`` gets from inside ``vm`` ("000": no answer)."""
    proc = vm.ssh(f"curl -s -o /dev/null -w '%{{http_code}}' --max-time 10 {url}", timeout=60)
    return proc.stdout.strip()


def drop_count(vm: VM) -> int:
    """Packets the host firewall dropped on planned ports from other sources (the counter of
    its "other sources" rule)."""
    chain = vm.ssh("sudo nft list chain inet owuibuild input", check=True).stdout
    counts = [
        int(m.group(1))
        for line in chain.splitlines()
        if '"other sources"' in line and (m := re.search(r"counter packets (\d+)", line))
    ]
    assert len(counts) == 1, chain
    return counts[0]


def pg_major(fleet: Fleet) -> int:
    return int(fleet.plan.fleet.os.release.postgres_major)


def apt_changes_since_boot(vm: VM) -> list[str]:
    """The apt history stanzas (installs, upgrades, removals) of the current boot."""
    booted = datetime.strptime(vm.ssh("uptime -s", check=True).stdout.strip(), "%Y-%m-%d %H:%M:%S")
    history = vm.ssh("cat /var/log/apt/history.log", timeout=60).stdout
    changes = []
    for stanza in history.split("\n\n"):
        start = re.search(r"^Start-Date: (\S+)\s+(\S+)", stanza, re.M)
        if not start:
            continue
        when = datetime.strptime(f"{start[1]} {start[2]}", "%Y-%m-%d %H:%M:%S")
        if when >= booted and re.search(r"^(Install|Upgrade|Remove|Purge):", stanza, re.M):
            changes.append(stanza.strip())
    return changes


def cross_credentials(dock: VM, fleet: Fleet) -> dict[str, Any]:
    """From the Docker host: alpha's credentials on its own and on beta's database and Redis."""
    a, b = fleet.instance("alpha"), fleet.instance("beta")
    pw = fleet.secrets
    return guest_probe(
        dock,
        {
            "cafile": FLEET_CA,  # the Docker host's copy, which its containers mount
            "pg": {
                "pg-own": pg_request(a, a.db_name, pw[a.db_password.name]),
                "pg-other-db": pg_request(a, b.db_name, pw[a.db_password.name]),
                "pg-plain": {**pg_request(a, a.db_name, pw[a.db_password.name]), "plain": True},
            },
            "redis": {
                "redis-own": redis_request(a, a.redis_port, pw[a.redis_password.name]),
                "redis-other-server": redis_request(a, b.redis_port, pw[a.redis_password.name]),
                "redis-plain": {
                    **redis_request(a, a.redis_port, pw[a.redis_password.name]),
                    "plain": True,
                },
            },
        },
    )


CROSS_CREDENTIALS = {
    "pg-own": "ok",
    "pg-other-db": "refused",
    # TLS only: alpha's own credentials in plain text get nowhere.
    "pg-plain": "refused",
    "redis-own": "ok",
    "redis-other-server": "auth-failed",
    "redis-plain": "down",
}


def ollama_pulls(shared: VM) -> int:
    """The pulls the Ollama double served, asked on the shared host's loopback, where Ollama
    itself listens (its TLS terminator on the private address answers 403 to this path)."""
    answer = shared.ssh(
        f"curl -sf http://127.0.0.1:{OLLAMA_PORT}/api/double/pulls", check=True, timeout=60
    )
    count: int = json.loads(answer.stdout)["count"]
    return count


def ollama_requests(shared: VM, path: str | None = None) -> list[dict[str, Any]]:
    """The requests the Ollama double answered (method, path, host, status), those to ``path``
    only when given; asked on the shared host's loopback, as ollama_pulls."""
    answer = shared.ssh(
        f"curl -sf http://127.0.0.1:{OLLAMA_PORT}/api/double/requests", check=True, timeout=60
    )
    found: list[dict[str, Any]] = json.loads(answer.stdout)["requests"]
    return [r for r in found if path is None or r["path"] == path]


# The Qdrant double's request log on the shared host (tests/doubles/qdrant_double.py), and the
# paths it answers without a key.
QDRANT_DOUBLE_LOG = f"{qdrant_section.STORAGE}/test-double-requests.log"
HEALTH_PATHS = ("/readyz", "/healthz", "/livez")


def instance_checks(dock: VM, name: str) -> dict[str, Any]:
    """The Open WebUI test double's /checks (check -> {"ok", "detail"}), asked on the Docker
    host's loopback, where the instance's port is published."""
    answer = dock.ssh(f"curl -sf {instance_url(name, '/checks')}", check=True, timeout=60)
    checks: dict[str, Any] = json.loads(answer.stdout)
    return checks


def standin_checks(dock: VM) -> dict[str, dict[str, bool]]:
    """What each instance's Open WebUI test double checked with its env file (name -> check ->
    ok): it turns healthy only once postgres, redis, qdrant and ollama all answered."""
    return {
        name: {k: v["ok"] for k, v in instance_checks(dock, name).items()} for name in INSTANCES
    }


ALL_CHECKS_OK = dict.fromkeys(("postgres", "redis", "qdrant", "ollama"), True)
# The real Open WebUI (OWUIBUILD_BOOT_REAL_OPENWEBUI=1) has no /checks: it answers /health once
# it started (it reaches Redis and migrates its database on the way) and /health/db with a
# query on its database.
REAL_CHECKS = ("/health", "/health/db")
IN_USE = dict.fromkeys(
    INSTANCES, dict.fromkeys(REAL_CHECKS, True) if REAL_OPENWEBUI else ALL_CHECKS_OK
)


def instances_in_use(dock: VM) -> dict[str, dict[str, bool]]:
    """Each instance's proof that it uses its services: the test double's checks, or the real
    Open WebUI's health endpoints (compare with IN_USE)."""
    if not REAL_OPENWEBUI:
        return standin_checks(dock)
    return {
        name: {path: http_status(dock, instance_url(name, path)) == "200" for path in REAL_CHECKS}
        for name in INSTANCES
    }


def docker_from_the_archive(dock: VM) -> None:
    """Docker from Debian's own archive: no third-party apt source, compose v2."""
    sources = dock.ssh("grep -rh '^[^#]' /etc/apt/sources.list.d/ || true").stdout
    assert "docker.com" not in sources, sources
    assert dock.ssh("docker compose version", check=True).stdout.startswith("Docker Compose")
    # The instance units run compose v2 directly, from the path they name.
    compose = dock.ssh(f"{docker_section.COMPOSE} version", check=True).stdout
    assert compose.startswith("Docker Compose"), compose
