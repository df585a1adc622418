"""The boot tier's HTTPS probes, on this machine against local servers: the in-guest probe
script (tests/boot/fleet_vm.py GUEST_PROBE) speaks HTTPS verified with the fleet CA, refuses
a certificate the system's CAs do not vouch for, and sends POSTs with their bodies; the probe
through a QEMU forward (tests/boot/fleet_blueprint.py ``https``) verifies the certificate for
the guest's own address, not for 127.0.0.1; and the listener check names each listener's unit."""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from test_probes import make_pki

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
for extra in (REPO / "tests" / "boot", REPO / "tests" / "infra"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import fleet_blueprint  # noqa: E402
import fleet_vm  # noqa: E402


@contextmanager
def server(tls: ssl.SSLContext | None) -> Iterator[tuple[int, list[str]]]:
    """An Ollama-like server on 127.0.0.1 (HTTPS with ``tls``): GET /api/tags 200, POST
    /api/pull 403; yields its port and what it got ("METHOD /path body")."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def answer(self, status: int) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            seen.append(f"{self.command} {self.path} {self.rfile.read(length).decode()}".strip())
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def do_GET(self) -> None:
            self.answer(200 if self.path == "/api/tags" else 404)

        def do_POST(self) -> None:
            self.answer(403)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    httpd.handle_error = lambda request, address: None  # type: ignore[method-assign]
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1], seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def run_guest_probe(where: Path, request: dict[str, Any]) -> dict[str, Any]:
    """GUEST_PROBE as a guest runs it, beside a copy of owuibuild's probes in ``where``."""
    shutil.copy(REPO / "builder" / "probes.py", where / "probes.py")
    script = fleet_vm.GUEST_PROBE.replace(
        'sys.path.insert(0, "/tmp")', f"sys.path.insert(0, {str(where)!r})"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def test_guest_probe_speaks_https_with_the_fleet_ca(tmp_path: Path) -> None:
    pki = make_pki()
    ca_file, _, _ = pki.write(tmp_path / "pki")
    with (
        server(pki.server_context(tmp_path / "pki")) as (tls_port, seen),
        server(None) as (
            plain_port,
            plain_seen,
        ),
    ):
        host = "127.0.0.1"
        body = json.dumps({"model": "tinyllama"})
        result = run_guest_probe(
            tmp_path,
            {
                "cafile": str(ca_file),
                "http": {
                    "fleet": fleet_vm.web(host, tls_port, "/api/tags"),
                    "system": fleet_vm.web(host, tls_port, "/api/tags", tls="system"),
                    "plain-to-tls": fleet_vm.web(host, tls_port, "/api/tags", tls="plain"),
                    "pull": fleet_vm.web(host, tls_port, "/api/pull", method="POST", body=body),
                    "plain": fleet_vm.web(host, plain_port, "/api/tags", tls="plain"),
                    "tls-to-plain": fleet_vm.web(host, plain_port, "/api/tags"),
                },
            },
        )
    assert result["fleet"] == 200
    assert result["system"] == "certificate-refused"
    assert not isinstance(result["plain-to-tls"], int), result
    assert result["pull"] == 403
    assert result["plain"] == 200
    assert result["tls-to-plain"] == "SSLError"
    assert seen == ["GET /api/tags", f"POST /api/pull {body}"]
    assert plain_seen == ["GET /api/tags"]


def test_https_through_a_forward_verifies_the_guests_own_name(tmp_path: Path) -> None:
    pki = make_pki(names=("10.0.2.15",))
    ca_file, _, _ = pki.write(tmp_path / "pki")
    with server(pki.server_context(tmp_path / "pki")) as (port, seen):
        vm = SimpleNamespace(host_port=lambda guest_port: port)

        def fleet(address: str) -> Any:
            return SimpleNamespace(
                shared_address=address,
                tls=lambda: fleet_blueprint.probes.tls_context(cafile=str(ca_file)),
            )

        answer = fleet_blueprint.https(vm, fleet("10.0.2.15"), 11434, "/api/tags")
        assert answer.status == 200
        pull = fleet_blueprint.https(
            vm, fleet("10.0.2.15"), 11434, "/api/pull", method="POST", body=b'{"model":"x"}'
        )
        assert pull.status == 403
        with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
            fleet_blueprint.https(vm, fleet("10.0.2.16"), 11434, "/api/tags")
    assert seen == ["GET /api/tags", 'POST /api/pull {"model":"x"}']


class FakeGuest:
    """Answers the listener check's commands as a shared host would."""

    SS = (
        'LISTEN 0 5 127.0.0.1:11434 0.0.0.0:* users:(("python3",pid=812,fd=3))\n'
        'LISTEN 0 4096 10.0.5.24:11434 0.0.0.0:* users:(("caddy",pid=990,fd=7))\n'
    )
    CGROUPS: ClassVar[dict[str, str]] = {
        "812": "0::/system.slice/ollama.service\n",
        "990": "0::/system.slice/owui-ollama-tls.service\n",
    }

    def ssh(self, command: str, **kwargs: Any) -> SimpleNamespace:
        if command.startswith("sudo ss "):
            assert "'sport = :11434'" in command
            return SimpleNamespace(stdout=self.SS)
        pid = command.split("/proc/")[1].split("/")[0]
        return SimpleNamespace(stdout=self.CGROUPS[pid])


def test_listeners_are_named_by_their_units() -> None:
    assert fleet_blueprint.tcp_listeners(FakeGuest(), 11434) == {
        "127.0.0.1:11434": "ollama.service",
        "10.0.5.24:11434": "owui-ollama-tls.service",
    }
