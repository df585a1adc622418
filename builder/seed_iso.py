"""Seed ISO room: pack NoCloud seed files into a reproducible ``cidata`` ISO 9660 image.

This room takes the already rendered seed files (``user-data``, ``meta-data``,
``network-config``, ...) as bytes and returns the bytes of an ISO 9660 volume
whose volume identifier is ``cidata``, which is what cloud-init's NoCloud
datasource looks for. It does nothing else: no rendering, no file system access,
no external tool (the image is made with pycdlib only).

The names are written three times, so every reader sees the exact lowercase
names with dashes:

* Rock Ridge (what the Linux kernel, and so cloud-init, uses when present),
* Joliet (what Windows-style readers use),
* a mangled ISO 9660 level 3 name (``USER_DATA.;1``) for plain readers.

The output is byte-identical across runs and machines for the same input:
files are added in sorted order, every timestamp is :data:`SEED_EPOCH` in UTC
(independent of the local time zone), and nothing random is used.
"""

from __future__ import annotations

import io
import re
import threading
import time as _real_time
import types
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pycdlib

__all__ = ["SEED_EPOCH", "SEED_VOLUME_ID", "SeedIsoError", "iso9660_name", "make_seed_iso"]

SEED_VOLUME_ID = "cidata"
"""Volume identifier that cloud-init's NoCloud datasource searches for."""

SEED_EPOCH = 946684800.0
"""Every timestamp in the image: 2000-01-01T00:00:00Z (0 would mean "unset" in a
volume descriptor date)."""

_FILE_MODE = 0o100444  # regular file, read-only for everyone (Rock Ridge PX)
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")

# pycdlib reads the clock through the ``time`` module it imported; while an
# image is being built, that name points at a frozen clock. The lock keeps two
# builds from interleaving their patch and restore.
_CLOCK_LOCK = threading.Lock()


class SeedIsoError(ValueError):
    """The files cannot be packed into a seed ISO (bad or clashing names)."""


class _FrozenClock(types.ModuleType):
    """Stand-in for the ``time`` module: constant ``time()``, UTC ``localtime()``."""

    def __init__(self, epoch: float) -> None:
        super().__init__("time")
        self._epoch = epoch

    def time(self) -> float:
        return self._epoch

    def localtime(self, secs: float | None = None) -> _real_time.struct_time:
        return _real_time.gmtime(self._epoch if secs is None else secs)

    def gmtime(self, secs: float | None = None) -> _real_time.struct_time:
        return _real_time.gmtime(self._epoch if secs is None else secs)

    def __getattr__(self, name: str) -> Any:
        return getattr(_real_time, name)


@contextmanager
def _frozen_pycdlib_clock(epoch: float) -> Iterator[None]:
    import sys

    clock = _FrozenClock(epoch)
    with _CLOCK_LOCK:
        patched: list[types.ModuleType] = []
        for name, module in list(sys.modules.items()):
            if (name == "pycdlib" or name.startswith("pycdlib.")) and getattr(
                module, "time", None
            ) is _real_time:
                module.time = clock  # type: ignore[attr-defined]
                patched.append(module)
        try:
            yield
        finally:
            for module in patched:
                module.time = _real_time  # type: ignore[attr-defined]


def iso9660_name(name: str) -> str:
    """Return the plain ISO 9660 (level 3) identifier used for ``name``.

    ``user-data`` becomes ``USER_DATA.;1``: upper case, anything outside
    ``A-Z 0-9 _`` replaced by ``_``, at most one dot (before the extension).
    """
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""

    def clean(part: str) -> str:
        return re.sub(r"[^A-Z0-9_]", "_", part.upper())

    return f"{clean(stem)}.{clean(ext)};1"


def _check_names(names: list[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        if not _NAME_RE.match(name):
            raise SeedIsoError(
                f"seed file name {name!r} is not allowed: use 1-64 characters from "
                "A-Z a-z 0-9 . _ - , not starting with '.' or '-'"
            )
        mangled = iso9660_name(name)
        if mangled in seen:
            raise SeedIsoError(
                f"seed file names {seen[mangled]!r} and {name!r} clash as ISO 9660 name {mangled}"
            )
        seen[mangled] = name


def make_seed_iso(files: Mapping[str, bytes]) -> bytes:
    """Build a NoCloud seed ISO holding ``files`` at its root and return its bytes.

    ``files`` maps a root file name (``"user-data"``) to its content. The same
    mapping always gives the same bytes, whatever the order of the mapping,
    the clock, the time zone or the machine.
    """
    names = sorted(files)
    _check_names(names)
    for name in names:
        if not isinstance(files[name], bytes | bytearray | memoryview):
            raise SeedIsoError(f"content of seed file {name!r} must be bytes")

    with _frozen_pycdlib_clock(SEED_EPOCH):
        iso = pycdlib.PyCdlib()
        iso.new(
            interchange_level=3,
            sys_ident="LINUX",
            vol_ident=SEED_VOLUME_ID,
            app_ident_str="OWUIBUILD",
            joliet=3,
            rock_ridge="1.09",
        )
        for name in names:
            data = bytes(files[name])
            iso.add_fp(
                io.BytesIO(data),
                len(data),
                iso_path="/" + iso9660_name(name),
                rr_name=name,
                joliet_path="/" + name,
                file_mode=_FILE_MODE,
            )
        out = io.BytesIO()
        iso.write_fp(out)
        iso.close()
    return out.getvalue()
