"""Docker helpers for the test suite.

The shell scripts beside this file do the work; these functions give pytest a
Python face for them:

- ``docker_unavailable_reason()`` says why Docker tests cannot run (None when
  they can), so that a fixture can ``pytest.skip(reason)``.
- ``ensure_base_image()`` and ``ensure_openwebui_image(ref, version)`` build the
  local images when they are missing or out of date (a no-op otherwise).

Importing this module sets ``DOCKER_BUILDKIT=0`` in the environment (unless it
is set already): the Debian engine has no buildx plugin, and a newer docker
client on PATH refuses to build without it unless the legacy builder is chosen.
Every docker and ``docker compose`` command the tests run inherits it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

INFRA_DIR = Path(__file__).resolve().parent
BASE_IMAGE = "local/debian:bookworm"

os.environ.setdefault("DOCKER_BUILDKIT", "0")


def cache_dir() -> Path:
    """The cache for heavy test artifacts ($OWUIBUILD_CACHE)."""
    if os.environ.get("OWUIBUILD_CACHE"):
        return Path(os.environ["OWUIBUILD_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "owuibuild"


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )


def docker_unavailable_reason() -> str | None:
    """None when `docker info` works and `docker compose` is Compose v2, else why not."""
    if shutil.which("docker") is None:
        return "docker client not found (run tests/infra/system-deps.sh)"
    try:
        info = _run(["docker", "info"], timeout=60)
        if info.returncode != 0:
            return f"docker daemon not reachable (run tests/infra/docker-up.sh): {_tail(info.stdout, 3)}"
        compose = _run(["docker", "compose", "version"], timeout=60)
    except subprocess.TimeoutExpired as exc:
        return f"{' '.join(exc.cmd)} timed out"
    if compose.returncode != 0:
        return f"docker compose plugin missing (run tests/infra/docker-up.sh): {_tail(compose.stdout, 3)}"
    if " v2." not in compose.stdout:
        return f"docker compose is not Compose v2: {compose.stdout.strip()}"
    return None


def engine_major() -> int:
    """The major version of the Docker Engine the tests talk to."""
    proc = _run(["docker", "version", "--format", "{{.Server.Version}}"], timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"docker version failed: {_tail(proc.stdout, 3)}")
    return int(proc.stdout.strip().split(".", 1)[0])


def ensure_base_image(ref: str = BASE_IMAGE) -> None:
    """Build the local Debian base image unless it exists."""
    _script("base-image.sh", ref, timeout=900)


def ensure_openwebui_image(ref: str, version: str) -> None:
    """Build the Open WebUI image `ref` for Open WebUI `version` unless it is up to date.

    A cold build takes several minutes; a warm check takes well under a second.
    """
    _script("openwebui-image.sh", ref, version, timeout=1800)


def _script(name: str, *args: str, timeout: float) -> None:
    cmd = ["bash", str(INFRA_DIR / name), *args]
    try:
        proc = _run(cmd, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = (
            exc.stdout.decode(errors="replace")
            if isinstance(exc.stdout, bytes)
            else (exc.stdout or "")
        )
        raise RuntimeError(f"{name} timed out after {timeout:.0f}s:\n{_tail(out)}") from exc
    if proc.returncode != 0:
        raise RuntimeError(
            f"{name} {' '.join(args)} failed (exit {proc.returncode}):\n{_tail(proc.stdout)}"
        )


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


# How the double's image starts it (and how tests/unit/test_standin_double.py runs it): imported,
# so that its own code loads from the file compiled in the image too.
STANDIN_COMMAND = ("python3", "-c", "import openwebui_standin; openwebui_standin.main()")

STANDIN_DOCKERFILE = """\
FROM {base}
RUN apt-get update -q && apt-get install -y -q --no-install-recommends python3 curl \\
 && rm -rf /var/lib/apt/lists/*
COPY probes.py openwebui_standin.py /app/
WORKDIR /app
# Compiled once here, not at every start in the guest.
RUN python3 -m compileall -q /app
EXPOSE 8080
CMD {command}
"""


def openwebui_standin_archive(ref: str) -> Path:
    """A ``docker save`` archive of the Open WebUI TEST DOUBLE (tests/doubles/
    openwebui_standin.py) tagged ``ref``, for loading into QEMU guests.

    Cached under ``$OWUIBUILD_CACHE/standin/`` by a hash of its inputs (the double, owuibuild's
    probes, the Dockerfile and ``ref``); a miss builds it from the local base image.
    """
    import hashlib
    import tempfile

    tests = INFRA_DIR.parent
    sources = {
        "openwebui_standin.py": tests / "doubles" / "openwebui_standin.py",
        "probes.py": tests.parent / "builder" / "probes.py",
    }
    dockerfile = STANDIN_DOCKERFILE.format(
        base=BASE_IMAGE, command=json.dumps(list(STANDIN_COMMAND))
    )
    digest = hashlib.sha256(dockerfile.encode() + ref.encode())
    for name, path in sorted(sources.items()):
        digest.update(name.encode() + b"\0" + path.read_bytes())
    archive = cache_dir() / "standin" / f"openwebui-double-{digest.hexdigest()[:16]}.tar.gz"
    if archive.is_file():
        return archive
    ensure_base_image()
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="owuibuild-standin-") as tmp:
        context = Path(tmp)
        for name, path in sources.items():
            shutil.copy(path, context / name)
        (context / "Dockerfile").write_text(dockerfile)
        build = _run(["docker", "build", "-q", "-t", ref, str(context)], timeout=900)
        if build.returncode != 0:
            raise RuntimeError(
                f"building the Open WebUI test double failed:\n{_tail(build.stdout)}"
            )
        save_gzipped(ref, archive, timeout=600)
    return archive


def openwebui_real_archive(ref: str, version: str) -> Path:
    """A gzipped ``docker save`` archive of the REAL Open WebUI image (the containers tier's,
    built from PyPI) tagged ``ref``, for the opt-in real-image boot (OWUIBUILD_BOOT_REAL_OPENWEBUI=1).
    Cached by the image's id."""
    built = f"ghcr.io/open-webui/open-webui:v{version}"
    ensure_openwebui_image(built, version)
    image_id = _run(["docker", "image", "inspect", "--format", "{{.Id}}", built], 60).stdout.strip()
    archive = cache_dir() / "standin" / f"openwebui-real-{image_id.split(':')[-1][:16]}.tar.gz"
    if archive.is_file():
        return archive
    tag = _run(["docker", "tag", built, ref], timeout=60)
    if tag.returncode != 0:
        raise RuntimeError(f"docker tag {built} {ref} failed:\n{_tail(tag.stdout)}")
    archive.parent.mkdir(parents=True, exist_ok=True)
    save_gzipped(ref, archive, timeout=3600)
    return archive


def save_gzipped(ref: str, archive: Path, timeout: float) -> None:
    """``docker save ref | gzip`` into ``archive``, atomically (`docker load` reads gzip)."""
    partial = archive.with_name(f"{archive.name}.tmp-{os.getpid()}")
    with partial.open("wb") as out:
        save = subprocess.run(
            f"docker save {shlex.quote(ref)} | gzip -1",
            shell=True,
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=timeout,
            check=False,
        )
    if save.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"docker save {ref} failed:\n{save.stderr.decode()[-2000:]}")
    partial.rename(archive)
