"""The live converge's inputs and its refusals: what the signed manifest says a running host
applies (the live files and the units that read them, the live steps), that adding an
instance changes no other instance's files (so the converge restarts none of them), and the
converge script run for real (python3, openssl) against rendered seeds where it must refuse
or has nothing to do. Applying a seed changes a host's files and units: the boot tier does
that, on the two-VM fleet (tests/boot/test_fleet_boot.py).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO, require_tool
from fleetdoc import BASE
from owuibuild import seed_manifest
from owuibuild.hostconfig import docker, exporters, firewall, postgres, redis, seed_trust
from owuibuild.targets.hosts import unpack_user_data
from test_seed_signing import THIRD, cidata, render, seed_json

pytestmark = pytest.mark.unit


def user_data(out: Path, host: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(
        unpack_user_data((out / "hosts" / host / "user-data").read_bytes())
    )
    return doc


def written(out: Path, host: str) -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in user_data(out, host)["write_files"]}


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    """The base fleet rendered, then again with a third instance on web-a."""
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE)
    render(blueprint, tmp_path / "gen1")
    blueprint.write_text(BASE + THIRD)
    render(blueprint, tmp_path / "gen2")
    return tmp_path / "gen1", tmp_path / "gen2"


def test_the_manifest_lists_the_live_files_with_their_readers_and_the_live_steps(
    two: tuple[Path, Path],
) -> None:
    _, out = two
    shared = seed_json(out, "shared")["live"]
    assert shared["files"][firewall.RULESET] == firewall.UNIT_NAME
    assert shared["files"][f"{postgres.SOURCE_DIR}/pg_hba.conf"] == ""  # setup reloads
    assert shared["files"][postgres.INIT_SQL] == ""
    redis_confs = {p: r for p, r in shared["files"].items() if p.startswith("/etc/redis/")}
    assert redis_confs and all(r.startswith("redis-server@") for r in redis_confs.values())
    assert ["/bin/sh", postgres.SETUP_SCRIPT] in shared["steps"]
    assert ["/bin/sh", redis.SETUP_SCRIPT] in shared["steps"]
    web = seed_json(out, "web-a")["live"]
    three = [p for p, r in web["files"].items() if r == "owui-three.service"]
    assert sorted(three) == sorted(
        [
            f"{docker.UNIT_DIR}/owui-three.service",
            "/opt/owuibuild/three/compose.yaml",
            "/opt/owuibuild/three/three.env",
        ]
    )
    starts = [s for s in web["steps"] if "owui-three.service" in s]
    assert starts and starts[0][:2] == ["systemctl", "enable"], web["steps"]
    # Every live file is in user-data, which the converge writes it from.
    for host in ("shared", "web-a"):
        live = seed_json(out, host)["live"]["files"]
        assert set(live) <= set(written(out, host)), host


def test_each_host_records_its_live_files_at_first_boot(two: tuple[Path, Path]) -> None:
    """The applied record a first boot writes names the live files, so that the first
    converge knows which ones a new seed no longer has."""
    _, out = two
    for host in ("shared", "web-a", "web-b"):
        record = json.loads(written(out, host)[seed_manifest.APPLIED_PATH]["content"])
        assert record["live_files"] == seed_json(out, host)["live"]["files"], host


def test_adding_an_instance_changes_no_other_instances_files(two: tuple[Path, Path]) -> None:
    """What the converge reloads or restarts is what reads a live file that changed: adding
    instance three must change none that another instance's container or Redis server reads,
    and no file of the seed that a running host cannot take."""
    old, new = two
    for host in ("shared", "web-a", "web-b"):
        before, after = written(old, host), written(new, host)
        live = seed_json(new, host)["live"]["files"]
        changed_readers = {
            reader
            for path, reader in live.items()
            if path in before and before[path] != after[path]
        }
        # The units of the instances that were there: their containers and Redis servers.
        theirs = {
            reader
            for path, reader in seed_json(old, host)["live"]["files"].items()
            if path.startswith(("/opt/owuibuild/", "/etc/redis/"))
        }
        assert not changed_readers & theirs, (host, changed_readers & theirs)
        assert seed_json(new, host)["replacement_key"] == seed_json(old, host)["replacement_key"]


def test_the_udev_rule_polls_cd_drives_and_starts_the_converge_for_a_cidata_medium(
    two: tuple[Path, Path],
) -> None:
    _, out = two
    files = written(out, "web-a")
    rule = files[seed_trust.UDEV_RULE]["content"]
    assert 'ATTR{events_poll_msecs}="2000"' in rule
    assert 'ENV{ID_FS_LABEL}=="cidata|CIDATA"' in rule
    assert "systemctl --no-block start owuibuild-seed-converge@%k.service" in rule
    unit = files[seed_trust.CONVERGE_UNIT]["content"]
    assert f"ExecStart=/usr/bin/python3 {seed_trust.CONVERGE} --device /dev/%I" in unit
    assert "After=cloud-final.service" in unit
    script = (REPO / "builder" / "data" / "seed_converge.py").read_text()
    assert files[seed_trust.CONVERGE]["content"] == script
    assert list(seed_trust.TRIGGER) in user_data(out, "web-a")["runcmd"]


# -- the converge script, run for real where it changes nothing ---------------------------------


def host_dir(out: Path, host: str, root: Path) -> Path:
    """/etc/owuibuild and /usr/local/lib/owuibuild of a host booted from ``out``'s seed."""
    root.mkdir()
    files = written(out, host)
    for path in (seed_trust.VERIFIER, seed_trust.CONVERGE):
        (root / Path(path).name).write_text(files[path]["content"])
    for path in (seed_manifest.PUBLIC_KEY_PATH, seed_manifest.APPLIED_PATH):
        (root / Path(path).name).write_text(files[path]["content"])
    return root


