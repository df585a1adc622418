"""Golden images for the boot tier, baked by the real ``owuibuild bake`` (Packer's qemu builder,
TCG) from the cached Debian base image (tests/infra/vm-image.sh), and cached.

``bake(mirror, image, blueprint_text, suite)`` returns the golden ``image`` (shared |
instance-host) of that blueprint. It is cached under ``$OWUIBUILD_CACHE/baked/`` by a hash of its
inputs: its rendered Packer files (with the mirror's port taken out, so any run's mirror hits),
the base image, the test doubles and ``owuibuild bake`` itself. A hit skips Packer; a miss (or
OWUIBUILD_BAKE_REBUILD=1) bakes again. Bakes hold a lock, so a test that needs an image while
another process bakes it waits and then takes it from the cache.

Run as a script (``python tests/boot/golden.py``), it bakes the two-VM fleet's images ahead of
the tests: .ci/run's prewarm does that in the background while the pure tiers run.

The blueprint and its secrets file are kept next to each image, so tests can check that none of
those secrets is in it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
REPO = TESTS.parent
for extra in (TESTS, TESTS / "infra", HERE):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

BAKE_TOOLS = (
    "packer",
    "qemu-system-x86_64",
    "qemu-img",
    "ssh-keygen",
    "xorriso",
    "mmdebstrap",
    "debugfs",
)
BLUEPRINT_NAME = "baketest"
IMAGES = ("shared", "instance-host")


class BakeFailed(RuntimeError):
    """``owuibuild bake`` failed; the message carries its log tail and the console's."""


@dataclass(frozen=True)
class BakedImage:
    image: str  # shared | instance-host
    disk: Path  # qcow2, in the cache: never write to it (use an overlay)
    blueprint: Path  # the blueprint it was baked from, with its secrets file next to it
    secrets_file: Path
    base: Any  # tests/infra/vm.py BaseImage (kernel and initrd to boot it with)
    cached: bool
    seconds: float  # how long getting it took in this run

    def boot_image(self) -> Any:
        """A BaseImage that boots this disk with the base image's kernel and initrd."""
        from vm import BaseImage

        b = self.base
        return BaseImage(disk=self.disk, kernel=b.kernel, initrd=b.initrd, root=b.root)


def missing_bake_tools() -> list[str]:
    return [t for t in BAKE_TOOLS if shutil.which(t) is None]


