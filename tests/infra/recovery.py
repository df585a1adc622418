"""The recovery figures the tests measure, kept for `make bench` (bench/recovery_bench.py):
how many of an instance's checks failed, and for how long, while the shared services went away
and came back. One JSON file in the cache, one entry per scenario (the latest run's)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def recovery_json() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "owuibuild"
    return Path(os.environ.get("OWUIBUILD_CACHE", default)) / "bench" / "recovery.json"


def record(scenario: str, *, failed: int, checks: int, window_s: float, **more: Any) -> None:
    """Keep ``scenario``'s figures (replacing its earlier ones), written whole or not at all."""
    path = recovery_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        data = {}
    data[scenario] = {
        "failed": failed,
        "checks": checks,
        "window_s": round(window_s, 2),
        "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **more,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".recovery-")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)
