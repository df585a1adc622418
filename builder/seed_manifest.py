"""Seed generations and the signed seed manifest: which seed a host runs, and whether a new one
can reach it live.

Every host's seed carries a generation. It goes up by one whenever the seed's content changes
(its ``content`` digest: the seed without its generation) and stays the same otherwise, so the
same blueprint and secret store still give byte-identical output. The secret store keeps each
host's last record (owuibuild.secrets), since it is the one file users must keep anyway.

The seed manifest (``owuibuild-seed.json``, signed into ``owuibuild-seed.sig``) names the host,
the fleet, the generation, the sha256 of each seed file and the host's replacement key: the
sha256 of everything in the seed that a running host cannot take (see
owuibuild.hostconfig.replacement_components). A host keeps the record of the seed it applied
(``seed-applied.json``); its verifier (data/seed_verify.py) refuses a seed whose replacement
key differs from it.

Pure: data in, data out. Nothing here knows what a file means.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FORMAT = "owuibuild-seed/1"
MANIFEST = "owuibuild-seed.json"
SIGNATURE = "owuibuild-seed.sig"
# On the host: the fleet's public key and the record of the applied seed, written at first boot.
PUBLIC_KEY_PATH = "/etc/owuibuild/seed-signing.pub"
APPLIED_PATH = "/etc/owuibuild/seed-applied.json"
# How many hex digits of each replacement component's digest the store keeps: enough to tell
# what changed; the replacement key itself is computed from the full digests.
STORED_DIGITS = 16


@dataclass(frozen=True)
class SeedRecord:
    """What the store keeps of a host's latest seed: its generation, the digest of its content
    without the generation, and a short digest of each replacement component (by name)."""

    generation: int
    content: str
    replacement: Mapping[str, str] = field(default_factory=dict)

    def to_data(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "content": self.content,
            "replacement": dict(sorted(self.replacement.items())),
        }


def content_digest(user_data: Mapping[str, Any], meta_data: bytes, network_config: bytes) -> str:
    """sha256 of a seed without its generation: the cloud-config (as data) and the other files."""
    canonical = json.dumps(
        [user_data, meta_data.decode("utf-8"), network_config.decode("utf-8")],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def replacement_key(components: Mapping[str, str]) -> str:
    """sha256 of the replacement components, by name: equal keys, nothing to replace."""
    canonical = json.dumps(dict(sorted(components.items())), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def next_record(
    stored: SeedRecord | None, content: str, components: Mapping[str, str]
) -> SeedRecord:
    """The record of a seed whose content digest is ``content``: the stored generation when the
    content is the stored one, the next one when it is not (1 for a host without a record)."""
    short = {name: digest[:STORED_DIGITS] for name, digest in components.items()}
    if stored is None:
        return SeedRecord(1, content, short)
    generation = stored.generation if stored.content == content else stored.generation + 1
    return SeedRecord(generation, content, short)


def manifest(
    fleet: str,
    host: str,
    generation: int,
    content: str,
    files: Mapping[str, bytes],
    replacement: str,
    live: Mapping[str, Any],
) -> bytes:
    """The exact bytes of owuibuild-seed.json, which the signature covers. ``live`` is what a
    running host's converge applies (hostconfig.live_plan): live files' paths and the units
    that read them, and the live configuration steps."""
    doc = {
        "format": FORMAT,
        "fleet": fleet,
        "host": host,
        "generation": generation,
        "content": content,
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())},
        "replacement_key": replacement,
        "live": live,
    }
    return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()


def applied(
    fleet: str,
    host: str,
    generation: int,
    content: str,
    replacement: str,
    live_files: Mapping[str, str],
) -> str:
    """The host's record of the seed it applied (seed-applied.json), as its first boot writes it
    (the converge writes the same from a manifest it applied). ``live_files``: the live files'
    paths and their readers, so that the next converge knows which ones went away."""
    doc = {
        "fleet": fleet,
        "host": host,
        "generation": generation,
        "content": content,
        "replacement_key": replacement,
        "live_files": dict(sorted(live_files.items())),
    }
    return json.dumps(doc, sort_keys=True, indent=2) + "\n"


SEED_METRIC = "owuibuild_seed_generation"


def generation_metric(generation: int) -> str:
    """The node exporter's textfile of the applied generation (the converge writes the same)."""
    return (
        f"# HELP {SEED_METRIC} The owuibuild seed generation this host applied.\n"
        f"# TYPE {SEED_METRIC} gauge\n"
        f"{SEED_METRIC} {generation}\n"
    )


@dataclass(frozen=True)
class SeedChange:
    """How a host's seed changed since the stored record: ``new`` (no record: a first boot),
    ``live`` (a running host can take it) or ``replacement`` (only a new host can), with the
    replacement components that differ (names only: paths and keys, never values)."""

    host: str
    generation: int
    previous: int | None
    kind: str
    changed: tuple[str, ...] = ()
    # Set when the change itself could be live but the platform takes no seed on a running host.
    platform: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "generation": self.generation,
            "previous": self.previous,
            "apply": self.kind,
            "changed": list(self.changed),
            "platform_takes_no_seed_live": self.platform is not None,
        }

    def describe(self) -> str:
        if self.kind == "new":
            return f"seed of {self.host}: generation {self.generation}, for a new host"
        head = f"seed of {self.host}: generation {self.previous} -> {self.generation}"
        if self.kind == "live":
            return f"{head}, can be re-applied live"
        if self.platform is not None:
            return f"{head}, needs a host replacement (on {self.platform} a running host takes no new seed)"
        return f"{head}, needs a host replacement (changed: {', '.join(self.changed)})"


def change(
    host: str, stored: SeedRecord | None, new: SeedRecord, platform: str | None = None
) -> SeedChange | None:
    """What happened to ``host``'s seed; None when its content is the stored one. ``platform``
    names a platform whose running hosts take no new seed (a cloud): no change is live there."""
    if stored is None:
        return SeedChange(host, new.generation, None, "new")
    if stored.content == new.content:
        return None
    names = stored.replacement.keys() | new.replacement.keys()
    differ = tuple(sorted(n for n in names if stored.replacement.get(n) != new.replacement.get(n)))
    if not differ and platform is not None:
        return SeedChange(host, new.generation, stored.generation, "replacement", (), platform)
    kind = "replacement" if differ else "live"
    return SeedChange(host, new.generation, stored.generation, kind, differ)
