"""The pipeline: load -> validate -> model -> allocate -> plan -> secrets -> targets -> verify
-> manifest.

One-way and free of terminal output: it returns diagnostics and artifacts, and the CLI decides
what to print and the writer what to write. The secret store is the only I/O here besides
reading the blueprint, and it is injected so tests and `--check` can keep it read-only.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .diagnostics import Diagnostic, error, has_errors, promote_warnings, warning
from .model import Fleet
from .plan import Plan, make_plan
from .secrets import Secrets
from .seed_manifest import SeedChange
from .source import Source, load
from .targets import Artifact
from .writer import MANIFEST


@dataclass
class Checked:
    """A blueprint after validation."""

    source: Source | None
    fleet: Fleet | None
    diagnostics: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.fleet is not None and not has_errors(self.diagnostics)


@dataclass
class Compiled:
    checked: Checked
    plan: Plan | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    secrets_changed: bool = False
    diagnostics: list[Diagnostic] = field(default_factory=list)
    secrets: Secrets | None = None
    notices: list[str] = field(default_factory=list)  # what the secret stores did, to tell
    # Each host whose seed changed since the secret store's record of it, and how it changed.
    seed_changes: list[SeedChange] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.plan is not None and not has_errors(self.diagnostics)


def check(path: Path, *, strict: bool = False) -> Checked:
    from .validate import validate

    source, diagnostics = load(path)
    if source is None:
        return Checked(None, None, diagnostics)
    fleet, diagnostics = validate(source)
    if strict:
        diagnostics = promote_warnings(diagnostics)
        if has_errors(diagnostics):
            fleet = None
    return Checked(source, fleet, diagnostics)


def manifest(artifacts: list[Artifact], blueprint_sha256: str) -> Artifact:
    """Every file with its sha256, the generator version and the blueprint's sha256."""
    doc = {
        "generator": {"name": "owuibuild", "version": __version__},
        "blueprint_sha256": blueprint_sha256,
        "files": [
            {
                "path": a.path,
                "sha256": hashlib.sha256(a.data).hexdigest(),
                "size": len(a.data),
                "mode": f"{a.mode:04o}",
            }
            for a in artifacts
        ],
    }
    return Artifact(MANIFEST, (json.dumps(doc, indent=2) + "\n").encode())


def compile_blueprint(
    path: Path,
    *,
    strict: bool = False,
    write_secrets: bool = True,
    seed_iso: bool = True,
    today: datetime.date | None = None,
) -> Compiled:
    """``today`` is the date certificates are checked against (default: the clock's)."""
    from . import pki
    from . import secrets as secret_store
    from .allocation import allocate
    from .pki import key_fingerprint
    from .seed_manifest import change
    from .seed_signing import signing_key
    from .targets import render_all
    from .targets.hosts import UserDataTooLarge, host_seed, is_packed
    from .verify import verify

    checked = check(path, strict=strict)
    compiled = Compiled(checked, diagnostics=list(checked.diagnostics))
    if not checked.ok or checked.fleet is None or checked.source is None:
        return compiled
    # The store first: what each instance holds of the shared ranges is in it (allocation).
    stored = secret_store.open_store(secret_store.secrets_path(path))
    if stored.diagnostics:
        compiled.diagnostics += stored.diagnostics
        return compiled
    allocations, problems = allocate(checked.fleet, stored.allocations)
    if problems:
        compiled.diagnostics += [checked.source.locate(d) for d in problems]
        return compiled
    plan = make_plan(checked.fleet, allocations)
    needed = [ref.name for ref in plan.secrets]
    secrets, changed, problems = secret_store.load_or_create(
        path,
        needed,
        create=write_secrets,
        scram_logins=[(ref.name, role) for ref, role in plan.scram_logins],
        stored=stored,
        allocations=allocations,
    )
    compiled.secrets_changed = changed
    compiled.diagnostics += problems
    tls, tls_changed, notices, problems = pki.load_or_create(
        path,
        plan.fleet.name,
        plan.certificate_hosts,
        front_doors=plan.front_door_certificates,
        create=write_secrets,
        today=today,
    )
    compiled.secrets_changed |= tls_changed
    compiled.notices = notices
    compiled.diagnostics += problems
    if secrets is None or tls is None:
        return compiled
    secrets = dataclasses.replace(secrets, pki=tls)
    compiled.secrets = secrets
    try:
        artifacts = render_all(plan, secrets)
    except UserDataTooLarge as exc:
        compiled.diagnostics.append(
            error(
                ("platform",),
                str(exc),
                "move instances to more hosts, or use a platform with a larger user-data limit",
            ).located(str(path), *_line_of(checked.source, ("platform",)))
        )
        return compiled
    if not seed_iso:
        artifacts = [a for a in artifacts if not a.path.endswith("/seed.iso")]
    for a in artifacts:
        if a.path.endswith("/user-data") and is_packed(a.data):
            compiled.diagnostics.append(
                warning(
                    ("platform",),
                    f"{a.path} is larger than {checked.fleet.platform} allows raw; it is written "
                    "gzip-compressed (cloud-init reads that)",
                    "keep the compressed file as it is: do not re-encode it",
                ).located(str(path), *_line_of(checked.source, ("platform",)))
            )
    if strict and compiled.diagnostics and not has_errors(compiled.diagnostics):
        compiled.diagnostics = promote_warnings(compiled.diagnostics)
        return compiled
    used = {secrets[name] for name in needed}
    # The signing key goes to no host: neither its secret nor the key may be in any file.
    signing_secret = secrets[plan.seed_signing_key.name]
    signing_pem = key_fingerprint(signing_key(signing_secret).private_pem)
    problems = verify(artifacts, used, tls.private_keys(), (signing_secret, signing_pem))
    if problems:
        compiled.diagnostics += [d.located("<output>", None, None) for d in problems]
        return compiled
    records = {h.name: host_seed(plan, h, secrets).record for h in plan.hosts}
    cloud = None if plan.seeds_swappable else plan.fleet.platform
    changes = [change(name, secrets.seeds.get(name), r, cloud) for name, r in records.items()]
    compiled.seed_changes = sorted((c for c in changes if c is not None), key=lambda c: c.host)
    if write_secrets and any(secrets.seeds.get(name) != r for name, r in records.items()):
        problems = secret_store.save_seed_records(path, secrets, records)
        if problems:
            compiled.diagnostics += problems
            return compiled
    artifacts.append(manifest(artifacts, checked.source.sha256))
    compiled.plan = plan
    compiled.artifacts = sorted(artifacts, key=lambda a: a.path)
    return compiled


def _line_of(source: Source, path: tuple[str, ...]) -> tuple[int | None, int | None]:
    mark = source.mark_of(path)
    return (mark.line, mark.column) if mark else (None, None)


def internal_error(exc: BaseException) -> Diagnostic:
    return error(
        (),
        f"internal error: {type(exc).__name__}: {exc}",
        "this is a bug in owuibuild; please report it with the blueprint",
    )
