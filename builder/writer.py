"""The writer: puts a complete set of artifacts on disk, atomically.

Output is assembled in a temporary directory next to the target and swapped in, so a failed
or interrupted render leaves the previous output untouched. The manifest is written last.
Only this room (and the CLI) writes files.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .targets import Artifact

MANIFEST = "manifest.json"
_RENAME_EXCHANGE = 2


class WriteError(Exception):
    """A problem with the output directory, with a hint for the user."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


@dataclass(frozen=True)
class Change:
    path: str
    kind: str  # "added", "changed", "removed", "mode"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False when unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(rc == 0)


def check_target(out_dir: Path) -> None:
    """Refuse to replace a directory that is not an earlier owuibuild output."""
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir() or out_dir.is_symlink():
            raise WriteError(f"{out_dir} exists and is not a directory", "choose another -o DIR")
        if any(out_dir.iterdir()) and not (out_dir / MANIFEST).is_file():
            raise WriteError(
                f"{out_dir} is not empty and holds no {MANIFEST}: refusing to replace it",
                "render into a new or empty directory, or an earlier owuibuild output",
            )


def _materialize(root: Path, artifacts: Sequence[Artifact]) -> None:
    os.chmod(root, 0o755)
    for a in artifacts:
        dest = root / a.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, a.mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(a.data)
        os.chmod(dest, a.mode)  # umask must not widen or narrow the intended mode


def write(out_dir: Path, artifacts: Sequence[Artifact]) -> None:
    """Replace ``out_dir`` with exactly ``artifacts``; the manifest artifact is written last."""
    check_target(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    ordered = [a for a in artifacts if a.path != MANIFEST] + [
        a for a in artifacts if a.path == MANIFEST
    ]
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.new-", dir=out_dir.parent))
    try:
        _materialize(staging, ordered)
        if not out_dir.exists():
            os.rename(staging, out_dir)
            return
        if _exchange(staging, out_dir):
            shutil.rmtree(staging)  # now holds the previous output
            return
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
        os.rmdir(old)
        os.rename(out_dir, old)
        try:
            os.rename(staging, out_dir)
        except OSError:
            os.rename(old, out_dir)
            raise
        shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def diff(out_dir: Path, artifacts: Sequence[Artifact]) -> list[Change]:
    """What writing ``artifacts`` would change in ``out_dir`` (for render --check)."""
    changes: list[Change] = []
    wanted = {a.path: a for a in artifacts}
    existing: set[str] = set()
    if out_dir.is_dir():
        for p in out_dir.rglob("*"):
            if p.is_file():
                existing.add(p.relative_to(out_dir).as_posix())
    for path, a in sorted(wanted.items()):
        target = out_dir / path
        if path not in existing:
            changes.append(Change(path, "added"))
        elif hashlib.sha256(target.read_bytes()).digest() != hashlib.sha256(a.data).digest():
            changes.append(Change(path, "changed"))
        elif (target.stat().st_mode & 0o777) != a.mode:
            changes.append(Change(path, "mode"))
    changes += [Change(p, "removed") for p in sorted(existing - wanted.keys())]
    return changes
