"""Validators for the release-dependent steps: the package check that opens every seed's runcmd
(run for real with dpkg-query) and the script that loads the Open WebUI image from the mirror's
archive (shellcheck, and run against a stand-in `docker` and a local HTTP mirror)."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from conftest import Rendered, require_tool
from owuibuild.hostconfig import check_packages
from owuibuild.hostconfig import docker as docker_section

pytestmark = pytest.mark.validators

IMAGE = "registry.example/owui/open-webui:v0.12.4"


def test_package_check_passes_installed_and_names_missing_packages() -> None:
    require_tool("dpkg-query")
    ok = subprocess.run(list(check_packages(["dpkg", "coreutils"])), capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    missing = subprocess.run(
        list(check_packages(["dpkg", "owuibuild-no-such-package", "x'y z"])),
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 1
    assert "not installed: owuibuild-no-such-package x'y z;" in missing.stderr
    assert "bake the golden image again" in missing.stderr


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "mirror"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


BLUEPRINT = """\
apiVersion: owuibuild/v1
name: fleet
os: {{distro: debian-13}}
mirror: {mirror}
admin:
  user: ops
  ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITest ops@laptop]
  allow_from: [10.0.5.0/24]
network: {{cidr: 10.0.5.0/24, gateway: 10.0.5.1, dns: [10.0.5.1]}}
shared:
  host: {{name: shared, address: 10.0.5.10, memory_gb: 64, data_volume: {{label: owui-data}}}}
hosts:
  - {{name: web-a, address: 10.0.5.20, memory_gb: 64, data_volume: {{label: owui-data}}}}
openwebui: {{image: registry.example/owui/open-webui, archive_sha256: {sha256}}}
instances:
  - {{name: one, host: web-a, port: 3001}}
"""


def load_script(render_text: Callable[[str], Rendered], mirror_url: str, sha256: str) -> str:
    rendered = render_text(BLUEPRINT.format(mirror=mirror_url, sha256=sha256))
    doc = yaml.safe_load(rendered.files["hosts/web-a/user-data"])
    script = next(f for f in doc["write_files"] if f["path"] == docker_section.LOAD_IMAGE_SCRIPT)
    content: str = script["content"]
    return content


FAKE_DOCKER = """#!/bin/sh
# A stand-in `docker` for this test: records what it was asked and keeps one image "loaded".
echo "$*" >> "$FAKE_LOG"
case "$1 $2" in
"image inspect") test -f "$FAKE_STATE" && grep -qx "$3" "$FAKE_STATE" ;;
"load --input") tar -xOf "$3" ref >> "$FAKE_STATE" ;;
*) exit 0 ;;
esac
"""


@pytest.mark.parametrize("tamper", [False, True])
def test_image_load_script_checks_the_archive_and_loads_once(
    render_text: Callable[[str], Rendered],
    mirror: tuple[str, Path],
    tmp_path: Path,
    tamper: bool,
) -> None:
    require_tool("shellcheck", "curl", "sha256sum", "tar")
    url, root = mirror
    ref = tmp_path / "ref"
    ref.write_text(IMAGE + "\n")
    archive = root / "openwebui-v0.12.4.docker.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(tmp_path), "ref"], check=True)
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    script = tmp_path / "load.sh"
    script.write_text(load_script(render_text, url, sha256))
    lint = subprocess.run(["shellcheck", "--shell=sh", str(script)], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in (("docker", FAKE_DOCKER), ("systemctl", "#!/bin/sh\nexit 0\n")):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_LOG": str(tmp_path / "docker.log"),
        "FAKE_STATE": str(tmp_path / "images"),
        "no_proxy": "127.0.0.1",
    }
    if tamper:  # the mirror serves other bytes than the blueprint pinned
        archive.write_bytes(archive.read_bytes() + b"\0")
    first = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env)
    if tamper:
        assert first.returncode != 0
        assert "load" not in (tmp_path / "docker.log").read_text()
        return
    assert first.returncode == 0, first.stderr
    assert f"owuibuild: loaded {IMAGE}" in first.stdout
    again = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr
    assert f"owuibuild: image {IMAGE} is already present" in again.stdout
    loads = [
        ln for ln in (tmp_path / "docker.log").read_text().splitlines() if ln.startswith("load")
    ]
    assert len(loads) == 1, loads
