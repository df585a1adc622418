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

import os
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
