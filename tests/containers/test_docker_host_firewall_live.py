"""Containers tier: real packets through a Docker host's generated firewall (nft, inet owuibuild).

Docker on the generated hosts adds no rules of its own (daemon.json: iptables off, docker-proxy
on), so this ruleset is the host's whole firewall: published ports are docker-proxy listeners
filtered by its input chain, and its forward and postrouting chains let the instances' own
networks out, as the host, and nowhere else. Docker's own daemon is not used here (it is shared
on this machine); a Docker host is built from network namespaces made by this test (names
owuit-<random>-*):

- host: the Docker host, with the fleet address of the seed example's web-a on eth0, a router
  for the outside network on eth1, and one veth per container network (the instances' Docker
  bridges), holding the gateway address of each instance's subnet;
- fleet: another host of the fleet network (10.0.5.40), with no route to the instance subnets;
- out: a host outside the fleet network (TEST-NET-1), routed through the Docker host;
- one and two: a container of each of two instances, at .2 of the instance's own subnet.

Small Python servers stand in for docker-proxy (on the host, at each instance's published
address and port), for a container's Open WebUI and for a fleet service that tells who called.
The generated ruleset is loaded with the real nft, and real TCP connections are made. Before it
is loaded, the topology lets everything through: the ruleset, not the topology, is what stops
it. Nothing leaves the namespaces: they have no route to the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BLUEPRINTS, Rendered, compile_path, require_tool, unavailable
from owuibuild.hostconfig import firewall
from owuibuild.plan import InstancePlan, Plan

pytestmark = pytest.mark.containers

# The seed example (one Docker host, five instances) with one instance made public.
PUBLIC = "{name: webui2, host: web-a, port: 3002"
BLUEPRINT = (BLUEPRINTS / "seed-example.yml").read_text().replace(PUBLIC, PUBLIC + ", public: true")
FLEET_PEER = "10.0.5.40"  # another host of the fleet network
OUTSIDE = "192.0.2.2"  # a host outside it (TEST-NET-1, only inside these namespaces)
OUTSIDE_GW = "192.0.2.1"
WHO_PORT = 8000  # the fleet peer's "who called" service
CONTAINER_PORT = 8080

# Connects; exit 0 with what the server said (one line), 1 when nothing answered.
PROBE = """\
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3,
                                 source_address=(sys.argv[3], 0) if len(sys.argv) > 3 else None)
    print(s.recv(64).decode().strip())
except OSError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""
# Serves one line to every client: its own name, or (with "who") the caller's address.
SERVER = """\
import socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), reuse_port=True)
while True:
    conn, peer = srv.accept()
    conn.sendall(((peer[0] if sys.argv[3] == "who" else sys.argv[3]) + "\\n").encode())
    conn.close()
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: {done.stdout}{done.stderr}")
    return done


@dataclass
class DockerHost:
    prefix: str
    address: str  # the Docker host's fleet address
    one: InstancePlan  # private
    two: InstancePlan  # public
    ruleset: str
    servers: list[subprocess.Popen[bytes]]

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def run(self, role: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns(role), *args, check=check)

    def dial(self, role: str, address: str, port: int, source: str = "") -> str | None:
        """What the server at ``address:port`` said to ``role``; None when nothing answered."""
        args = [sys.executable, "-c", PROBE, address, str(port), *([source] if source else [])]
        done = self.run(role, *args, check=False)
        return done.stdout.strip() if done.returncode == 0 else None

    def serve(self, role: str, address: str, port: int, says: str) -> None:
        argv = ["ip", "netns", "exec", self.ns(role), sys.executable, "-c", SERVER]
        server = subprocess.Popen(
            [*argv, address, str(port), says],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.servers.append(server)
        deadline = time.monotonic() + 20
        while self.dial(role, address, port) is None:
            assert server.poll() is None and time.monotonic() < deadline, says
            time.sleep(0.2)

    def load_firewall(self, tmp_path: Path) -> None:
        path = tmp_path / "firewall.nft"
        path.write_text(self.ruleset)
        for _ in range(2):  # the unit may load it again (reload, restart): still one table
            self.run("host", "nft", "-f", str(path))

    def syns(self) -> int:
        """Connection attempts that reached the fleet peer's service, from anyone."""
        chain = self.run("fleet", "nft", "list", "chain", "inet", "peer", "syns").stdout
        return int(chain.split("counter packets ")[1].split()[0])

    def drops(self) -> int:
        chain = self.run("host", "nft", "list", "chain", "inet", "owuibuild", "input").stdout
        (line,) = [x for x in chain.splitlines() if '"other sources"' in x]
        return int(line.split("counter packets ")[1].split()[0])


def container_address(inst: InstancePlan) -> str:
    return str(inst.docker_subnet.network_address + 2)


def gateway(inst: InstancePlan) -> str:
    return str(inst.docker_subnet.network_address + 1)


def user_data_ruleset(rendered: Rendered, host: str) -> str:
    doc = rendered.user_data(host)
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    return str(files[firewall.RULESET])


