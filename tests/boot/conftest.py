"""Boot-tier fixtures: the local artifact mirror of test doubles, and a baked shared image.

``mirror``
    A session-wide :class:`doubles.mirror.Mirror` serving release-shaped tarballs of the
    Ollama and Qdrant TEST DOUBLES on 127.0.0.1 (guests reach it at 10.0.2.2:<port>).

``bake_blueprint(mirror)``
    The test fleet's blueprint text: a shared host and one Docker host with one instance,
    qemu builder, models baked, the doubles' checksums, ``mirror:`` pointing at the mirror.
    (Docker's apt repository cannot be reached here, so only the shared image is baked.)

``baked_shared`` / ``baked_instance_host``
    The golden images baked by the real ``owuibuild bake`` with Packer's qemu builder (TCG)
    from the cached Debian 13 base image (tests/infra/vm-image.sh), from one render of the
    bake blueprint. The instance-host image preloads the Open WebUI TEST DOUBLE image
    (tests/doubles/openwebui_standin.py), which the mirror serves as a checked ``docker save``
    archive. Cached under ``$OWUIBUILD_CACHE/baked/`` by a hash of the image's inputs: its
    rendered Packer files (with the mirror's port taken out), the base image, the doubles and
    ``owuibuild bake`` itself. A cache hit skips Packer; a miss (or OWUIBUILD_BAKE_REBUILD=1)
    bakes again. The blueprint and its secrets file are kept next to each image, so tests can
    check that none of those secrets is in it.

Other boot tests may add fixtures here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

TESTS = Path(__file__).resolve().parents[1]
for extra in (TESTS, TESTS / "infra"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from doubles.mirror import Mirror, release_files  # noqa: E402
from fleet_blueprint import REAL_OPENWEBUI, STANDIN_IMAGE, STANDIN_VERSION  # noqa: E402


def _root_conftest() -> ModuleType:
    """tests/conftest.py under a name of its own: pytest keeps only the conftest it imported
    last as the module ``conftest``, so test modules that ``from conftest import ...`` may get
    this file; it re-exports the root's helpers for them."""
    spec = importlib.util.spec_from_file_location("owuibuild_tests_conftest", TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_root = _root_conftest()
unavailable = _root.unavailable
require_tool = _root.require_tool
Rendered = _root.Rendered
compile_path = _root.compile_path
REPO, BLUEPRINTS, EXAMPLES = _root.REPO, _root.BLUEPRINTS, _root.EXAMPLES

OLLAMA_VERSION = "0.12.4"  # not in owuibuild's pinned table: the blueprint supplies the sha256
QDRANT_VERSION = "1.15.4"
BAKE_TOOLS = (
    "packer",
    "qemu-system-x86_64",
    "qemu-img",
    "ssh-keygen",
    "xorriso",
    "mmdebstrap",
    "debugfs",
)


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "owuibuild"
    return Path(os.environ.get("OWUIBUILD_CACHE", default))


@pytest.fixture(scope="session")
def mirror() -> Iterator[Mirror]:
    with Mirror(release_files(OLLAMA_VERSION, QDRANT_VERSION)) as m:
        yield m


def serve_standin(mirror: Mirror) -> str:
    """Put the Open WebUI test double's ``docker save`` archive on the mirror (the real Open
    WebUI image's under OWUIBUILD_BOOT_REAL_OPENWEBUI=1); its sha256."""
    from docker_engine import docker_unavailable_reason, openwebui_standin_archive
    from owuibuild.artifacts import openwebui_archive_filename

    name = openwebui_archive_filename(STANDIN_VERSION)
    if name not in mirror.files:
        reason = docker_unavailable_reason()
        if reason:
            unavailable(f"building the Open WebUI test double needs Docker: {reason}")
        ref = f"{STANDIN_IMAGE}:v{STANDIN_VERSION}"
        if REAL_OPENWEBUI:
            from docker_engine import openwebui_real_archive

            archive = openwebui_real_archive(ref, STANDIN_VERSION)
        else:
            archive = openwebui_standin_archive(ref)
        mirror.files[name] = archive.read_bytes()
    return mirror.sha256(name)


@pytest.fixture(scope="session")
def openwebui_standin(mirror: Mirror) -> str:
    """The Open WebUI test double's archive, served by the mirror; its sha256."""
    return serve_standin(mirror)


def bake_blueprint(mirror: Mirror) -> str:
    from owuibuild.artifacts import ollama_filename, qdrant_filename

    return f"""apiVersion: owuibuild/v1
name: baketest
os: {{distro: debian-13, timezone: UTC}}
mirror: {mirror.guest_url}
admin:
  user: ops
  ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOwuibuildExampleKeyReplaceWithYourOwn00000 ops@laptop"]
  allow_from: [10.0.2.0/24]
network: {{cidr: 10.0.2.0/24, gateway: 10.0.2.2, dns: [10.0.2.3]}}
shared:
  host: {{name: shared, address: 10.0.2.15}}
  ollama:
    version: "{OLLAMA_VERSION}"
    sha256: {mirror.sha256(ollama_filename(OLLAMA_VERSION))}
    models: [tinyllama]
  qdrant:
    version: "{QDRANT_VERSION}"
    sha256: {mirror.sha256(qdrant_filename(QDRANT_VERSION))}
hosts:
  - {{name: web, address: 10.0.2.16}}
openwebui:
  image: {STANDIN_IMAGE}
  version: "{STANDIN_VERSION}"
  archive_sha256: {serve_standin(mirror)}
instances:
  - {{name: one, host: web, port: 3000}}
images: {{builders: [qemu], bake_models: true}}
"""


@dataclass(frozen=True)
class BakedImage:
    disk: Path  # qcow2, in the cache: never write to it (use an overlay)
    blueprint: Path  # the blueprint it was baked from, with its secrets file next to it
    secrets_file: Path
    base: object  # tests/infra/vm.py BaseImage (kernel and initrd to boot it with)
    cached: bool
    seconds: float  # how long getting it took in this run


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


def _var_file(path: Path, base: object) -> None:
    disk, kernel, initrd = base.disk, base.kernel, base.initrd  # type: ignore[attr-defined]
    digest = hashlib.sha256(Path(disk).read_bytes()).hexdigest()
    path.write_text(
        f'qemu_base_image_url      = "{disk}"\n'
        f'qemu_base_image_checksum = "sha256:{digest}"\n'
        'qemu_accelerator         = "tcg"\n'
        'qemu_disk_size           = "8192M"\n'
        f'qemu_output_directory    = "{path.parent / "images"}"\n'
        "qemu_extra_args = [\n"
        f'  ["-kernel", "{kernel}"],\n'
        f'  ["-initrd", "{initrd}"],\n'
        '  ["-append", "root=/dev/vda1 rw console=ttyS0,115200n8"],\n'
        '  ["-cpu", "max"],\n'
        '  ["-smp", "2"],\n'
        f'  ["-serial", "file:{path.parent / "console.log"}"],\n'
        "]\n"
    )


@pytest.fixture(scope="session")
def baked_shared(mirror: Mirror) -> BakedImage:
    return bake(mirror, "shared")


@pytest.fixture(scope="session")
def baked_instance_host(mirror: Mirror) -> BakedImage:
    return bake(mirror, "instance-host")


def bake(mirror: Mirror, image: str) -> BakedImage:
    """The golden ``image`` (shared | instance-host) of the bake blueprint, from the cache or
    baked now with the real ``owuibuild bake``."""
    missing = [t for t in BAKE_TOOLS if shutil.which(t) is None]
    if missing:
        unavailable(f"baking needs {', '.join(missing)} (make system-deps installs them)")
    from vm import ensure_base_image

    start = time.monotonic()
    base = ensure_base_image()
    work = Path(tempfile.mkdtemp(prefix="owuibuild-bake-test-"))
    blueprint = work / "baketest.yml"
    blueprint.write_text(bake_blueprint(mirror))
    render = subprocess.run(
        [sys.executable, "-m", "owuibuild.cli", "render", str(blueprint), "-o", str(work / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert render.returncode == 0, render.stderr
    key = _hash_inputs(work / "out" / "packer", image, mirror.guest_url, base.disk)
    cached = cache_root() / "baked" / f"{image}-{key}"
    if (cached / "disk.qcow2").is_file() and os.environ.get("OWUIBUILD_BAKE_REBUILD") != "1":
        shutil.rmtree(work, ignore_errors=True)
        return BakedImage(
            cached / "disk.qcow2",
            cached / "baketest.yml",
            cached / "baketest.secrets.yml",
            base,
            True,
            time.monotonic() - start,
        )

    var_file = work / "site.pkrvars.hcl"
    _var_file(var_file, base)
    log = work / "bake.log"
    with log.open("wb") as out:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "owuibuild.cli",
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
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=work,
            timeout=3600,
        )
    if proc.returncode != 0:
        console = work / "console.log"
        tail = console.read_text(errors="replace")[-3000:] if console.exists() else ""
        pytest.fail(
            f"owuibuild bake exited {proc.returncode}:\n"
            f"{log.read_text(errors='replace')[-6000:]}\n--- console ---\n{tail}"
        )
    built = work / "images" / image / f"baketest-{image}.qcow2"
    assert built.is_file(), log.read_text(errors="replace")[-3000:]
    staging = cached.with_name(cached.name + f".tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    shutil.move(str(built), staging / "disk.qcow2")
    for name in ("baketest.yml", "baketest.secrets.yml"):
        shutil.copy2(work / name, staging / name)
    shutil.copy2(log, staging / "bake.log")
    shutil.rmtree(cached, ignore_errors=True)
    staging.rename(cached)
    shutil.rmtree(work, ignore_errors=True)
    return BakedImage(
        cached / "disk.qcow2",
        cached / "baketest.yml",
        cached / "baketest.secrets.yml",
        base,
        False,
        time.monotonic() - start,
    )
