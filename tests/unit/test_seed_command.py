"""`owuibuild seed HOST_DIR`: the ISO it writes carries user-data, so it is 0600 whatever the
umask or a stale temporary file, holds exactly the host's seed files, and nothing it prints
holds a secret."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pycdlib
import pytest
from click.testing import CliRunner
from fleetdoc import BASE
from owuibuild import secrets as store
from owuibuild.cli import cli

pytestmark = pytest.mark.unit


def iso_files(path: Path) -> dict[str, bytes]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        out: dict[str, bytes] = {}
        for name in ("user-data", "meta-data", "network-config"):
            buf = io.BytesIO()
            try:
                iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            except pycdlib.pycdlibexception.PyCdlibInvalidInput:
                continue
            out[name] = buf.getvalue()
        return out
    finally:
        iso.close()


@pytest.fixture
def host_dir(tmp_path: Path) -> tuple[Path, Path]:
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["render", str(blueprint), "-o", str(out)])
    assert result.exit_code == 0, result.output
    hosts = sorted((out / "hosts").iterdir())
    assert hosts
    return blueprint, hosts[0]


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_seed_writes_a_0600_iso_of_the_host_files_whatever_the_umask(
    host_dir: tuple[Path, Path], umask: int
) -> None:
    blueprint, host = host_dir
    (host / "seed.iso").unlink()
    old = os.umask(umask)
    try:
        result = CliRunner().invoke(cli, ["seed", str(host)])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    iso = host / "seed.iso"
    assert stat.S_IMODE(iso.stat().st_mode) == 0o600
    expected = {
        name: (host / name).read_bytes()
        for name in ("user-data", "meta-data", "network-config")
        if (host / name).exists()
    }
    assert {"user-data", "meta-data"} <= set(expected)
    assert iso_files(iso) == expected
    assert not (host / ".seed.iso.tmp").exists()
    values, _ = store.read(store.secrets_path(blueprint))
    assert values
    assert not any(v in result.output for v in values.values())


def test_seed_replaces_a_world_readable_iso_and_stale_temporary_file(
    host_dir: tuple[Path, Path],
) -> None:
    _, host = host_dir
    iso = host / "seed.iso"
    iso.chmod(0o644)
    stale = host / ".seed.iso.tmp"  # left by a run killed mid-write
    stale.write_bytes(b"partial")
    stale.chmod(0o644)
    result = CliRunner().invoke(cli, ["seed", str(host)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(iso.stat().st_mode) == 0o600
    assert not stale.exists()
    assert iso_files(iso)["user-data"] == (host / "user-data").read_bytes()
