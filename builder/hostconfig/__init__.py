"""Host configuration: one room per concern, merged into one cloud-config per host.

Each module of this package is a section (like cloud-init's own cc_* modules) that defines
``ORDER: int`` and ``part(plan, host, secrets) -> Part | None``. The hosts target merges the
parts of every section that applies to a host into one #cloud-config document. Sections are
pure: they build data, never text by pasting, and they take every value from the plan.

Install steps (``Part.install``) are kept apart from configuration steps (``Part.configure``):
the Packer templates run exactly the install steps, so a golden image holds the same software
the seed would install, defined once.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
import re
import shlex
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

from ..plan import SCRIPT_DIR

if TYPE_CHECKING:
    from ..plan import HostPlan, Plan
    from ..secrets import Secrets


@dataclass(frozen=True)
class File:
    """A write_files entry. ``defer`` writes it in the final stage, after packages and users
    exist (needed for files owned by a service user or placed under the data volume).
    ``install``: a package reads it when it installs, so a golden image's install steps write
    it before the packages too (cloud-init's write_files always runs before them).
    ``live``: a running host can take a new version of it without being replaced (the service
    that reads it reloads, or what it defines is added or removed alone): the files that adding
    or removing an instance, changing Ollama models or raising limits change. Every other file
    is part of the host's replacement key (see replacement_components).
    ``reader``: the unit that reads a live file, if one does. When a running host takes a new
    version of the file, that unit is reloaded (or restarted, where it cannot reload) if it
    runs; when the file goes away, the unit is stopped and disabled first (seed_converge)."""

    path: str
    content: str
    permissions: str = "0644"
    owner: str = "root:root"
    defer: bool = False
    install: bool = False
    live: bool = False
    reader: str = ""

    def as_cloud_config(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "path": self.path,
            "content": self.content,
            "owner": self.owner,
            "permissions": self.permissions,
        }
        if self.defer:
            entry["defer"] = True
        return entry


Command = tuple[str, ...]  # an argv; runcmd runs it without a shell


@dataclass(frozen=True)
class Part:
    """What one section contributes to a host's cloud-config."""

    name: str
    packages: tuple[str, ...] = ()
    apt_sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    files: tuple[File, ...] = ()
    install: tuple[Command, ...] = ()  # idempotent; also run by Packer for golden images
    configure: tuple[Command, ...] = ()  # idempotent; run at every first boot
    # Configuration steps that run right after ``configure`` and only start or stop what live
    # files define (an instance's unit, say): their arguments may change on a running host.
    # Idempotent, and safe on a running host: a converge runs them all again, in order, after it
    # wrote the new live files (data/seed_converge.py).
    live_configure: tuple[Command, ...] = ()
    bootcmd: tuple[Command, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)  # other top-level cloud-config keys
    # Units a configure step started in the background (start_units(wait=False)) that the
    # configuration still waits for: one `systemctl start` after the last configure step, so
    # they start alongside the slower steps that follow them and a failure still fails runcmd.
    awaited: tuple[str, ...] = ()
    # Instances of templates this part writes a drop-in for (``name@.service.d``), by name:
    # the reload check asks systemd about them (see reload_if_stale).
    template_units: tuple[str, ...] = ()
    # What a golden image does at its first boot as soon as systemd can, not only from runcmd
    # (see _first_boot): run these commands (each must return soon: queue a start, never wait
    # for one), then start these units. merge() lists both in the seed with the install digest,
    # and parts_for() adds the part that bakes the starter. The configure steps must still do
    # the same (they run on every image; a first-boot step that failed only logged).
    first_boot_run: tuple[Command, ...] = ()
    first_boot: tuple[str, ...] = ()


Section = Callable[["Plan", "HostPlan", "Secrets"], Part | None]

# The first runcmd step: every package of the seed is installed. On a vanilla image cloud-init
# has just installed them; a golden image skips cloud-init's package step (no apt-get update at
# boot, see templates/packer/seal.sh), so an image baked before a package was added must stop
# here with a message instead of failing later in a stranger way. One dpkg-query for all of
# them (each call reads dpkg's whole status file); a name it does not know is just not listed.
CHECK_PACKAGES = (
    "status=$(dpkg-query -W -f=' ${db:Status-Status}:${Package} ' \"$@\" 2>/dev/null); "
    'missing=""; for p in "$@"; do '
    'case "$status " in *" installed:$p "*) ;; *) missing="$missing $p" ;; esac; done; '
    '[ -z "$missing" ] || { echo "owuibuild: not installed:$missing;'
    ' bake the golden image again from this render" >&2; exit 1; }'
)


# cloud-init writes runcmd as one /bin/sh script, a line per step, and judges it by its exit
# status: without this first line a failed step (the firewall's ruleset check, say) would let
# the steps after it start services anyway, and cloud-init report success if the last one did.
STOP_ON_FAILURE = "set -e"


def check_packages(packages: Iterable[str]) -> Command:
    return ("/bin/sh", "-c", CHECK_PACKAGES, "owuibuild-check-packages", *packages)


# A root disk records the digest of the install steps it ran (InstallSteps.digest): a golden
# image's bake writes it last, and so does a first boot that ran them. A first boot whose seed
# has the same install steps skips them: each would only check its work again, and a check
# re-hashes the installed binaries (Ollama's and Qdrant's run to hundreds of megabytes: seconds
# apiece without KVM). Any difference, a new version or a new step, runs them all.
INSTALLED_STAMP = f"{SCRIPT_DIR}/installed"
INSTALLED_ALREADY = (
    f'if [ "$(cat {INSTALLED_STAMP} 2>/dev/null)" = "$1" ]; then '
    'echo "owuibuild: this root disk ran these install steps already"; exit 0; fi; set -e; '
)
RECORD_INSTALLED = f"; mkdir -p {SCRIPT_DIR}; printf '%s\\n' \"$1\" >{INSTALLED_STAMP}"


def run_install(digest: str, commands: Iterable[Command]) -> Command:
    """One step that runs ``commands`` in order unless this root disk ran the install steps
    whose digest is ``digest``, then records it (see INSTALLED_STAMP)."""
    steps = "; ".join(shlex.join(c) for c in commands)
    script = f"{INSTALLED_ALREADY}{steps}{RECORD_INSTALLED}"
    return ("/bin/sh", "-c", script, "owuibuild-install", digest)


# Every unit file and drop-in is in place before runcmd (write_files runs in cloud-init's init
# stage, deferred files before runcmd). systemd loads a unit it has not loaded yet from disk when
# it is first asked for it, so only units it loaded before their files were written (a packaged
# unit that gets a drop-in, say) need a daemon-reload; cloud-init's mounts module usually did one
# after write_files already. So the configuration steps begin by asking systemd whether any unit
# the seed writes is stale, and reload only then: at most one reload, not one per unit (every
# generator runs again; seconds apiece on a first boot). Sections then enable with --no-reload.
UNIT_DIR = "/etc/systemd/system"
RELOAD_IF_STALE = (
    'state=$(systemctl show --property=LoadState,NeedDaemonReload --value -- "$@") || state=stale; '
    "if printf '%s\\n' \"$state\" | grep -qvx -e loaded -e no -e ''; then systemctl daemon-reload; fi"
)


def reload_if_stale(units: Iterable[str]) -> Command:
    """Reload systemd unless every one of ``units`` is loaded and current (RELOAD_IF_STALE)."""
    return ("/bin/sh", "-c", RELOAD_IF_STALE, "owuibuild-reload", *units)


def masks(f: File) -> bool:
    """Whether ``f`` is an empty unit file, which masks its unit (systemd.unit(5)): nothing to
    load, so nothing for the reload check to ask about."""
    rest = f.path.removeprefix(f"{UNIT_DIR}/")
    return rest != f.path and "/" not in rest and not f.content


def written_units(parts: Iterable[Part]) -> tuple[str, ...]:
    """The units whose unit file or drop-in these parts write, in order; a template's drop-in
    stands for the instances its part names (Part.template_units)."""
    units: dict[str, None] = {}
    for p in parts:
        for f in p.files:
            if not f.path.startswith(f"{UNIT_DIR}/") or masks(f):
                continue
            name = f.path[len(UNIT_DIR) + 1 :].split("/")[0].removesuffix(".d")
            if "@." not in name:
                units[name] = None
                continue
            instances = [u for u in p.template_units if u.startswith(name.split("@")[0] + "@")]
            if not instances:
                raise ValueError(
                    f"section {p.name} writes a drop-in for {name} but names no instance"
                )
            units.update(dict.fromkeys(instances))
    return tuple(units)


# A unit whose package also ships a SysV script (docker, postgresql): `systemctl enable` runs
# update-rc.d for it, which reloads systemd (twice) whatever --no-reload says. Its package
# enabled it when it installed, so only a host where that was turned off enables it here.
ENABLE_PACKAGED = (
    'for unit in "$@"; do systemctl is-enabled --quiet "$unit" || systemctl enable "$unit"; done'
)


def start_packaged_units(*units: str) -> Command:
    """Start units that their Debian packages enable (see ENABLE_PACKAGED), enabling any that
    is not, without the reloads of a plain ``systemctl enable``."""
    return (
        "/bin/sh", "-c", f'{ENABLE_PACKAGED}; systemctl start "$@"', "owuibuild-start", *units
    )  # fmt: skip


def start_units(*units: str, wait: bool = True) -> Command:
    """Enable ``units`` and start them now, in one transaction, without another reload.
    ``wait=False`` queues the start and returns at once."""
    return (
        "systemctl",
        "enable",
        "--no-reload",
        "--now",
        *(() if wait else ("--no-block",)),
        *units,
    )


@cache
def sections() -> tuple[tuple[int, str, Section], ...]:
    """Every section module of this package, in (ORDER, name) order."""
    found: list[tuple[int, str, Section]] = []
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        fn = getattr(module, "part", None)
        if callable(fn):
            found.append((int(getattr(module, "ORDER", 500)), info.name, fn))
    return tuple(sorted(found, key=lambda s: (s[0], s[1])))


# Several targets (user-data, runbook, Packer) need a host's parts; building them renders every
# instance bundle, so one render builds them once. Entries hold their plan and secrets, so the
# ids in a key cannot be reused while the entry lives.
_PARTS_CACHE: OrderedDict[tuple[int, int, str], tuple[Plan, Secrets, tuple[Part, ...]]] = (
    OrderedDict()
)
_PARTS_CACHE_SIZE = 256


def parts_for(plan: Plan, host: HostPlan, secrets: Secrets) -> list[Part]:
    """The parts of every section that applies to ``host`` (pure; memoized per render)."""
    key = (id(plan), id(secrets), host.name)
    hit = _PARTS_CACHE.get(key)
    if hit is not None and hit[0] is plan and hit[1] is secrets:
        _PARTS_CACHE.move_to_end(key)
        return list(hit[2])
    out = []
    for _, _, section in sections():
        p = section(plan, host, secrets)
        if p is not None:
            out.append(p)
    if any(p.first_boot or p.first_boot_run for p in out):
        from ._first_boot import starter

        out.append(starter())
    _PARTS_CACHE[key] = (plan, secrets, tuple(out))
    if len(_PARTS_CACHE) > _PARTS_CACHE_SIZE:
        _PARTS_CACHE.popitem(last=False)
    return out


def _merge_extra(into: dict[str, Any], key: str, value: Any, owner: str) -> None:
    if key not in into:
        into[key] = value
    elif isinstance(into[key], list) and isinstance(value, list):
        into[key] = [*into[key], *value]
    elif isinstance(into[key], dict) and isinstance(value, dict):
        merged = dict(into[key])
        for k, v in value.items():
            _merge_extra(merged, k, v, owner)
        into[key] = merged
    elif into[key] != value:
        raise ValueError(f"section {owner} sets {key} differently from an earlier section")


def merge(parts: Iterable[Part]) -> dict[str, Any]:
    """One cloud-config document from the parts, in a stable order."""
    parts = list(parts)
    doc: dict[str, Any] = {}
    for p in parts:
        for key, value in p.extra.items():
            _merge_extra(doc, key, value, p.name)
    sources: dict[str, Any] = {}
    for p in parts:
        for name, src in p.apt_sources.items():
            if name in sources and sources[name] != src:
                raise ValueError(f"apt source {name} defined twice")
            sources[name] = dict(src)
    if sources:
        doc.setdefault("apt", {})["sources"] = {k: sources[k] for k in sorted(sources)}
    packages = sorted({pkg for p in parts for pkg in p.packages})
    if packages:
        doc["package_update"] = True
        doc["packages"] = packages
    bootcmd = [list(c) for p in parts for c in p.bootcmd]
    if bootcmd:
        doc["bootcmd"] = bootcmd
    install = [c for p in parts for c in p.install]
    digest = install_steps(parts).digest if install else ""
    # Two sections may write the same file with the same content (the masked caddy.service of
    # both Caddy units): written once. The same path with other content is a bug.
    files = list({f.path: f.as_cloud_config() for p in parts for f in p.files}.values())
    written: dict[str, File] = {}
    for f in (f for p in parts for f in p.files):
        if written.setdefault(f.path, f) != f:
            raise ValueError(f"two sections write {f.path} differently")
    first_boot = [u for p in parts for u in p.first_boot]
    first_boot_run = [c for p in parts for c in p.first_boot_run]
    if first_boot or first_boot_run:
        from ._first_boot import listing

        files.append(listing(digest, first_boot_run, first_boot).as_cloud_config())
    paths = [f["path"] for f in files]
    if len(paths) != len(set(paths)):
        raise ValueError("two sections write the same file")
    if files:
        doc["write_files"] = files
    runcmd = [list(check_packages(packages))] if packages else []
    if install:
        runcmd.append(list(run_install(digest, install)))
    configure = [list(c) for p in parts for c in (*p.configure, *p.live_configure)]
    awaited = [u for p in parts for u in p.awaited]
    if awaited:
        configure.append(["systemctl", "start", *awaited])
    if configure:
        runcmd += [list(reload_if_stale(written_units(parts))), *configure]
    if runcmd:
        doc["runcmd"] = [STOP_ON_FAILURE, *runcmd]
    return doc


_URL_ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s\"'\\]+")


