"""Platform user-data limits reach the user as diagnostics: a gzip warning, a located error."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from conftest import BLUEPRINTS
from owuibuild.pipeline import compile_blueprint

pytestmark = pytest.mark.unit

# The shared host of the multi-host example carries every service (one Redis per instance), its
# certificate and key, Caddy's configuration, the Qdrant collections' script and its applied-seed
# record: with more instances than this its user-data no longer fits 16 KiB gzipped.
KEEP = 1


def blueprint(tmp_path: Path, platform: str) -> Path:
    """The multi-host example on ``platform`` with its first KEEP instances: the shared host's
    user-data (with its TLS key and certificate, random and so incompressible) is then over
    16 KiB raw and under it gzipped."""
    text = (
        (BLUEPRINTS / "multi-host.yml")
        .read_text()
        .replace("platform: openstack", f"platform: {platform}")
        # without monitoring: its exporters' files would take the seed over the limit gzipped
        .split("\n# Prometheus (on the shared host)")[0]
    )
    head, instances = text.split("\ninstances:\n")
    entries = instances.split("\n  - ")
    rest = entries[-1].split("\nimages:", 1)[1]
    text = f"{head}\ninstances:\n" + "\n  - ".join(entries[:KEEP]) + "\nimages:" + rest
    path = tmp_path / "fleet.yml"
    path.write_text(text)
    return path


def test_oversized_user_data_is_gzipped_and_said_so(tmp_path: Path) -> None:
    compiled = compile_blueprint(blueprint(tmp_path, "ec2"))
    assert compiled.ok
    files = {a.path: a.data for a in compiled.artifacts}
    shared = files["hosts/ai-shared/user-data"]
    assert shared[:2] == b"\x1f\x8b" and gzip.decompress(shared).startswith(b"#cloud-config\n")
    assert len(shared) <= 16384
    warned = [d for d in compiled.diagnostics if d.path == ("platform",)]
    assert any("hosts/ai-shared/user-data" in d.message for d in warned)
    assert all(d.line == 6 for d in warned)  # the `platform:` line of multi-host.yml


def test_strict_makes_the_gzip_warning_an_error(tmp_path: Path) -> None:
    compiled = compile_blueprint(blueprint(tmp_path, "ec2"), strict=True)
    assert not compiled.ok and not compiled.artifacts


def test_a_platform_without_a_limit_gets_plain_user_data(tmp_path: Path) -> None:
    compiled = compile_blueprint(blueprint(tmp_path, "nocloud"))
    files = {a.path: a.data for a in compiled.artifacts}
    assert files["hosts/ai-shared/user-data"].startswith(b"#cloud-config\n")
    assert not [d for d in compiled.diagnostics if d.path == ("platform",)]
