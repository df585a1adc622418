"""`owuibuild bake` against a recording TEST DOUBLE of packer (tests/doubles/fake_packer.py).

The double logs every call's argv, the names of the PKR_VAR_* variables it got and the staged
template files; these tests assert on that record: which steps run for which Packer version,
that no secret ever reaches a command line, and the exit code of every failure. The real
Packer runs in the validators and boot tiers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from owuibuild import secrets as store

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
FAKE = REPO / "tests" / "doubles" / "fake_packer.py"
PROXMOX_PASSWORD = "proxmox-password-from-the-environment-9f3c1e"


def run_bake(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, packer: Path | None = FAKE
) -> tuple[subprocess.CompletedProcess[str], list[dict[str, Any]]]:
    blueprint = tmp_path / "multi-host.yml"
    if not blueprint.exists():
        shutil.copy(REPO / "blueprints" / "multi-host.yml", blueprint)
    log = tmp_path / "packer-calls.jsonl"
    log.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "owuibuild.cli",
        "bake",
        str(blueprint),
        "-o",
        str(tmp_path / "out"),
        *args,
    ]
    if packer is not None:
        argv += ["--packer", str(packer)]
    full_env = dict(os.environ, FAKE_PACKER_LOG=str(log), **(env or {}))
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=full_env, cwd=tmp_path, timeout=120
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


def blueprint_secrets(tmp_path: Path) -> frozenset[str]:
    values, _ = store.read(store.secrets_path(tmp_path / "multi-host.yml"))
    assert values
    return frozenset(values.values())


def test_packer_16_validate_and_build_without_plugins(tmp_path: Path) -> None:
    proc, calls = run_bake(
        tmp_path,
        "--image",
        "shared",
        "--builder",
        "qemu",
        env={"PKR_VAR_proxmox_password": PROXMOX_PASSWORD},
    )
    assert proc.returncode == 0, proc.stderr
    assert [c["argv"][0] for c in calls] == ["validate", "build"]
    assert "predates required_plugins" in proc.stdout
    assert "[1/2] packer validate" in proc.stdout and "[2/2] packer build" in proc.stdout
    for call in calls:
        assert "-only=shared.qemu.shared" in call["argv"]
        assert "plugins.pkr.hcl" not in call["files"]
        assert "instance-host.pkr.hcl" not in call["files"]
        assert {"variables.pkr.hcl", "shared.pkr.hcl", "scripts/shared-install.sh"} <= set(
            call["files"]
        )
        assert call["files"]["owuibuild-bake.auto.pkrvars.hcl"] == "0600"
        assert call["checkpoint_disabled"]
        assert "PKR_VAR_proxmox_password" in call["pkr_var_names"]
    # The staging directory (with the throwaway build key) is gone afterwards.
    assert not Path(calls[0]["argv"][-1]).exists()
    # Rendering happened too.
    assert (tmp_path / "out" / "packer" / "shared.pkr.hcl").is_file()


def test_no_secret_on_any_command_line(tmp_path: Path) -> None:
    var_file = tmp_path / "site.pkrvars.hcl"
    var_file.write_text(f'proxmox_password = "{PROXMOX_PASSWORD}-file"\n')
    var_file.chmod(0o600)
    proc, calls = run_bake(
        tmp_path,
        "--image",
        "instance-host",
        "--var-file",
        str(var_file),
        env={"PKR_VAR_proxmox_password": PROXMOX_PASSWORD},
    )
    assert proc.returncode == 0, proc.stderr
    secrets = blueprint_secrets(tmp_path) | {PROXMOX_PASSWORD, f"{PROXMOX_PASSWORD}-file"}
    argv_text = "\n".join(" ".join(c["argv"]) for c in calls)
    assert calls
    for secret in secrets:
        assert secret not in argv_text
        assert secret not in proc.stdout and secret not in proc.stderr
    assert f"-var-file={var_file}" in calls[0]["argv"]
    only = next(a for a in calls[0]["argv"] if a.startswith("-only="))
    assert only == (
        "-only=instance-host.qemu.instance-host,"
        "instance-host.proxmox-clone.instance-host,"
        "instance-host.amazon-ebs.instance-host"
    )


def test_packer_17_runs_init_with_plugins(tmp_path: Path) -> None:
    proc, calls = run_bake(
        tmp_path, "--image", "shared", "--builder", "proxmox", env={"FAKE_PACKER_VERSION": "1.9.4"}
    )
    assert proc.returncode == 0, proc.stderr
    assert [c["argv"][0] for c in calls] == ["init", "validate", "build"]
    assert "plugins.pkr.hcl" in calls[0]["files"]
    # Required inputs of the builders not being run are blanked, not asked for.
    assert "PKR_VAR_aws_region" in calls[1]["pkr_var_names"]


def test_dry_run_runs_and_writes_nothing(tmp_path: Path) -> None:
    proc, calls = run_bake(tmp_path, "--image", "shared", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert calls == []
    assert "would run:" in proc.stdout and " validate " in proc.stdout
    assert not (tmp_path / "out").exists()


def test_missing_packer_is_one_clear_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    proc, _ = run_bake(tmp_path, "--image", "shared", packer=None, env={"PATH": str(empty)})
    assert proc.returncode == 4
    assert "packer not found on PATH" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc, _ = run_bake(tmp_path, "--image", "shared", packer=tmp_path / "nope")
    assert proc.returncode == 4
    assert "not an executable file" in proc.stderr


@pytest.mark.parametrize(
    ("fail", "code", "message"),
    [
        ("validate", 6, "packer validate rejected"),
        ("build", 7, "packer build failed"),
        ("init", 5, "packer init could not"),
    ],
)
def test_failures_have_distinct_exit_codes(
    tmp_path: Path, fail: str, code: int, message: str
) -> None:
    proc, calls = run_bake(
        tmp_path,
        "--image",
        "shared",
        "--builder",
        "qemu",
        env={"FAKE_PACKER_FAIL": fail, "FAKE_PACKER_VERSION": "1.10.0"},
    )
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert calls[-1]["argv"][0] == fail


def test_readable_var_file_with_a_credential_is_refused(tmp_path: Path) -> None:
    var_file = tmp_path / "site.pkrvars.hcl"
    var_file.write_text('proxmox_password = "hunter2-hunter2-hunter2"\nproxmox_node = "pve"\n')
    var_file.chmod(0o644)
    proc, calls = run_bake(tmp_path, "--image", "shared", "--var-file", str(var_file))
    assert proc.returncode == 2
    assert "chmod 600" in proc.stderr
    assert calls == []


def test_builder_not_in_blueprint_is_a_usage_error(tmp_path: Path) -> None:
    shutil.copy(REPO / "blueprints" / "homelab.yml", tmp_path / "multi-host.yml")
    proc, calls = run_bake(tmp_path, "--image", "shared", "--builder", "amazon-ebs")
    assert proc.returncode == 2
    assert "images.builders" in proc.stderr
    assert calls == []
