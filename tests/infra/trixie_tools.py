"""Debian 13 (trixie) tools for the tests: a cached root filesystem with cloud-init 25.1 and
PostgreSQL 17, built by trixie-tools.sh beside this file.

- ``trixie_tools(docker_image=False)`` builds the tree (once; keyed by its recipe) and returns
  its KEY=VALUE facts: OWUIBUILD_TRIXIE_ROOT (the tree, for chroot), OWUIBUILD_TRIXIE_RECIPE
  and, with ``docker_image``, OWUIBUILD_TRIXIE_IMAGE (the same tree imported into Docker).
- ``unavailable_reason(docker_image)`` says why it cannot be had here (None when it can), so a
  fixture can hand that to conftest's ``unavailable``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "trixie-tools.sh"
BUILD_TIMEOUT = 1800


def unavailable_reason(docker_image: bool = False) -> str | None:
    if os.geteuid() != 0:
        return "building the trixie root filesystem needs root (mmdebstrap root mode, chroot)"
    for tool in ("mmdebstrap", "chroot", "flock"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make system-deps installs it)"
    if docker_image and shutil.which("docker") is None:
        return "docker is not installed (make system-deps installs it)"
    return None


def trixie_tools(docker_image: bool = False) -> dict[str, str]:
    """Build (or find in the cache) the trixie tools tree; raise RuntimeError on failure."""
    args = ["bash", str(SCRIPT), *(["--docker-image"] if docker_image else [])]
    try:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"{SCRIPT.name} timed out after {BUILD_TIMEOUT} s") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-30:])
        raise RuntimeError(f"{SCRIPT.name} failed (exit {proc.returncode}):\n{tail}")
    facts = dict(
        line.split("=", 1) for line in proc.stdout.splitlines() if line.startswith("OWUIBUILD_")
    )
    if not Path(facts.get("OWUIBUILD_TRIXIE_ROOT", ""), "usr/bin/python3").exists():
        raise RuntimeError(f"{SCRIPT.name} printed no usable root: {proc.stdout!r}")
    return facts
