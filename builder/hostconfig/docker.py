"""Section: Docker hosts. Docker Engine with compose v2, and the Open WebUI instances a host runs.

Applies to every host with instances, the shared host included. It installs Docker from a signed
apt source (the release table says where from: Debian 13 and Ubuntu 24.04 have Docker and compose v2
in their own archives; Debian 12 uses Docker's repository, its key embedded), writes
each instance's bundle (from owuibuild.bundle) to its bundle directory, runs each instance with
one systemd unit.

Docker is told to leave the firewall alone (daemon.json: no iptables rules, published ports
served by docker-proxy). A published port is then an ordinary listener on the host's private
address, so the host firewall's input chain admits it per the plan like any other port, and the
firewall section forwards and masquerades the instances' own subnets (see firewall.py). Without
Docker's iptables rules dockerd starts, and creates each instance's network, in a fraction of the
time: each rule is a process of its own, seconds apiece on a small VM.
"""

from __future__ import annotations

import json

from ..artifacts import docker_apt_key
from ..bundle import COMPOSE_FILE, compose_yaml, env_file, env_file_name
from ..plan import DATA_MOUNT, SCRIPT_DIR, HostPlan, InstancePlan, Plan
from ..quoting import plain_words, render_template
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
LOAD_IMAGE_SCRIPT = f"{SCRIPT_DIR}/load-openwebui-image.sh"
DAEMON_CONFIG = "/etc/docker/daemon.json"
# The host firewall (inet owuibuild) is the only firewall: Docker adds no iptables rules, IPv4 or
# IPv6, and serves published ports from docker-proxy, a listener the input chain filters. dockerd
# still turns on IPv4 forwarding for its bridges; the firewall's forward chain decides what
# crosses. The userland proxy is Docker's default, spelled out because the firewall relies on it.
# No default bridge (docker0) either: every instance runs on its own compose network, and the
# firewall forwards only those.
DAEMON_SETTINGS = {
    "bridge": "none",
    "iptables": False,
    "ip6tables": False,
    "userland-proxy": True,
}
DOCKER_DROPIN = f"{UNIT_DIR}/docker.service.d/owuibuild.conf"
# First boot of a vanilla image pulls a multi-gigabyte image before the instance can start.
START_TIMEOUT_SECONDS = 1800


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


def daemon_config() -> str:
    return json.dumps(DAEMON_SETTINGS, indent=2, sort_keys=True) + "\n"


def instance_unit(inst: InstancePlan) -> str:
    # network-online: docker-proxy binds the instance's port on the host's private address.
    needs = "docker.service network-online.target"
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
                    (
                        "ExecStartPre",
                        plain_words("/usr/bin/install", "-d", "-m", "0750", inst.data_dir),
                    ),
                    (
                        "ExecStart",
                        plain_words(
                            *compose_argv(inst, "up", "--detach", "--wait", "--remove-orphans")
                        ),
                    ),
                    ("ExecStop", plain_words(*compose_argv(inst, "down"))),
                    ("Restart", "on-failure"),
                    ("RestartSec", "30s"),
                    ("TimeoutStartSec", str(START_TIMEOUT_SECONDS)),
                ],
            ),
            ("Install", [("WantedBy", "multi-user.target")]),
        ]
    )


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
    # Written before dockerd first starts: at first boot write_files runs before
    # network-online.target, which docker.service waits for, and before packages are installed.
    files.append(File(DAEMON_CONFIG, daemon_config()))
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
    configure: list[Command] = [start_packaged_units("docker.service")]
    units = tuple(i.unit_name for i in host.instances)
    # A golden image starts them as soon as dockerd is up at its first boot; on a host that also
    # runs shared services they start after those are set up, from runcmd only.
    first_boot = units if not host.services else ()
    if units:
        # wait=False: a first pull can take minutes; cloud-init need not wait for it.
        configure.append(start_units(*units, wait=False))
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
        first_boot=first_boot,
    )
