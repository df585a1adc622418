"""The generated published-port filter (owuibuild-docker-ports), run by real iptables.

Docker DNATs published ports before the input hook, so the host firewall does not see them;
the generated script filters them in DOCKER-USER, which Docker evaluates first in FORWARD and
creates holding one rule, ``-j RETURN``. Each test gives a fresh network namespace that state
(as dockerd 20.10 leaves it), runs the script from a Docker host's generated user-data there,
twice (the unit re-runs whenever docker.service restarts), and reads the chains back from
iptables: the jump to the port chain must come before Docker's RETURN, exactly once, and each
private instance's published port must be dropped for every source outside the fleet network.
The containers tier sends real packets through the same script (tests/containers/
test_docker_ports_live.py, which sends real packets).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable
from ipaddress import IPv4Network

import pytest
import yaml
from conftest import BLUEPRINTS, Rendered, require_tool, unavailable
from owuibuild.hostconfig import docker as docker_section
from owuibuild.plan import Plan
from test_shared_host import user_data

pytestmark = pytest.mark.validators

CHAIN = docker_section.PORTS_CHAIN
# The seed example (one Docker host, five instances) with one instance made public.
PUBLIC = "{name: webui2, host: web-a, port: 3002"
BLUEPRINT = (BLUEPRINTS / "seed-example.yml").read_text().replace(PUBLIC, PUBLIC + ", public: true")
# What dockerd 20.10 sets up before any container runs (only the chains the script touches).
DOCKERD_STATE = "iptables -w -N DOCKER-USER && iptables -w -A DOCKER-USER -j RETURN"


def ports_script(rendered: Rendered, host: str) -> str:
    doc = yaml.safe_load(user_data(rendered, host))
    files = {f["path"]: f["content"] for f in doc["write_files"]}
    return str(files[docker_section.PORTS_SCRIPT])


def in_fresh_netns(script: str) -> str:
    """Run ``script`` (sh) in a new network namespace of its own; its stdout."""
    require_tool("unshare", "iptables")
    if os.geteuid() != 0:
        unavailable("iptables in a network namespace needs root")
    done = subprocess.run(
        ["unshare", "--net", "sh", "-eu", "-c", script],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def applied(script: str, *, before: str = DOCKERD_STATE, runs: int = 2) -> dict[str, list[str]]:
    """The DOCKER-USER and port chains after ``runs`` runs of ``script`` over ``before``."""
    quoted = shlex.quote(script)
    body = "\n".join(
        [before, *([f"sh -eu -c {quoted}"] * runs), "iptables -w -S DOCKER-USER",
         "echo ::", f"iptables -w -S {CHAIN}"]
    )  # fmt: skip
    user, ports = in_fresh_netns(body).split("::\n")
    return {"DOCKER-USER": user.splitlines(), CHAIN: ports.splitlines()}


def rule(line: str) -> dict[str, str]:
    """The options of one `iptables -S` rule line, by option name."""
    words = line.split()
    return {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("-")}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    from conftest import compile_path

    path = tmp_path_factory.mktemp("ports") / "fleet.yml"
    path.write_text(BLUEPRINT)
    assert BLUEPRINT.count("public: true") == 1
    return compile_path(path)


def test_the_filter_comes_before_dockers_return_exactly_once(rendered: Rendered) -> None:
    chains = applied(ports_script(rendered, "web-a"))
    assert chains["DOCKER-USER"] == [
        "-N DOCKER-USER",
        f"-A DOCKER-USER -j {CHAIN}",
        "-A DOCKER-USER -j RETURN",
    ]


def test_the_filter_works_where_docker_user_does_not_exist_yet(rendered: Rendered) -> None:
    chains = applied(ports_script(rendered, "web-a"), before="true", runs=1)
    assert chains["DOCKER-USER"] == ["-N DOCKER-USER", f"-A DOCKER-USER -j {CHAIN}"]


def test_private_ports_admit_the_fleet_network_and_drop_the_rest(rendered: Rendered) -> None:
    host = "web-a"
    plan = rendered.plan
    assert isinstance(plan, Plan)
    lines = applied(ports_script(rendered, host))[CHAIN]
    assert lines[0] == f"-N {CHAIN}"
    assert lines[-1] == f"-A {CHAIN} -j RETURN"
    rules = [rule(line) for line in lines[1:-1]]
    on_host = [i for i in plan.instances if i.host.name == host]
    private = [i for i in on_host if not i.instance.public]
    assert private
    for inst in private:
        mine = [
            r
            for r in rules
            if r.get("--ctorigdst") in (inst.bind_address, f"{inst.bind_address}/32")
            and r.get("--ctorigdstport") == str(inst.port)
        ]
        # first the fleet network returns (to Docker's own rules), then everything else drops
        assert [(r.get("-s"), r["-j"]) for r in mine] == [
            (str(plan.fleet.network.cidr), "RETURN"),
            (None, "DROP"),
        ], (inst.name, lines)
        assert all(r["-p"] == "tcp" and r["--ctdir"] == "ORIGINAL" for r in mine)
    # a public instance is not filtered at all; nothing else is in the chain
    assert len(rules) == 2 * len(private), lines


def test_a_public_instance_is_published_to_everyone(rendered: Rendered) -> None:
    plan = rendered.plan
    assert isinstance(plan, Plan)
    (public,) = [i for i in plan.instances if i.instance.public]
    lines = applied(ports_script(rendered, "web-a"))[CHAIN]
    assert not any(f"--ctorigdstport {public.port}" in line for line in lines), lines
    assert public.bind_address == "0.0.0.0"
    assert IPv4Network("0.0.0.0/0").prefixlen == 0


def test_every_example_host_runs_the_filter_cleanly(
    render_example: Callable[[str], Rendered],
) -> None:
    for example in ("seed-example.yml", "multi-host.yml", "homelab.yml", "scale-out.yml"):
        r = render_example(example)
        assert isinstance(r.plan, Plan)
        for host in [h for h in (r.plan.shared, *r.plan.docker_hosts) if h.runs_docker]:
            chains = applied(ports_script(r, host.host.name))
            assert chains["DOCKER-USER"][1] == f"-A DOCKER-USER -j {CHAIN}", (example, host)
            drops = [line for line in chains[CHAIN] if line.endswith("-j DROP")]
            private = [i for i in host.instances if not i.instance.public]
            assert len(drops) == len(private), (example, host.host.name, chains[CHAIN])
