"""The writer: puts a complete set of artifacts on disk, atomically.

Output is assembled in a temporary directory next to the target and swapped in, so a failed
or interrupted render leaves the previous output untouched; what a killed render leaves behind
(hidden ``.<name>.new-*`` / ``.old-*`` siblings) is repaired by the next one. The manifest is
written last.
Only this room (and the CLI) writes files.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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
    import ctypes

    # The C library this process already has loaded (find_library would run ldconfig in a
    # subprocess on every render).
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
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
    made = {root}  # a large render writes a thousand files into a few hundred directories
    for a in artifacts:
        dest = root / a.path
        if dest.parent not in made:
            dest.parent.mkdir(parents=True, exist_ok=True)
            made.update(dest.parents)
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, a.mode)
        try:
            os.fchmod(fd, a.mode)  # umask must not widen or narrow the intended mode
            data = memoryview(a.data)
            while data:
                data = data[os.write(fd, data) :]
        finally:
            os.close(fd)


def _leftovers(out_dir: Path, kind: str) -> list[Path]:
    """Hidden ``.<name>.<kind>-*`` directories an earlier, killed render left next to the target."""
    parent = out_dir.parent
    if not parent.is_dir():
        return []
    prefix = f".{out_dir.name}.{kind}-"
    return sorted(p for p in parent.iterdir() if p.name.startswith(prefix) and p.is_dir())


def recover(out_dir: Path) -> None:
    """Undo what a render killed mid-swap left behind, so the target is wholly one output.

    Without renameat2 the swap is two renames, and a render killed between them leaves the
    previous output only in a hidden ``.<name>.old-*`` directory: put it back. Every other
    leftover (``.new-*`` staging, an ``.old-*`` already superseded) is removed. Callers hold
    the parent directory's lock, so no live render's staging is touched.
    """
    olds = _leftovers(out_dir, "old")
    if olds and not out_dir.exists() and (olds[-1] / MANIFEST).is_file():
        os.rename(olds.pop(), out_dir)
    for leftover in olds + _leftovers(out_dir, "new"):
        shutil.rmtree(leftover)


@contextmanager
def _locked(parent: Path) -> Iterator[None]:
    """Serialise renders into one parent directory: recovery must not remove a live staging."""
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def write(out_dir: Path, artifacts: Sequence[Artifact]) -> None:
    """Replace ``out_dir`` with exactly ``artifacts``; the manifest artifact is written last.

    At every instant ``out_dir`` is wholly the previous output or wholly the new one: the new
    output is assembled in a hidden sibling and swapped in with one renameat2(RENAME_EXCHANGE).
    Where that call is missing, the fallback's window between its two renames is closed by
    :func:`recover` at the next render.
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _locked(out_dir.parent):
        recover(out_dir)
        check_target(out_dir)
        _swap_in(out_dir, artifacts)


def _swap_in(out_dir: Path, artifacts: Sequence[Artifact]) -> None:
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
        try:
            os.rename(out_dir, old)
            os.rename(staging, out_dir)
        except BaseException:
            # Decide by what is on disk: the interruption may come just after either rename.
            if old.is_dir() and not out_dir.exists():
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
