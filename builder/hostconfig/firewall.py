"""Section: the host firewall (nftables), on every host.

Input is dropped by default; loopback, established/related traffic and essential ICMP are
accepted; every other port is open only to the sources in HostPlan.firewall (SSH from
admin.allow_from, each shared service from the hosts whose instances use it, each Open WebUI
port per the plan). It lives in its own table, ``inet owuibuild``, replaced atomically and
never flushing the ruleset, because on Docker hosts Docker keeps its own tables. Ports that
Docker publishes are DNATed and cross the forward hook, not input: the Docker section filters
those, and can build its statements with ``accept_statement``.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..plan import FirewallRule, HostPlan, Plan
from ..quoting import Quoted, nft, nft_comment, render_template, systemd_path
from ..secrets import Secrets
from . import File, Part, start_units

ORDER = 10

RULESET = "/etc/owuibuild/firewall.nft"
UNIT_NAME = "owuibuild-firewall.service"
UNIT = f"/etc/systemd/system/{UNIT_NAME}"
TABLE = "inet owuibuild"
DISTRIBUTION_UNIT = "nftables.service"


def accept_statement(rule: FirewallRule, port_match: str = "") -> Quoted:
    """One nft statement accepting ``rule``'s sources on its port.

    ``port_match`` replaces the default ``<proto> dport`` match, e.g.
    ``meta l4proto tcp ct original proto-dst`` to match a published port after Docker's DNAT.
    """
    if rule.proto not in ("tcp", "udp"):
        raise ValueError(f"unsupported protocol {rule.proto!r}")
    words: list[str] = []
    if not any(net.prefixlen == 0 for net in rule.sources):
        words.append("ip saddr { " + ", ".join(nft(n) for n in rule.sources) + " }")
    words.append(port_match or f"{rule.proto} dport")
    words.append(str(int(rule.port)))
    words += ["accept", "comment", nft_comment(rule.service)]
    return Quoted(" ".join(words))


def statements(rules: Iterable[FirewallRule]) -> list[Quoted]:
    return [accept_statement(r) for r in rules if r.sources]


def ruleset(host: HostPlan) -> str:
    return render_template("firewall.nft.j2", statements=statements(host.firewall))


def unit() -> str:
    return render_template(
        "firewall.service.j2", ruleset=RULESET, distribution_unit=Quoted(DISTRIBUTION_UNIT)
    )


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part:
    del plan, secrets
    systemd_path(RULESET)
    return Part(
        name="firewall",
        packages=("nftables",),
        files=(
            File(RULESET, ruleset(host), permissions="0600"),
            File(UNIT, unit()),
        ),
        # The distribution's nftables.service loads /etc/nftables.conf, which begins with
        # `flush ruleset`, at boot, unordered with our unit: whichever ran last would win, and
        # the default file accepts everything. Masked where the package is installed (not
        # stopped: its stop action flushes every table, Docker's included).
        install=(("systemctl", "mask", "--no-reload", DISTRIBUTION_UNIT),),
        configure=(
            ("/usr/sbin/nft", "--check", "--file", RULESET),
            start_units(UNIT_NAME),
        ),
    )
