"""The Open WebUI TEST DOUBLE of the QEMU guests (tests/doubles/openwebui_standin.py), run the
way its image runs it (beside a copy of owuibuild's probes) against services that do not
answer: /health says 503 and why, and SIGTERM ends it at once with status 0, as it ends Open
WebUI (the container's first process would otherwise ignore it until Docker's kill)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from infra.docker_engine import STANDIN_COMMAND
from infra.vm import free_port

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_standin_reports_failing_checks_and_stops_on_sigterm(tmp_path: Path) -> None:
    shutil.copy(REPO / "tests" / "doubles" / "openwebui_standin.py", tmp_path)
    shutil.copy(REPO / "builder" / "probes.py", tmp_path)
    port, dead = free_port(), free_port()  # nothing listens on `dead`
    env = {
        "PATH": os.environ.get("PATH", ""),
        "OWUIBUILD_STANDIN_PORT": str(port),
        "DATABASE_URL": f"postgresql://alpha:s3cret-pw@127.0.0.1:{dead}/alpha",
        "REDIS_URL": f"redis://:s3cret-pw@127.0.0.1:{dead}/0",
        "QDRANT_URI": f"http://127.0.0.1:{dead}",
        "QDRANT_API_KEY": "s3cret-key",
        "OLLAMA_BASE_URL": f"http://127.0.0.1:{dead}",
    }
    proc = subprocess.Popen(
        [sys.executable, *STANDIN_COMMAND[1:]],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, health = _get(f"http://127.0.0.1:{port}/health")
                _, checks = _get(f"http://127.0.0.1:{port}/checks")
            except (urllib.error.URLError, ConnectionError):
                status, checks = 0, {}
            if status and len(checks) == 4:
                break
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the double never answered with every check"
            time.sleep(0.1)
        assert status == 503 and health == {"status": False, "test_double": True}
        assert set(checks) == {"postgres", "redis", "qdrant", "ollama"}
        assert not any(c["ok"] for c in checks.values())  # type: ignore[index]
        assert "s3cret" not in json.dumps(checks)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=5)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