def build(host: DockerHost) -> None:
    """The namespaces, their links and routes, and every server."""
    for role in ("host", "fleet", "out", "one", "two"):
        sh("ip", "netns", "add", host.ns(role))
        host.run(role, "ip", "link", "set", "lo", "up")
    prefix = lambda inst: inst.docker_subnet.prefixlen  # noqa: E731
    links = [  # (host side, peer role, host address/len, peer address/len, peer gateway)
        ("eth0", "fleet", f"{host.address}/24", f"{FLEET_PEER}/24", None),
        ("eth1", "out", f"{OUTSIDE_GW}/24", f"{OUTSIDE}/24", OUTSIDE_GW),
        *(
            (f"br-{role}", role, f"{gateway(inst)}/{prefix(inst)}",
             f"{container_address(inst)}/{prefix(inst)}", gateway(inst))
            for role, inst in (("one", host.one), ("two", host.two))
        ),
    ]  # fmt: skip
    for name, role, mine, theirs, via in links:
        sh("ip", "-n", host.ns("host"), "link", "add", name, "type", "veth",
           "peer", "name", "eth0", "netns", host.ns(role))  # fmt: skip
        host.run("host", "ip", "addr", "add", mine, "dev", name)
        host.run("host", "ip", "link", "set", name, "up")
        host.run(role, "ip", "addr", "add", theirs, "dev", "eth0")
        host.run(role, "ip", "link", "set", "eth0", "up")
        if via:
            host.run(role, "ip", "route", "add", "default", "via", via)
    host.run("host", "sysctl", "-qw", "net.ipv4.ip_forward=1")  # what dockerd does
    # docker-proxy's listeners, each instance's "Open WebUI", and a fleet service.
    for inst in (host.one, host.two):
        host.serve("host", inst.bind_address, inst.port, f"proxy-{inst.name}")
    host.serve("one", container_address(host.one), CONTAINER_PORT, "one")
    host.serve("two", container_address(host.two), CONTAINER_PORT, "two")
    host.serve("fleet", FLEET_PEER, WHO_PORT, "who")
    # The out host may also pretend to be a container of instance one (a forged source; the
    # answer could never come back to it); the fleet peer counts every connection attempt.
    host.run("out", "ip", "addr", "add", f"{forged(host)}/32", "dev", "eth0")
    rules = (
        "add table inet peer\n"
        "add chain inet peer syns { type filter hook input priority 0; }\n"
        f"add rule inet peer syns tcp dport {WHO_PORT} tcp flags syn counter\n"
    )
    done = subprocess.run(
        ["ip", "netns", "exec", host.ns("fleet"), "nft", "-f", "-"],
        input=rules, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def forged(host: DockerHost) -> str:
    return str(host.one.docker_subnet.network_address + 9)


@pytest.fixture
def docker_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockerHost]:
    require_tool("ip", "nft")
    if os.geteuid() != 0:
        unavailable("network namespaces and nft need root")
    blueprint = tmp_path_factory.mktemp("blueprint") / "fleet.yml"
    blueprint.write_text(BLUEPRINT)
    rendered = compile_path(blueprint)
    plan = rendered.plan
    assert isinstance(plan, Plan)
    (web_a,) = plan.docker_hosts
    one = next(i for i in web_a.instances if not i.instance.public)
    two = next(i for i in web_a.instances if i.instance.public)
    host = DockerHost(
        f"owuit-{uuid.uuid4().hex[:6]}", str(web_a.host.address), one, two,
        user_data_ruleset(rendered, web_a.host.name), [],
    )  # fmt: skip
    try:
        build(host)
        yield host
    finally:
        for server in host.servers:
            server.terminate()
            server.wait(10)
        for role in ("host", "fleet", "out", "one", "two"):
            sh("ip", "netns", "del", host.ns(role), check=False)


def test_without_the_firewall_the_topology_lets_everything_through(docker_host: DockerHost) -> None:
    """The control: every probe below that the firewall stops gets through without it."""
    host, one, two = docker_host, docker_host.one, docker_host.two
    assert host.dial("out", host.address, one.port) == f"proxy-{one.name}"
    assert host.dial("one", container_address(two), CONTAINER_PORT) == "two"
    assert host.dial("out", container_address(one), CONTAINER_PORT) == "one"
    assert host.dial("one", host.address, one.port) == f"proxy-{one.name}"
    before = host.syns()
    host.dial("out", FLEET_PEER, WHO_PORT, source=forged(host))
    assert host.syns() > before


def test_published_ports_answer_per_the_plan(docker_host: DockerHost, tmp_path: Path) -> None:
    host, one, two = docker_host, docker_host.one, docker_host.two
    host.load_firewall(tmp_path)
    assert host.dial("fleet", host.address, one.port) == f"proxy-{one.name}"
    before = host.drops()
    assert host.dial("out", host.address, one.port) is None, "outside reached a private port"
    assert host.drops() > before  # the counted drop, not a missing route, stopped it
    assert host.dial("fleet", host.address, two.port) == f"proxy-{two.name}"
    assert host.dial("out", host.address, two.port) == f"proxy-{two.name}"  # public


def test_instances_get_out_as_the_host_and_nowhere_else(
    docker_host: DockerHost, tmp_path: Path
) -> None:
    host, one, two = docker_host, docker_host.one, docker_host.two
    host.load_firewall(tmp_path)
    # Out to the fleet, masqueraded: the fleet sees the Docker host's own address.
    assert host.dial("one", FLEET_PEER, WHO_PORT) == host.address
    assert host.dial("two", FLEET_PEER, WHO_PORT) == host.address
    # Never into another instance's network, nor the host's own ports.
    assert host.dial("one", container_address(two), CONTAINER_PORT) is None
    assert host.dial("one", host.address, one.port) is None
    # Nothing from outside is forwarded into an instance network, and a sender outside
    # cannot pass for an instance: the reverse-path check drops its forged source.
    assert host.dial("out", container_address(one), CONTAINER_PORT) is None
    before = host.syns()
    assert host.dial("out", FLEET_PEER, WHO_PORT, source=forged(host)) is None
    assert host.syns() == before