@dataclass(frozen=True)
class InstallSteps:
    """The software half of a host's parts: what a golden image for that host runs.

    Derived from the same parts as the host's user-data, so "what gets installed" has one
    definition: the packages, the apt sources they come from, the install commands, and the
    files those commands or apt sources reference by path (install scripts, keyrings).
    Configuration commands and other files are left out on purpose.
    """

    packages: tuple[str, ...]
    apt_sources: Mapping[str, Mapping[str, Any]]
    files: tuple[File, ...]
    commands: tuple[Command, ...]
    sections: tuple[str, ...]  # names of the parts that contributed, for the reader

    @property
    def digest(self) -> str:
        """sha256 of everything these steps install, as a root disk records it. What, not where
        from: every URL's scheme and host (a mirror's address) is left out, since each download
        is pinned by its sha256 and its path names the release."""
        data = {
            "packages": self.packages,
            "apt_sources": self.apt_sources,
            "files": [
                (f.path, f.content, f.permissions, f.owner, f.defer, f.install) for f in self.files
            ],
            "commands": self.commands,
        }
        canonical = _URL_ORIGIN.sub("URL", json.dumps(data, sort_keys=True, separators=(",", ":")))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _referenced_files(parts: list[Part], texts: list[str]) -> tuple[File, ...]:
    """Files marked ``install``, and files named in ``texts`` (and, transitively, in the files
    so found: scripts that run scripts), in part order. What an ``install`` file names is not
    followed: it is read by a package or by systemd, and the paths it names (a unit's
    configuration, say) are the host's own, written by its seed."""
    every = [f for p in parts for f in p.files]
    texts = list(texts)
    chosen: dict[str, File] = {f.path: f for f in every if f.install}
    while True:
        found = [f for f in every if f.path not in chosen and any(f.path in t for t in texts)]
        if not found:
            break
        for f in found:
            chosen[f.path] = f
            texts.append(f.content)
    return tuple({f.path: f for f in every if f.path in chosen}.values())


