"""Containers tier: real packets through the generated published-port filter.

A Docker host is built from network namespaces made by this test (names owuit-<random>-*),
with the chains dockerd 20.10 sets up for a published port (nat DOCKER with the DNAT,
FORWARD policy DROP, FORWARD -> DOCKER-USER first, DOCKER-USER holding only RETURN, the
DOCKER chain's ACCEPT for the container's port). Docker's own daemon is not used: it is shared
on this machine, and its chains there must not change. A small HTTP server in a "container"
namespace stands in for Open WebUI (any TCP server would do: the filter is what is tested).

Then the generated owuibuild-docker-ports script runs in the host namespace, as its unit does
after docker.service, and real TCP connections are made:

- from a host on the fleet network (the seed example's 10.0.5.0/24): the private instance's
  published port answers;
- from a host outside it (192.0.2.0/24, routed through the Docker host): it does not;
- the public instance's port answers both.

Before the script runs, the outside host does reach the private port: the filter, not the
topology, is what stops it. Nothing leaves the namespaces: they have no route to the machine.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import BLUEPRINTS, Rendered, compile_path, require_tool, unavailable
from owuibuild.hostconfig import docker as docker_section
from owuibuild.plan import Plan

pytestmark = pytest.mark.containers

# The seed example (one Docker host, five instances) with one instance made public.
PUBLIC = "{name: webui2, host: web-a, port: 3002"
BLUEPRINT = (BLUEPRINTS / "seed-example.yml").read_text().replace(PUBLIC, PUBLIC + ", public: true")
FLEET_PEER = "10.0.5.40"  # another host of the fleet network
OUTSIDE = "192.0.2.2"  # a host outside it (TEST-NET-1, only inside these namespaces)
OUTSIDE_GW = "192.0.2.1"
BRIDGE_NET = "172.31.250"  # the Docker host's docker0 network
CONTAINER_PORT = 8080

PROBE = """\
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    s.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n")
    sys.exit(0 if s.recv(12).startswith(b"HTTP/") else 3)
except OSError as exc:
    print(exc)
    sys.exit(1)
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {done.stdout}{done.stderr}")
    return done


@dataclass
class DockerHost:
    """The namespaces: host, container, a fleet peer and an outside client."""

    prefix: str
    address: str  # the Docker host's fleet address

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def run(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns(role), *args, check=check)

    def reaches(self, role: str, port: int) -> bool:
        return (
            self.run(
                role, sys.executable, "-c", PROBE, self.address, str(port), check=False
            ).returncode
            == 0
        )


