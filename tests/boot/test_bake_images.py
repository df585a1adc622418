"""Boot tier: real bakes of both golden images of the two-VM fleet, then an offline look inside.

``owuibuild bake`` runs the real Packer (qemu builder, accelerator tcg) on the cached Debian 13
base image, with the Ollama and Qdrant artifacts and the Open WebUI image served by the local
mirror of TEST DOUBLES (tests/doubles: they check our install steps, not Ollama, Qdrant or Open
WebUI). tests/boot/test_fleet_boot.py boots the same images. Each image is then read
without booting it: converted to raw and walked with debugfs. What must be in it is derived
from the same install steps the templates were made from (owuibuild.hostconfig), so this test
follows the sections as they grow.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from owuibuild import secrets as store
from owuibuild.hostconfig import INSTALLED_STAMP, install_steps, parts_for, postgres
from owuibuild.pipeline import compile_blueprint
from owuibuild.targets.packer import BAKED_OLLAMA_MODELS, images

pytestmark = pytest.mark.boot

BUILD_USER = "owuibuild-build"


@dataclass
class RootFs:
    """The image's root file system, read with debugfs (no mount, no root-only loop devices)."""

    device: str

    def run(self, request: str) -> str:
        proc = subprocess.run(
            ["debugfs", "-R", request, self.device], capture_output=True, text=True, timeout=120
        )
        return proc.stdout

    def exists(self, path: str) -> bool:
        proc = subprocess.run(
            ["debugfs", "-R", f"stat {path}", self.device],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return "File not found" not in proc.stderr and "Inode:" in proc.stdout

    def cat(self, path: str) -> str:
        return self.run(f"cat {path}")

    def ls(self, path: str) -> list[str]:
        names = re.findall(r"/(\d+)/(\d+)/(\d+)/(\d+)/([^/]*)/", self.run(f"ls -p {path}"))
        return [n[4] for n in names if n[4] not in (".", "..")]


@pytest.fixture(params=["shared", "instance-host"])
def baked(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"baked_{request.param.replace('-', '_')}")


@pytest.fixture
def rootfs(baked: Any, tmp_path: Path) -> Iterator[RootFs]:
    raw = tmp_path / "disk.raw"
    disk = baked.disk
    subprocess.run(
        ["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk), str(raw)],
        check=True,
        timeout=900,
    )
    table = subprocess.run(
        ["sfdisk", "--dump", str(raw)], capture_output=True, text=True, check=True
    ).stdout
    start = int(re.search(r"start=\s*(\d+)", table)[1])  # type: ignore[index]
    yield RootFs(f"{raw}?offset={start * 512}")
    raw.unlink(missing_ok=True)


def installed_packages(status: str) -> set[str]:
    found = set()
    for stanza in status.split("\n\n"):
        name = re.search(r"^Package: (\S+)$", stanza, re.M)
        if name and re.search(r"^Status: install ok installed$", stanza, re.M):
            found.add(name[1])
    return found


def test_baked_image(baked: Any, rootfs: RootFs) -> None:
    print(f"{'from cache' if baked.cached else 'baked'} in {baked.seconds:.0f} s: {baked.disk}")
    compiled = compile_blueprint(baked.blueprint, write_secrets=False)
    assert compiled.ok and compiled.plan is not None and compiled.secrets is not None
    plan = compiled.plan
    values, _ = store.read(baked.secrets_file)
    assert values == compiled.secrets.values
    image = next(i for i in images(plan) if i.name == baked.image)
    steps = install_steps(parts_for(plan, image.host, compiled.secrets))

    # The software: every package of the install steps, and the files they wrote.
    status = rootfs.cat("/var/lib/dpkg/status")
    missing = set(steps.packages) - installed_packages(status)
    assert not missing, f"packages not installed in the image: {sorted(missing)}"
    for f in steps.files:
        assert rootfs.exists(f.path), f"install file {f.path} missing"

    # Ollama and Qdrant, when their sections exist: the doubles' binaries, and the models.
    for name in ("ollama", "qdrant"):
        if name not in steps.sections:
            continue
        binary = importlib.import_module(f"owuibuild.hostconfig.{name}").BINARY
        assert rootfs.exists(binary), f"no {name} binary at {binary}"
        assert "TEST DOUBLE" in rootfs.cat(binary), f"{binary} is not the double from the mirror"
    if "ollama" in steps.sections:
        manifests = rootfs.ls(f"{BAKED_OLLAMA_MODELS}/manifests/registry.ollama.ai/library")
        for model in plan.ollama_models:
            assert model.split(":")[0] in manifests, f"model {model} not baked: {manifests}"

    # The Open WebUI image (here its test double), loaded from the mirror's archive into
    # Docker's image store on the root disk.
    if image.host.runs_docker:
        repositories = rootfs.cat("/var/lib/docker/image/overlay2/repositories.json")
        assert plan.openwebui_image in repositories, repositories[:2000]

    # PostgreSQL: no default cluster of the package's (it would start at every boot), an empty
    # cluster template for the first boot to copy; the default Redis server masked.
    if "postgres" in steps.sections:
        version = plan.fleet.shared.postgres.version
        assert not rootfs.exists(f"/etc/postgresql/{version}/main"), "a default cluster"
        assert rootfs.cat(f"{postgres.template_dir(version)}/PG_VERSION").strip() == str(version)
    if "redis" in steps.sections:
        assert "/dev/null" in rootfs.run("stat /etc/systemd/system/redis-server.service")
    # The distribution's nftables.service (`flush ruleset` at boot) masked on every host.
    assert "/dev/null" in rootfs.run("stat /etc/systemd/system/nftables.service")
    # The digest of the install steps it ran, which a first boot's seed compares with its own.
    assert rootfs.cat(INSTALLED_STAMP) == steps.digest + "\n"

    # Golden: cloud-init's package step (apt-get update at every first boot) is left out.
    golden_cfg = rootfs.cat("/etc/cloud/cloud.cfg.d/95-owuibuild-golden.cfg").replace("-", "_")
    assert "cloud_final_modules" in golden_cfg and "scripts_user" in golden_cfg, golden_cfg
    assert "package_update_upgrade_install" not in golden_cfg, golden_cfg

    # Sealed: no SSH host key, clean cloud-init, no build user, no seal script, and no timer
    # stamp of the bake's (a persistent timer would catch up at a host's first boot).
    assert not [n for n in rootfs.ls("/etc/ssh") if n.startswith("ssh_host_")]
    assert not [n for n in rootfs.ls("/var/lib/systemd/timers") if n.startswith("stamp-")]
    cloud = rootfs.ls("/var/lib/cloud")
    assert not {"instance", "instances", "seed", "data"} & set(cloud), cloud
    assert not [n for n in rootfs.ls("/var/log") if n.startswith("cloud-init")]
    assert rootfs.cat("/etc/machine-id").strip() in ("", "uninitialized")
    assert BUILD_USER not in rootfs.cat("/etc/passwd")
    assert not rootfs.exists(f"/home/{BUILD_USER}")
    assert not rootfs.exists("/etc/sudoers.d/90-cloud-init-users")
    assert not rootfs.exists("/tmp/owuibuild-seal.sh")

    # No secret of the blueprint anywhere on the disk (raw bytes, files and free space).
    patterns = rootfs.device.split("?")[0] + ".secrets"
    Path(patterns).write_text("\n".join(values.values()) + "\n")
    proc = subprocess.run(
        ["grep", "-a", "-c", "-F", "-f", patterns, rootfs.device.split("?")[0]],
        capture_output=True,
        text=True,
        timeout=900,
    )
    Path(patterns).unlink()
    assert proc.stdout.strip() == "0", "a secret value is on the image's disk"
    assert shutil.which("debugfs")