def converge(root: Path, seed: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(root / "seed-converge"), "--dir", str(seed)]
    argv += ["--applied", str(root / "seed-applied.json")]
    argv += ["--public-key", str(root / "seed-signing.pub")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def test_the_converge_finds_the_applied_seed_current(
    two: tuple[Path, Path], tmp_path: Path
) -> None:
    require_tool("openssl")
    _, out = two
    root = host_dir(out, "web-a", tmp_path / "host")
    applied = (root / "seed-applied.json").read_bytes()
    done = converge(root, cidata(out / "hosts" / "web-a", tmp_path / "cd"))
    assert done.returncode == 0, done.stderr
    assert "generation 2 is the applied seed: nothing to do" in done.stdout
    assert (root / "seed-applied.json").read_bytes() == applied


@pytest.mark.parametrize(
    ("case", "code", "reason"),
    [
        ("older", 7, "is older than the applied"),
        ("other host", 5, "the seed is for host web-b"),
        ("unsigned", 3, "the seed is unsigned"),
    ],
)
def test_the_converge_refuses_what_the_verifier_refuses_and_changes_nothing(
    two: tuple[Path, Path], tmp_path: Path, case: str, code: int, reason: str
) -> None:
    require_tool("openssl")
    old, new = two
    root = host_dir(new, "web-a", tmp_path / "host")
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    source = {"older": old / "hosts" / "web-a", "other host": new / "hosts" / "web-b"}
    seed = cidata(source.get(case, new / "hosts" / "web-a"), tmp_path / "cd")
    if case == "unsigned":
        (seed / "owuibuild-seed.sig").unlink()
    done = converge(root, seed)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert done.stderr.startswith("owuibuild-seed-verify: refused: "), done.stderr
    assert reason in done.stderr, done.stderr
    assert f"nothing changed (the verifier refused the seed, exit {code})" in done.stdout
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before


def test_the_converge_needs_a_seed(tmp_path: Path) -> None:
    script = REPO / "builder" / "data" / "seed_converge.py"
    shutil.copy(script, tmp_path / "seed-converge")
    done = subprocess.run(
        [sys.executable, str(tmp_path / "seed-converge")], capture_output=True, text=True
    )
    assert done.returncode == 2 and "--device" in done.stderr, done.stderr


def test_the_converge_writes_the_generation_where_the_first_boot_did(tmp_path: Path) -> None:
    """The node exporter's textfile of the applied generation: the first boot's (in user-data,
    where monitoring runs) and the converge's are the same file in the same form."""
    import runpy

    script = runpy.run_path(str(REPO / "builder" / "data" / "seed_converge.py"))
    assert script["SEED_METRICS"] == exporters.SEED_METRICS
    assert script["SEED_METRIC"] == seed_manifest.SEED_METRIC
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE + "monitoring: {retention: 2d}\n")
    out = tmp_path / "out"
    render(blueprint, out)
    for host in ("shared", "web-a"):
        entry = written(out, host).get(exporters.SEED_METRICS)
        generation = seed_json(out, host)["generation"]
        assert entry is not None and entry.get("defer") is True, host
        assert entry["content"] == seed_manifest.generation_metric(generation)
        assert entry["content"].endswith(f"\n{seed_manifest.SEED_METRIC} {generation}\n")
    # Without monitoring no node exporter reads it: not written.
    assert exporters.SEED_METRICS not in written(out_without_monitoring(tmp_path), "shared")


def out_without_monitoring(tmp_path: Path) -> Path:
    blueprint = tmp_path / "bare" / "fleet.yml"
    blueprint.parent.mkdir()
    blueprint.write_text(BASE)
    render(blueprint, tmp_path / "bare" / "out")
    return tmp_path / "bare" / "out"