def install_steps(parts: Iterable[Part]) -> InstallSteps:
    """What the golden image runs for these parts (see InstallSteps). Pure."""
    parts = list(parts)
    # merge() is the one place that knows how packages and apt sources combine.
    software = merge(
        Part(name=p.name, packages=p.packages, apt_sources=p.apt_sources) for p in parts
    )
    commands = [c for p in parts for c in p.install]
    sources = software.get("apt", {}).get("sources", {})
    # Install scripts named by the commands, and keyrings named by the apt sources.
    texts = [" ".join(c) for c in commands] + [repr(s) for s in sources.values()]
    return InstallSteps(
        packages=tuple(software.get("packages", ())),
        apt_sources=sources,
        files=_referenced_files(parts, texts),
        commands=tuple(commands),
        sections=tuple(p.name for p in parts if p.packages or p.apt_sources or p.install),
    )


# What merge() makes of the parts' own steps and files, not a choice of any section: the reload
# check, the awaited starts and the first-boot list only name units the parts' files define,
# and the package check and install step are the install steps'.
_DERIVED_KEYS = frozenset({"write_files", "runcmd", "packages", "package_update"})


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def replacement_components(parts: Iterable[Part], doc: Mapping[str, Any]) -> dict[str, str]:
    """What of a host's configuration only a new host can take, each by a name and a sha256:
    the install steps (``install-steps``), every file not marked ``live`` (by its path), every
    other top-level cloud-config key (``cloud-config:<key>``) and each part's configuration
    steps except its ``live_configure`` (``steps:<part>``). ``doc`` is merge(parts). The names
    are no secret; what each covers may be, so only digests are kept. Pure."""
    parts = list(parts)
    found: dict[str, str] = {}
    if any(p.install or p.packages or p.apt_sources for p in parts):
        found["install-steps"] = install_steps(parts).digest
    for f in (f for p in parts for f in p.files):
        if not f.live:
            found[f.path] = _digest([f.content, f.permissions, f.owner, f.defer])
    for key in sorted(doc.keys() - _DERIVED_KEYS):
        found[f"cloud-config:{key}"] = _digest(doc[key])
    for p in parts:
        steps = [*p.configure, *p.first_boot_run]
        if steps:
            found[f"steps:{p.name}"] = _digest(steps)
    return found


def live_plan(parts: Iterable[Part]) -> dict[str, Any]:
    """What a running host's converge applies of these parts (data/seed_converge.py): every live
    file's path with the unit that reads it ("" for none), and the parts' live configuration
    steps in order. Goes into the signed seed manifest; paths and argvs only, never content."""
    parts = list(parts)
    files = {f.path: f.reader for p in parts for f in p.files if f.live}
    return {
        "files": dict(sorted(files.items())),
        "steps": [list(c) for p in parts for c in p.live_configure],
    }
