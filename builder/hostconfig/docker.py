"""Section: Docker hosts. Docker Engine with compose v2, and the Open WebUI instances a host runs.

Applies to every host with instances, the shared host included. It installs Docker from a signed
apt source (the release table says where from: Debian 13 and Ubuntu 24.04 have Docker and compose v2
in their own archives; Debian 12 uses Docker's repository, its key embedded), writes
each instance's bundle (from owuibuild.bundle) to its bundle directory, runs each instance with
one systemd unit, and keeps published ports to the fleet's network unless an instance is public.

Published ports are DNATed by Docker before the input chain sees them, so the host firewall does
not cover them; Docker's DOCKER-USER chain, in the forward path, is where they are filtered.
"""

from __future__ import annotations

import re
import shlex

from ..artifacts import docker_apt_key
from ..bundle import COMPOSE_FILE, compose_yaml, env_file, env_file_name
from ..plan import DATA_MOUNT, SCRIPT_DIR, HostPlan, InstancePlan, Plan
from ..quoting import render_template
from ..release import DOCKER_UPSTREAM
from ..secrets import Secrets
from . import UNIT_DIR, Command, File, Part, start_packaged_units, start_units

ORDER = 60

DOCKER_KEYRING = "/etc/apt/keyrings/docker.asc"
DOCKER_REPO = "https://download.docker.com/linux"

# Compose v2 itself, run directly rather than as `docker compose`: the docker CLI would first
# run the plugin once more just to read its metadata, two extra starts of large Go binaries
# (seconds apiece without KVM) in every instance's start. The same path in Debian's and
# Ubuntu's archive packages and in Docker's docker-compose-plugin.
COMPOSE = "/usr/libexec/docker/cli-plugins/docker-compose"
PORTS_SCRIPT = "/usr/local/sbin/owuibuild-docker-ports"
LOAD_IMAGE_SCRIPT = f"{SCRIPT_DIR}/load-openwebui-image.sh"
PORTS_UNIT = "owuibuild-docker-ports.service"
PORTS_CHAIN = "OWUIBUILD-PORTS"
DOCKER_DROPIN = f"{UNIT_DIR}/docker.service.d/owuibuild.conf"
# First boot of a vanilla image pulls a multi-gigabyte image before the instance can start.
START_TIMEOUT_SECONDS = 1800

_UNIT_WORD = re.compile(r"[A-Za-z0-9_./:@=+-]+")


def from_upstream(plan: Plan) -> bool:
    """Whether Docker comes from Docker's own repository rather than the distribution's."""
    return plan.fleet.os.docker_source == DOCKER_UPSTREAM


def apt_source(plan: Plan) -> dict[str, dict[str, str]]:
    if not from_upstream(plan):
        return {}
    release = plan.fleet.os.release
    line = (
        f"deb [arch=amd64 signed-by={DOCKER_KEYRING}] {DOCKER_REPO}/{release.family} "
        f"{release.codename} stable"
    )
    return {"docker": {"source": line}}


def _exec(*argv: str) -> str:
    """A unit's command line. Every word here comes from the plan and needs no quoting;
    anything else is a bug, so refuse it rather than quote it wrong."""
    for word in argv:
        if not _UNIT_WORD.fullmatch(word):
            raise ValueError(f"unexpected character in unit command word {word!r}")
    return " ".join(argv)


def unit_text(sections: list[tuple[str, list[tuple[str, str]]]]) -> str:
    out: list[str] = []
    for name, entries in sections:
        if out:
            out.append("")
        out.append(f"[{name}]")
        out += [f"{key}={value}" for key, value in entries]
    return "\n".join(out) + "\n"


def compose_argv(inst: InstancePlan, *args: str) -> tuple[str, ...]:
    compose = f"{inst.bundle_dir}/{COMPOSE_FILE}"
    return (COMPOSE, "-p", inst.name, "-f", compose, *args)


def instance_unit(inst: InstancePlan) -> str:
    needs = f"docker.service network-online.target {PORTS_UNIT}"
    return unit_text(
        [
            (
                "Unit",
                [
                    ("Description", f"Open WebUI instance {inst.name} (owuibuild)"),
                    ("Requires", needs),
                    ("After", needs),
                    # DATA_DIR is on the data volume: never start on the bare root disk.
                    ("RequiresMountsFor", inst.data_dir),
                ],
            ),
            (
                "Service",
                [
                    ("Type", "oneshot"),
                    ("RemainAfterExit", "yes"),
                    ("WorkingDirectory", inst.bundle_dir),
                    ("ExecStartPre", _exec("/usr/bin/install", "-d", "-m", "0750", inst.data_dir)),
                    (
                        "ExecStart",
                        _exec(*compose_argv(inst, "up", "--detach", "--wait", "--remove-orphans")),
                    ),
                    ("ExecStop", _exec(*compose_argv(inst, "down"))),
                    ("Restart", "on-failure"),
                    ("RestartSec", "30s"),
                    ("TimeoutStartSec", str(START_TIMEOUT_SECONDS)),
                ],
            ),
            ("Install", [("WantedBy", "multi-user.target")]),
        ]
    )


