"""Installing a pinned upstream release archive (Ollama, Qdrant): the install script.

Shared by the qdrant and ollama sections. The script is an install step (Part.install): it
needs no secret and no site configuration, verifies the archive's sha256 before extracting,
and skips when the installed files match the checksums recorded for that archive.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..artifacts import Artifact
from ..plan import SCRIPT_DIR, Plan
from ..quoting import render_template
from . import Command, File


def install_script_path(name: str) -> str:
    return f"{SCRIPT_DIR}/install-{name}.sh"


def pin_file(name: str) -> str:
    """'<archive sha256>  <version>' of the installed release."""
    return f"{SCRIPT_DIR}/{name}.archive"


def sums_file(name: str) -> str:
    """sha256sum lines of the files installed from that archive."""
    return f"{SCRIPT_DIR}/{name}.sha256"


def install(
    plan: Plan,
    artifact: Artifact,
    files: Sequence[tuple[str, str]],
    trees: Sequence[tuple[str, str]] = (),
) -> tuple[File, Command]:
    """The install script for ``artifact`` and the command that runs it.

    ``files`` are (path in archive, installed path) of executables, checksummed after
    install; ``trees`` are directories copied as a whole (replaced on upgrade).
    """
    script = render_template(
        "install-artifact.sh.j2",
        name=artifact.name,
        version=artifact.version,
        sha256=artifact.sha256,
        url=artifact.url(plan.fleet.mirror),
        pin_file=pin_file(artifact.name),
        sums_file=sums_file(artifact.name),
        files=list(files),
        trees=list(trees),
    )
    path = install_script_path(artifact.name)
    return File(path, script, permissions="0755"), ("/bin/sh", path)


def system_user(name: str, home: str, groups: Sequence[str] = ()) -> dict[str, object]:
    """A cloud-init users entry for a service account (created before deferred files)."""
    entry: dict[str, object] = {
        "name": name,
        "system": True,
        "homedir": home,
        "no_create_home": True,
        "shell": "/usr/sbin/nologin",
        "lock_passwd": True,
    }
    if groups:
        entry["groups"] = list(groups)
    return entry