def _hash_inputs(packer_dir: Path, image: str, mirror_url: str, base_disk: Path) -> str:
    h = hashlib.sha256()
    inputs = (
        "variables.pkr.hcl",
        f"{image}.pkr.hcl",
        f"scripts/{image}-install.sh",
        "scripts/seal.sh",
    )
    for name in inputs:
        h.update(name.encode() + b"\0")
        h.update((packer_dir / name).read_bytes().replace(mirror_url.encode(), b"MIRROR") + b"\0")
    # How Packer is called is an input too: a change to it must run a real bake.
    h.update((REPO / "builder" / "bake.py").read_bytes())
    st = base_disk.stat()
    h.update(f"{base_disk.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    for double in sorted((TESTS / "doubles").glob("*.py")):
        h.update(double.read_bytes())
    return h.hexdigest()[:16]


def _var_file(path: Path, base: Any) -> None:
    digest = hashlib.sha256(Path(base.disk).read_bytes()).hexdigest()
    path.write_text(
        f'qemu_base_image_url      = "{base.disk}"\n'
        f'qemu_base_image_checksum = "sha256:{digest}"\n'
        'qemu_accelerator         = "tcg"\n'
        f'qemu_disk_size           = "{disk_size()}"\n'
        f'qemu_output_directory    = "{path.parent / "images"}"\n'
        "qemu_extra_args = [\n"
        f'  ["-kernel", "{base.kernel}"],\n'
        f'  ["-initrd", "{base.initrd}"],\n'
        '  ["-append", "root=/dev/vda1 rw console=ttyS0,115200n8"],\n'
        '  ["-cpu", "max"],\n'
        '  ["-smp", "2"],\n'
        f'  ["-serial", "file:{path.parent / "console.log"}"],\n'
        "]\n"
    )


def disk_size() -> str:
    """The golden disk: the real Open WebUI image (OWUIBUILD_BOOT_REAL_OPENWEBUI=1, about 3 GB
    unpacked, downloaded as a 1 GB archive first) does not fit beside Debian in 8 GiB."""
    from fleet_blueprint import REAL_OPENWEBUI

    return "16384M" if REAL_OPENWEBUI else "8192M"


def _cli(*args: str, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
    return subprocess.run([sys.executable, "-m", "owuibuild.cli", *args], **kwargs)


def bake(mirror: Any, image: str, blueprint_text: str, suite: str) -> BakedImage:
    """The golden ``image`` of ``blueprint_text``, from the cache or baked now."""
    from fleet_blueprint import cache_root
    from vm import ensure_base_image

    start = time.monotonic()
    base = ensure_base_image(suite)
    work = Path(tempfile.mkdtemp(prefix=f"owuibuild-bake-{image}-"))
    try:
        blueprint = work / f"{BLUEPRINT_NAME}.yml"
        blueprint.write_text(blueprint_text)
        render = _cli(
            "render", str(blueprint), "-o", str(work / "out"), capture_output=True, text=True
        )
        if render.returncode != 0:
            raise BakeFailed(f"owuibuild render failed:\n{render.stderr}")
        key = _hash_inputs(work / "out" / "packer", image, mirror.guest_url, base.disk)
        cached = cache_root() / "baked" / f"{image}-{suite}-{key}"
        cached.parent.mkdir(parents=True, exist_ok=True)
        with cached.with_name(f".{cached.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be baking this very image
            hit = (cached / "disk.qcow2").is_file()
            if not hit or os.environ.get("OWUIBUILD_BAKE_REBUILD") == "1":
                _bake_into(cached, work, blueprint, image, base)
        return BakedImage(
            image,
            cached / "disk.qcow2",
            cached / f"{BLUEPRINT_NAME}.yml",
            cached / f"{BLUEPRINT_NAME}.secrets.yml",
            base,
            hit,
            time.monotonic() - start,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bake_into(cached: Path, work: Path, blueprint: Path, image: str, base: Any) -> None:
    var_file = work / "site.pkrvars.hcl"
    _var_file(var_file, base)
    log = work / "bake.log"
    with log.open("wb") as out:
        proc = _cli(
            "bake",
            str(blueprint),
            "--image",
            image,
            "--var-file",
            str(var_file),
            "-o",
            str(work / "out"),
            "--packer",
            shutil.which("packer") or "packer",
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=work,
            timeout=3600,
        )
    if proc.returncode != 0:
        console = work / "console.log"
        tail = console.read_text(errors="replace")[-3000:] if console.exists() else ""
        raise BakeFailed(
            f"owuibuild bake --image {image} exited {proc.returncode}:\n"
            f"{log.read_text(errors='replace')[-6000:]}\n--- console ---\n{tail}"
        )
    found = sorted((work / "images" / image).glob(f"*-{image}.qcow2"))  # <fleet name>-<image>
    if len(found) != 1:
        raise BakeFailed(f"no image in {work / 'images' / image}:\n{log.read_text()[-3000:]}")
    built = found[0]
    staging = cached.with_name(cached.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.move(str(built), staging / "disk.qcow2")
    for name in (f"{BLUEPRINT_NAME}.yml", f"{BLUEPRINT_NAME}.secrets.yml"):
        shutil.copy2(work / name, staging / name)
    shutil.copy2(log, staging / "bake.log")
    shutil.rmtree(cached, ignore_errors=True)
    staging.rename(cached)


def start_mirror() -> Any:
    """The boot tier's mirror of release-shaped test-double tarballs (not yet started)."""
    from doubles.mirror import Mirror, release_files
    from fleet_blueprint import OLLAMA_VERSION, QDRANT_VERSION

    return Mirror(release_files(OLLAMA_VERSION, QDRANT_VERSION))


def serve_standin(mirror: Any) -> str:
    """Put the Open WebUI test double's ``docker save`` archive on the mirror (the real Open
    WebUI image's under OWUIBUILD_BOOT_REAL_OPENWEBUI=1); its sha256. Needs Docker (the caller
    checks docker_engine.docker_unavailable_reason() first)."""
    from docker_engine import openwebui_real_archive, openwebui_standin_archive
    from fleet_blueprint import REAL_OPENWEBUI, STANDIN_IMAGE, STANDIN_VERSION
    from owuibuild.artifacts import openwebui_archive_filename

    name = openwebui_archive_filename(STANDIN_VERSION)
    if name not in mirror.files:
        ref = f"{STANDIN_IMAGE}:v{STANDIN_VERSION}"
        archive = (
            openwebui_real_archive(ref, STANDIN_VERSION)
            if REAL_OPENWEBUI
            else openwebui_standin_archive(ref)
        )
        mirror.files[name] = archive.read_bytes()
    return str(mirror.sha256(name))


def main() -> int:
    """Bake the two-VM fleet's golden images (tests/boot/fleet_blueprint.py) into the cache."""
    from fleet_blueprint import FLEET_SUITE, fleet_text

    missing = missing_bake_tools()
    if missing:
        print(f"golden: not baking, missing {', '.join(missing)}", file=sys.stderr)
        return 1
    from concurrent.futures import ThreadPoolExecutor

    with start_mirror() as mirror:
        text = fleet_text(mirror, serve_standin(mirror))
        # Side by side: each bake is mostly a guest waiting on its package downloads.
        with ThreadPoolExecutor(max_workers=2) as pool:
            jobs = {i: pool.submit(bake, mirror, i, text, FLEET_SUITE) for i in IMAGES}
            failed = 0
            for image, job in jobs.items():
                try:
                    baked = job.result()
                except BakeFailed as exc:
                    print(f"golden: {image} ({FLEET_SUITE}) FAILED:\n{exc}", file=sys.stderr)
                    failed = 1
                    continue
                state = "cached" if baked.cached else f"baked in {baked.seconds:.0f} s"
                print(f"golden: {image} ({FLEET_SUITE}) {state}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