def dockerd_chains(publish: list[tuple[str, int, int]]) -> list[list[str]]:
    """What dockerd 20.10 (iptables, userland-proxy off) sets up for ``publish``
    (host address, host port, container port) to the container at BRIDGE_NET.2."""
    container = f"{BRIDGE_NET}.2"
    rules = [
        ["-N", "DOCKER-USER"], ["-A", "DOCKER-USER", "-j", "RETURN"],
        ["-N", "DOCKER"],
        ["-P", "FORWARD", "DROP"],
        ["-A", "FORWARD", "-j", "DOCKER-USER"],
        ["-A", "FORWARD", "-o", "docker0", "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
         "-j", "ACCEPT"],
        ["-A", "FORWARD", "-o", "docker0", "-j", "DOCKER"],
        ["-A", "FORWARD", "-i", "docker0", "!", "-o", "docker0", "-j", "ACCEPT"],
        ["-t", "nat", "-N", "DOCKER"],
        ["-t", "nat", "-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
        ["-t", "nat", "-A", "POSTROUTING", "-s", f"{BRIDGE_NET}.0/24", "!", "-o", "docker0",
         "-j", "MASQUERADE"],
    ]  # fmt: skip
    for address, host_port, container_port in publish:
        dst = [] if address == "0.0.0.0" else ["-d", f"{address}/32"]
        rules += [
            ["-t", "nat", "-A", "DOCKER", *dst, "!", "-i", "docker0", "-p", "tcp",
             "--dport", str(host_port), "-j", "DNAT", "--to-destination",
             f"{container}:{container_port}"],
            ["-A", "DOCKER", "-d", f"{container}/32", "!", "-i", "docker0", "-o", "docker0",
             "-p", "tcp", "--dport", str(container_port), "-j", "ACCEPT"],
        ]  # fmt: skip
    return rules


def ports_script(rendered: Rendered) -> str:
    data = rendered.files["hosts/web-a/user-data"]
    doc = yaml.safe_load(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    return str(files[docker_section.PORTS_SCRIPT])


def build(host: DockerHost, plan: Plan) -> subprocess.Popen[bytes]:
    """Create the namespaces, links, routes and dockerd's chains; start the container's server."""
    for role in ("host", "ctr", "fleet", "out"):
        sh("ip", "netns", "add", host.ns(role))
        host.run(role, "ip", "link", "set", "lo", "up")
    links = [  # (host side name, peer role, host address/len, peer address/len, peer gateway)
        ("eth0", "fleet", f"{host.address}/24", f"{FLEET_PEER}/24", None),
        ("eth1", "out", f"{OUTSIDE_GW}/24", f"{OUTSIDE}/24", OUTSIDE_GW),
        ("docker0", "ctr", f"{BRIDGE_NET}.1/24", f"{BRIDGE_NET}.2/24", f"{BRIDGE_NET}.1"),
    ]
    for name, role, mine, theirs, gateway in links:
        sh("ip", "-n", host.ns("host"), "link", "add", name, "type", "veth",
           "peer", "name", "eth0", "netns", host.ns(role))  # fmt: skip
        host.run("host", "ip", "addr", "add", mine, "dev", name)
        host.run("host", "ip", "link", "set", name, "up")
        host.run(role, "ip", "addr", "add", theirs, "dev", "eth0")
        host.run(role, "ip", "link", "set", "eth0", "up")
        if gateway:
            host.run(role, "ip", "route", "add", "default", "via", gateway)
    host.run("host", "sysctl", "-qw", "net.ipv4.ip_forward=1")
    publish = [(i.bind_address, i.port, CONTAINER_PORT) for i in plan.instances]
    for rule in dockerd_chains(publish):
        host.run("host", "iptables", "-w", *rule)
    server = subprocess.Popen(
        ["ip", "netns", "exec", host.ns("ctr"), sys.executable, "-m", "http.server",
         str(CONTAINER_PORT), "--bind", f"{BRIDGE_NET}.2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while host.run("ctr", sys.executable, "-c", PROBE, f"{BRIDGE_NET}.2", str(CONTAINER_PORT),
                   check=False).returncode:  # fmt: skip
        assert server.poll() is None and time.monotonic() < deadline, "container server"
        time.sleep(0.2)
    return server


@pytest.fixture
def docker_host(tmp_path: Path) -> Iterator[tuple[DockerHost, Plan, str]]:
    require_tool("ip", "iptables")
    if os.geteuid() != 0:
        unavailable("network namespaces and iptables need root")
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BLUEPRINT)
    rendered = compile_path(blueprint)
    plan = rendered.plan
    assert isinstance(plan, Plan)
    (web_a,) = plan.docker_hosts
    host = DockerHost(f"owuit-{uuid.uuid4().hex[:6]}", str(web_a.host.address))
    server = None
    try:
        server = build(host, plan)
        yield host, plan, ports_script(rendered)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        for role in ("host", "ctr", "fleet", "out"):
            sh("ip", "netns", "del", host.ns(role), check=False)


def ports(plan: Plan) -> tuple[int, int]:
    private = next(i for i in plan.instances if not i.instance.public)
    public = next(i for i in plan.instances if i.instance.public)
    return private.port, public.port


def test_without_the_filter_everyone_reaches_every_published_port(
    docker_host: tuple[DockerHost, Plan, str],
) -> None:
    """The control: the topology routes the outside host to the instance port."""
    host, plan, _ = docker_host
    private, public = ports(plan)
    assert host.reaches("fleet", private) and host.reaches("fleet", public)
    assert host.reaches("out", private) and host.reaches("out", public)


def test_the_generated_filter_keeps_private_ports_to_the_fleet_network(
    docker_host: tuple[DockerHost, Plan, str], tmp_path: Path
) -> None:
    host, plan, script = docker_host
    path = tmp_path / "owuibuild-docker-ports"
    path.write_text(script)
    for _ in range(2):  # the unit runs again each time docker.service restarts
        host.run("host", "sh", "-eu", str(path))
    private, public = ports(plan)
    assert host.reaches("fleet", private), "a fleet host must reach a private instance"
    assert not host.reaches("out", private), "a host outside the fleet reached a private port"
    assert host.reaches("fleet", public) and host.reaches("out", public)
    # what dropped the outside host's connection: the generated chain's DROP counted it
    counters = host.run(
        "host", "iptables", "-w", "-L", docker_section.PORTS_CHAIN, "-v", "-n", "-x"
    )
    drops = [line.split() for line in counters.stdout.splitlines() if " DROP " in f" {line} "]
    assert drops and int(drops[0][0]) > 0, counters.stdout


def test_dockerd_restarting_its_chains_then_the_unit_restores_the_filter(
    docker_host: tuple[DockerHost, Plan, str], tmp_path: Path
) -> None:
    """dockerd flushes and recreates DOCKER-USER on restart (jump gone, RETURN back); the unit
    is PartOf docker.service, so it runs again and the outside host is kept out again."""
    host, plan, script = docker_host
    path = tmp_path / "owuibuild-docker-ports"
    path.write_text(script)
    host.run("host", "sh", "-eu", str(path))
    host.run("host", "iptables", "-w", "-F", "DOCKER-USER")
    host.run("host", "iptables", "-w", "-A", "DOCKER-USER", "-j", "RETURN")
    private, _ = ports(plan)
    assert host.reaches("out", private)  # the filter is really gone
    host.run("host", "sh", "-eu", str(path))
    assert not host.reaches("out", private)
    assert host.reaches("fleet", private)