def ports_unit() -> str:
    return unit_text(
        [
            (
                "Unit",
                [
                    (
                        "Description",
                        "owuibuild: keep published Open WebUI ports to the fleet network",
                    ),
                    ("Requires", "docker.service"),
                    ("After", "docker.service"),
                    # Docker recreates its chains when it restarts; so do we.
                    ("PartOf", "docker.service"),
                ],
            ),
            (
                "Service",
                [
                    ("Type", "oneshot"),
                    ("RemainAfterExit", "yes"),
                    ("ExecStart", _exec(PORTS_SCRIPT)),
                ],
            ),
            ("Install", [("WantedBy", "docker.service multi-user.target")]),
        ]
    )


def ports_script(plan: Plan, host: HostPlan) -> str:
    """Drop connections to a private instance's published port from outside the fleet network.

    Docker has already rewritten the destination to the container's port when DOCKER-USER sees
    a packet, so the published address and port are matched on the connection's original
    direction (conntrack).
    """
    q = shlex.quote
    chain = q(PORTS_CHAIN)
    lines = [
        "#!/bin/sh",
        "# Generated by owuibuild: published Open WebUI ports answer only the fleet network.",
        "set -eu",
        f"iptables -w -N {chain} 2>/dev/null || iptables -w -F {chain}",
    ]
    rules = {r.service: r for r in host.firewall}
    for inst in host.instances:
        rule = rules[f"openwebui-{inst.name}"]
        if any(net.prefixlen == 0 for net in rule.sources):
            continue  # a public listener
        match = (
            f"iptables -w -A {chain} -p {q(rule.proto)} -m conntrack --ctdir ORIGINAL"
            f" --ctorigdst {q(inst.bind_address)} --ctorigdstport {rule.port}"
        )
        lines.append(f"# {inst.name}: only {', '.join(str(n) for n in rule.sources)}")
        lines += [f"{match} -s {q(str(net))} -j RETURN" for net in rule.sources]
        lines.append(f"{match} -j DROP")
    lines += [
        f"iptables -w -A {chain} -j RETURN",
        "iptables -w -N DOCKER-USER 2>/dev/null || true",
        f"iptables -w -C DOCKER-USER -j {chain} 2>/dev/null"
        f" || iptables -w -I DOCKER-USER -j {chain}",
    ]
    return "\n".join(lines) + "\n"


def load_image(plan: Plan) -> tuple[tuple[File, ...], tuple[Command, ...]]:
    """The install step that loads the Open WebUI image from the mirror's archive, if any."""
    archive = plan.openwebui_archive
    if archive is None:
        return (), ()
    script = render_template(
        "load-image.sh.j2",
        image=plan.openwebui_image,
        sha256=archive.sha256,
        url=archive.url(plan.fleet.mirror),
    )
    return (File(LOAD_IMAGE_SCRIPT, script, "0755"),), (("/bin/sh", LOAD_IMAGE_SCRIPT),)


def instance_files(plan: Plan, inst: InstancePlan, secrets: Secrets) -> tuple[File, ...]:
    return (
        File(f"{inst.bundle_dir}/{COMPOSE_FILE}", compose_yaml(plan, inst)),
        File(f"{inst.bundle_dir}/{env_file_name(inst)}", env_file(plan, inst, secrets), "0600"),
        File(f"{UNIT_DIR}/{inst.unit_name}", instance_unit(inst)),
    )


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part | None:
    if not host.runs_docker:
        return None
    files: list[File] = []
    if from_upstream(plan):
        files.append(File(DOCKER_KEYRING, docker_apt_key()))
    files += [
        File(PORTS_SCRIPT, ports_script(plan, host), "0755"),
        File(f"{UNIT_DIR}/{PORTS_UNIT}", ports_unit()),
    ]
    if host.host.data_volume is not None:
        # dockerd restarts `unless-stopped` containers by itself: never before the data volume
        # is mounted, or they would start on an empty directory of the root disk.
        files.append(
            File(DOCKER_DROPIN, render_template("dropin.conf.j2", mount=DATA_MOUNT, read_write=""))
        )
    for inst in host.instances:
        files += instance_files(plan, inst, secrets)
    load_files, install = load_image(plan)
    files += load_files
    configure: list[Command] = [start_packaged_units("docker.service"), start_units(PORTS_UNIT)]
    # wait=False: a first pull can take minutes; cloud-init need not wait for it.
    if host.instances:
        configure.append(start_units(*(i.unit_name for i in host.instances), wait=False))
    return Part(
        name="docker",
        packages=(
            *plan.fleet.os.release.docker_packages(plan.fleet.os.docker_source),
            *(("ca-certificates", "curl") if install else ()),  # the image load fetches
        ),
        apt_sources=apt_source(plan),
        files=tuple(files),
        install=install,
        configure=tuple(configure),
    )
