"""Tests for the seed ISO room (owuibuild.seed_iso).

Unit tests read the image back with pycdlib. Validator tests check it with real
tools (isoinfo from genisoimage, xorriso, blkid) and skip, saying why, only when
the tool is not installed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pycdlib
import pytest
from conftest import unavailable
from owuibuild.seed_iso import (
    SEED_VOLUME_ID,
    SeedIsoError,
    iso9660_name,
    make_seed_iso,
)

SEED: dict[str, bytes] = {
    "user-data": b"#cloud-config\nruncmd:\n  - [touch, /run/owuibuild-ok]\n",
    "meta-data": b"instance-id: iid-owuibuild-test\nlocal-hostname: seed-test\n",
    "network-config": (
        b"version: 2\nethernets:\n  eth0:\n    addresses: [10.0.2.15/24]\n"
        b"    routes: [{to: default, via: 10.0.2.2}]\n"
    ),
}


def _open(iso_bytes: bytes) -> pycdlib.PyCdlib:
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(iso_bytes))
    return iso


def _read(iso: pycdlib.PyCdlib, **path: str) -> bytes:
    out = io.BytesIO()
    iso.get_file_from_iso_fp(out, **path)
    return out.getvalue()


# --------------------------------------------------------------------- unit


@pytest.mark.unit
def test_same_input_twice_gives_identical_bytes() -> None:
    first = make_seed_iso(SEED)
    second = make_seed_iso(dict(SEED))
    assert first == second


@pytest.mark.unit
def test_mapping_order_does_not_matter() -> None:
    reordered = dict(reversed(list(SEED.items())))
    assert make_seed_iso(SEED) == make_seed_iso(reordered)


@pytest.mark.unit
def test_clock_does_not_leak_into_image(monkeypatch: pytest.MonkeyPatch) -> None:
    before = make_seed_iso(SEED)
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    assert make_seed_iso(SEED) == before


@pytest.mark.unit
def test_identical_across_time_zones_and_processes() -> None:
    """A fresh interpreter in an exotic time zone produces the same bytes."""
    code = (
        "import hashlib, json, sys\n"
        "from owuibuild.seed_iso import make_seed_iso\n"
        "files = {k: v.encode('latin-1') for k, v in json.load(sys.stdin).items()}\n"
        "print(hashlib.sha256(make_seed_iso(files)).hexdigest())\n"
    )
    payload = json.dumps({k: v.decode("latin-1") for k, v in SEED.items()})
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    digests = set()
    for tz in ("UTC", "Pacific/Chatham", "America/St_Johns"):
        env["TZ"] = tz
        proc = subprocess.run(
            [sys.executable, "-c", code],
            input=payload,
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        digests.add(proc.stdout.strip())
    digests.add(hashlib.sha256(make_seed_iso(SEED)).hexdigest())
    assert len(digests) == 1, digests


# sha256 of make_seed_iso(SEED). Same on every machine: if this changes, seeds
# built now differ from seeds built before (a pycdlib upgrade that changes its
# layout, or a change here). Update it only on purpose.
GOLDEN_SHA256 = "2ab4fcb03d34941ca22dba4f0c0206af25c6aab63ac678d6bb8464d2816292ea"


@pytest.mark.unit
def test_golden_digest_is_stable_across_machines() -> None:
    digest = hashlib.sha256(make_seed_iso(SEED)).hexdigest()
    assert digest == GOLDEN_SHA256, (
        f"seed ISO bytes changed (pycdlib {importlib.metadata.version('pycdlib')}): {digest}"
    )


@pytest.mark.unit
def test_read_back_with_pycdlib_names_and_contents() -> None:
    iso = _open(make_seed_iso(SEED))
    try:
        rr_names = sorted(
            child.rock_ridge.name().decode()
            for child in iso.list_children(rr_path="/")
            if not (child.is_dot() or child.is_dotdot())
        )
        assert rr_names == sorted(SEED)

        joliet_names = sorted(
            child.file_identifier().decode("utf-16_be")
            for child in iso.list_children(joliet_path="/")
            if not (child.is_dot() or child.is_dotdot())
        )
        assert joliet_names == sorted(SEED)

        for name, content in SEED.items():
            assert _read(iso, rr_path="/" + name) == content
            assert _read(iso, joliet_path="/" + name) == content
            assert _read(iso, iso_path="/" + iso9660_name(name)) == content
    finally:
        iso.close()


@pytest.mark.unit
def test_primary_volume_descriptor_label_and_fixed_dates() -> None:
    """Read the PVD (ECMA-119 8.4) straight from the bytes: sector 16."""
    pvd = make_seed_iso(SEED)[16 * 2048 : 17 * 2048]
    assert pvd[0:6] == b"\x01CD001"
    assert pvd[40:72].decode("ascii").rstrip() == SEED_VOLUME_ID
    creation, modification = pvd[813:830], pvd[830:847]
    for date in (creation, modification):
        assert date[:16] == b"2000010100000000", date
        assert date[16] == 0  # GMT offset: UTC whatever the local time zone


@pytest.mark.unit
def test_empty_and_binary_contents_round_trip() -> None:
    files = {"user-data": b"", "meta-data": bytes(range(256)) * 40, "vendor-data": b"x"}
    iso = _open(make_seed_iso(files))
    try:
        for name, content in files.items():
            assert _read(iso, rr_path="/" + name) == content
    finally:
        iso.close()


@pytest.mark.unit
def test_different_content_gives_different_bytes() -> None:
    changed = dict(SEED, **{"user-data": b"#cloud-config\n"})
    assert make_seed_iso(SEED) != make_seed_iso(changed)


@pytest.mark.unit
def test_iso9660_name_mangling() -> None:
    assert iso9660_name("user-data") == "USER_DATA.;1"
    assert iso9660_name("network-config") == "NETWORK_CONFIG.;1"
    assert iso9660_name("a.b.txt") == "A_B.TXT;1"


@pytest.mark.unit
@pytest.mark.parametrize("bad", ["", "../x", "a/b", ".hidden", "-x", "x" * 65, "sp ace", "ü"])
def test_rejects_unsafe_names(bad: str) -> None:
    with pytest.raises(SeedIsoError):
        make_seed_iso({bad: b"x"})


@pytest.mark.unit
def test_rejects_names_that_clash_after_mangling() -> None:
    with pytest.raises(SeedIsoError, match="clash"):
        make_seed_iso({"user-data": b"a", "user_data": b"b"})


@pytest.mark.unit
def test_rejects_non_bytes_content() -> None:
    with pytest.raises(SeedIsoError):
        make_seed_iso({"user-data": "text"})  # type: ignore[dict-item]


# --------------------------------------------------------------- validators


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} is not installed; cannot check the seed ISO with a real tool")
    return path


@pytest.fixture()
def seed_iso_file(tmp_path: Path) -> Path:
    path = tmp_path / "seed.iso"
    path.write_bytes(make_seed_iso(SEED))
    return path


def _run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    return proc.stdout + proc.stderr


@pytest.mark.validators
def test_isoinfo_sees_label_rock_ridge_joliet_and_files(seed_iso_file: Path) -> None:
    isoinfo = _tool("isoinfo")
    info = _run(isoinfo, "-d", "-i", str(seed_iso_file))
    assert "Volume id: cidata" in info
    assert "Rock Ridge" in info
    assert "Joliet" in info

    for flag in ("-R", "-J"):
        listing = _run(isoinfo, flag, "-f", "-i", str(seed_iso_file)).split()
        assert sorted(listing) == sorted("/" + n for n in SEED), (flag, listing)

    for name, content in SEED.items():
        proc = subprocess.run(
            [isoinfo, "-R", "-i", str(seed_iso_file), "-x", "/" + name],
            capture_output=True,
            check=True,
        )
        assert proc.stdout == content


@pytest.mark.validators
def test_xorriso_sees_label_and_extracts_files(seed_iso_file: Path, tmp_path: Path) -> None:
    xorriso = _tool("xorriso")
    out = _run(xorriso, "-indev", str(seed_iso_file), "-pvd_info", "-ls", "/")
    assert "Volume Id    : cidata" in out
    for name in SEED:
        assert f"'{name}'" in out

    dest = tmp_path / "extracted"
    _run(xorriso, "-osirrox", "on", "-indev", str(seed_iso_file), "-extract", "/", str(dest))
    assert sorted(p.name for p in dest.iterdir()) == sorted(SEED)
    for name, content in SEED.items():
        assert (dest / name).read_bytes() == content


@pytest.mark.validators
def test_blkid_sees_label_cidata(seed_iso_file: Path) -> None:
    blkid = _tool("blkid")
    # -p probes the file itself (no cache), like udev does for a real cdrom.
    label = _run(blkid, "-p", "-o", "value", "-s", "LABEL", str(seed_iso_file)).strip()
    assert label == SEED_VOLUME_ID
    fstype = _run(blkid, "-p", "-o", "value", "-s", "TYPE", str(seed_iso_file)).strip()
    assert fstype == "iso9660"
