"""A small valid blueprint as text, and helpers to edit it and find where things are in it.

Tests that assert an exact line:col compute it from the text they wrote (``where``), never
from what the tool printed.
"""

from __future__ import annotations

from pathlib import Path

from owuibuild.diagnostics import Diagnostic, format_path
from owuibuild.source import parse
from owuibuild.validate import validate

# Every host has memory and a data volume, so the base blueprint has no warning at all.
BASE = """\
apiVersion: owuibuild/v1
name: fleet
admin:
  user: ops
  ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeTestKeyOnlyNotARealKey00000000000000000 ops@laptop]
  allow_from: [10.0.5.0/24]
network: {cidr: 10.0.5.0/24, gateway: 10.0.5.1, dns: [10.0.5.1]}
shared:
  host: {name: shared, address: 10.0.5.10, memory_gb: 64, data_volume: {label: owui-data}}
  postgres: {max_connections: 200}
hosts:
  - {name: web-a, address: 10.0.5.20, memory_gb: 64, data_volume: {label: owui-data}}
  - {name: web-b, address: 10.0.5.21, memory_gb: 64, data_volume: {label: owui-data}}
instances:
  - {name: one, host: web-a, port: 3001}
  - {name: two, host: web-b, port: 3001}
"""


def edit(text: str, old: str, new: str) -> str:
    """Replace the one occurrence of ``old``; fail loudly when the base text has changed."""
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
    return text.replace(old, new)


def where(text: str, needle: str, at: str | None = None, nth: int = 0) -> tuple[int, int]:
    """1-based (line, column) of ``at`` inside the ``nth`` occurrence of ``needle``."""
    start = -1
    for _ in range(nth + 1):
        start = text.index(needle, start + 1)
    if at is not None:
        start += needle.index(at)
    line = text.count("\n", 0, start) + 1
    column = start - (text.rfind("\n", 0, start) + 1) + 1
    return line, column


def diagnose(text: str, name: str = "bp.yml") -> list[Diagnostic]:
    source, diagnostics = parse(text, name)
    if source is None:
        return diagnostics
    _, diagnostics = validate(source)
    return diagnostics


def at(diagnostics: list[Diagnostic], path: str) -> list[Diagnostic]:
    return [d for d in diagnostics if format_path(d.path) == path]


def one(diagnostics: list[Diagnostic], path: str) -> Diagnostic:
    found = at(diagnostics, path)
    assert len(found) == 1, (path, [d.as_dict() for d in diagnostics])
    return found[0]


def instances_text(count: int, hosts: int, port: int = 3000) -> str:
    """``count`` instances spread over hosts web-0..web-<hosts-1>, one port each per host."""
    return "".join(
        f"  - {{name: i{n}, host: web-{n % hosts}, port: {port + n // hosts}}}\n"
        for n in range(count)
    )


def fleet_text(count: int, *, max_connections: int = 10_000, per_host: int = 40) -> str:
    """A valid fleet of ``count`` instances on enough Docker hosts."""
    hosts = max(1, -(-count // per_host))
    host_lines = "".join(
        f"  - {{name: web-{h}, address: 10.0.{1 + h // 200}.{10 + h % 200}, memory_gb: 64,"
        " data_volume: {label: owui-data}}\n"
        for h in range(hosts)
    )
    text = edit(BASE, "{max_connections: 200}", f"{{max_connections: {max_connections}}}")
    text = edit(text, "cidr: 10.0.5.0/24", "cidr: 10.0.0.0/16")
    text = edit(text, "gateway: 10.0.5.1, dns: [10.0.5.1]", "gateway: 10.0.0.1, dns: [10.0.0.1]")
    text = edit(text, "address: 10.0.5.10", "address: 10.0.0.10")
    head = text[: text.index("hosts:\n")]
    return head + "hosts:\n" + host_lines + "instances:\n" + instances_text(count, hosts)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
