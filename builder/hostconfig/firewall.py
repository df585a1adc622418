"""Section: the host firewall (nftables), on every host.

Input is dropped by default; loopback, established/related traffic and essential ICMP are
accepted; every other port is open only to the sources in HostPlan.firewall (SSH from
admin.allow_from, each shared service from the hosts whose instances use it, each Open WebUI
port per the plan). Connections to a planned port from any other source are dropped by a rule
that counts them. It lives in its own table, ``inet owuibuild``, replaced atomically and never
flushing the ruleset. A golden image also carries a first-boot unit that loads it as soon as
cloud-init has written it (a path unit starts it, during cloud-init's network stage), before
SSH and Docker start.

On a host that runs instances it is the only firewall: Docker adds no rules of its own (see
docker.py), its published ports are docker-proxy listeners that the input chain filters like any
other port, and this table forwards and masquerades the instances' own subnets. Forwarded: a
packet from an instance network to anything but an instance network (no instance reaches
another's), with a reverse-path check so that nothing spoofs those sources from outside; it
leaves as the host's own address, which is what the shared hosts admit. Nothing else is
forwarded.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import groupby

from ..plan import SCRIPT_DIR, FirewallRule, HostPlan, Plan
from ..quoting import Quoted, nft, nft_comment, render_template, systemd_path
from ..secrets import Secrets
from . import File, Part, start_units

ORDER = 10

RULESET = "/etc/owuibuild/firewall.nft"
UNIT_NAME = "owuibuild-firewall.service"
UNIT = f"/etc/systemd/system/{UNIT_NAME}"
FIRST_BOOT_UNIT_NAME = "owuibuild-firewall-first-boot.service"
FIRST_BOOT_UNIT = f"/etc/systemd/system/{FIRST_BOOT_UNIT_NAME}"
# Starts the first-boot unit as cloud-init writes the ruleset, during its network stage.
FIRST_BOOT_PATH_NAME = "owuibuild-firewall-first-boot.path"
FIRST_BOOT_PATH = f"/etc/systemd/system/{FIRST_BOOT_PATH_NAME}"
FIRST_BOOT_SCRIPT = f"{SCRIPT_DIR}/firewall-first-boot.sh"
# The ruleset's last line: the first-boot unit loads the file only once it is all written.
END_MARKER = "# end of the owuibuild ruleset"
TABLE = "inet owuibuild"
DISTRIBUTION_UNIT = "nftables.service"


def accept_statement(rule: FirewallRule) -> Quoted:
    """One nft statement accepting ``rule``'s sources on its port."""
    if rule.proto not in ("tcp", "udp"):
        raise ValueError(f"unsupported protocol {rule.proto!r}")
    words: list[str] = []
    if not any(net.prefixlen == 0 for net in rule.sources):
        words.append("ip saddr { " + ", ".join(nft(n) for n in rule.sources) + " }")
    words.append(f"{rule.proto} dport")
    words.append(str(int(rule.port)))
    words += ["accept", "comment", nft_comment(rule.service)]
    return Quoted(" ".join(words))


def statements(rules: Iterable[FirewallRule]) -> list[Quoted]:
    return [accept_statement(r) for r in rules if r.sources]


def _is_public(rule: FirewallRule) -> bool:
    return any(net.prefixlen == 0 for net in rule.sources)


def counted_drops(rules: Iterable[FirewallRule]) -> list[Quoted]:
    """After the accepts: drop, and count, what reaches a planned port from any other source
    (``nft list chain inet owuibuild input`` shows who knocks). Public ports accept everyone."""
    planned = sorted({(r.proto, int(r.port)) for r in rules if r.sources and not _is_public(r)})
    out = []
    for proto, group in groupby(planned, key=lambda p: p[0]):
        if proto not in ("tcp", "udp"):
            raise ValueError(f"unsupported protocol {proto!r}")
        ports = ", ".join(str(port) for _, port in group)
        out.append(Quoted(f'{proto} dport {{ {ports} }} counter drop comment "other sources"'))
    return out


def instance_networks(host: HostPlan) -> Quoted | None:
    """The nft set of the host's instance subnets, None where it runs none."""
    if not host.instances:
        return None
    return Quoted("{ " + ", ".join(nft(i.docker_subnet) for i in host.instances) + " }")


def ruleset(host: HostPlan) -> str:
    return render_template(
        "firewall.nft.j2",
        statements=statements(host.firewall),
        drops=counted_drops(host.firewall),
        instance_networks=instance_networks(host),
        end_marker=Quoted(END_MARKER),
    )


def unit() -> str:
    return render_template(
        "firewall.service.j2", ruleset=RULESET, distribution_unit=Quoted(DISTRIBUTION_UNIT)
    )


def first_boot_files() -> tuple[File, ...]:
    """The first-boot unit, its path unit and its script: installed and enabled by the install
    steps, so a golden image has them at its first boot."""
    return (
        File(
            FIRST_BOOT_UNIT,
            render_template(
                "firewall-first-boot.service.j2",
                ruleset=RULESET,
                script=FIRST_BOOT_SCRIPT,
                firewall_unit=Quoted(UNIT_NAME),
                path_unit=Quoted(FIRST_BOOT_PATH_NAME),
            ),
            install=True,
        ),
        File(
            FIRST_BOOT_PATH,
            render_template(
                "firewall-first-boot.path.j2",
                ruleset=RULESET,
                service=Quoted(FIRST_BOOT_UNIT_NAME),
            ),
            install=True,
        ),
        File(
            FIRST_BOOT_SCRIPT,
            render_template("firewall-first-boot.sh.j2", ruleset=RULESET, end_marker=END_MARKER),
            "0755",
            install=True,
        ),
    )


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part:
    del plan, secrets
    systemd_path(RULESET)
    return Part(
        name="firewall",
        packages=("nftables",),
        files=(
            # A golden image's first boot: the firewall is up before SSH and Docker start, not
            # only in runcmd. Written (again, the same) before the ruleset, whose appearance
            # starts them: never rewritten while they run.
            *first_boot_files(),
            # Openings come and go with instances: nft loads a new ruleset atomically.
            File(RULESET, ruleset(host), permissions="0600", live=True, reader=UNIT_NAME),
            File(UNIT, unit()),
        ),
        # The distribution's nftables.service loads /etc/nftables.conf, which begins with
        # `flush ruleset`, at boot, unordered with our unit: whichever ran last would win, and
        # the default file accepts everything. Masked where the package is installed (not
        # stopped: its stop action flushes every table, Docker's included).
        install=(
            ("systemctl", "mask", "--no-reload", DISTRIBUTION_UNIT),
            ("systemctl", "enable", "--no-reload", FIRST_BOOT_PATH_NAME),
        ),
        configure=(
            ("/usr/sbin/nft", "--check", "--file", RULESET),
            start_units(UNIT_NAME),
        ),
    )
