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
from conftest import Rendered, require_tool
from owuibuild.hostconfig import INSTALLED_STAMP, check_packages, run_install
from owuibuild.hostconfig import docker as docker_section
from owuibuild.plan import SCRIPT_DIR

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


def test_install_step_runs_once_per_root_disk_and_records_what_it_ran(tmp_path: Path) -> None:
    """The seed's install step, run by sh with its stamp moved under tmp_path: it runs every
    command and records the digest; the same digest again runs nothing; another digest runs
    them again; a failing command stops it and records nothing."""
    require_tool("sh")
    log = tmp_path / "ran"
    stamp = tmp_path / "lib" / "installed"

    def step(digest: str, fail: bool = False) -> subprocess.CompletedProcess[str]:
        commands = [("sh", "-c", f"echo one >>{log}"), ("sh", "-c", "exit 3" if fail else ":")]
        commands.append(("sh", "-c", f"echo two >>{log}"))
        argv = list(run_install(digest, commands))
        argv[2] = (
            argv[2].replace(INSTALLED_STAMP, str(stamp)).replace(SCRIPT_DIR, str(stamp.parent))
        )
        assert INSTALLED_STAMP not in argv[2]
        return subprocess.run(argv, capture_output=True, text=True)

    first = step("a" * 64)
    assert first.returncode == 0, first.stderr
    assert log.read_text() == "one\ntwo\n"
    assert stamp.read_text() == "a" * 64 + "\n"

    again = step("a" * 64)
    assert again.returncode == 0, again.stderr
    assert "ran these install steps already" in again.stdout
    assert log.read_text() == "one\ntwo\n"

    other = step("b" * 64)
    assert other.returncode == 0, other.stderr
    assert log.read_text() == "one\ntwo\none\ntwo\n"
    assert stamp.read_text() == "b" * 64 + "\n"

    stamp.unlink()
    failed = step("c" * 64, fail=True)
    assert failed.returncode == 3
    assert log.read_text().endswith("one\ntwo\none\n")
    assert not stamp.exists()


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
  ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeTestKeyOnlyNotARealKey00000000000000000 ops@laptop]
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
    doc = rendered.user_data("web-a")
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


# -- the first-boot reload check ------------------------------------------------------------------

FAKE_SYSTEMCTL = """#!/bin/sh
# Test double of systemctl: `show` prints $FAKE_SHOW (exit $FAKE_SHOW_STATUS); any other call
# is recorded in $FAKE_LOG.
if [ "$1" = show ]; then
    printf '%b' "$FAKE_SHOW"
    exit "${FAKE_SHOW_STATUS:-0}"
fi
echo "$*" >> "$FAKE_LOG"
"""


@pytest.mark.parametrize(
    ("show", "status", "reloads"),
    [
        ("loaded\\nno\\n\\nloaded\\nno\\n", 0, False),  # every unit loaded and current
        ("loaded\\nno\\n\\nloaded\\nyes\\n", 0, True),  # a drop-in written after its unit loaded
        ("loaded\\nno\\n\\nnot-found\\nno\\n", 0, True),  # a unit systemd cannot see
        ("", 1, True),  # systemctl itself failed: reload rather than guess
    ],
)
def test_reload_check_reloads_only_for_a_stale_unit(
    tmp_path: Path, show: str, status: int, reloads: bool
) -> None:
    from owuibuild.hostconfig import reload_if_stale

    fake = tmp_path / "bin" / "systemctl"
    fake.parent.mkdir()
    fake.write_text(FAKE_SYSTEMCTL)
    fake.chmod(0o755)
    log = tmp_path / "calls"
    log.touch()
    env = dict(
        os.environ,
        PATH=f"{fake.parent}:{os.environ['PATH']}",
        FAKE_SHOW=show,
        FAKE_SHOW_STATUS=str(status),
        FAKE_LOG=str(log),
    )
    argv = list(reload_if_stale(["a.service", "b.service"]))
    result = subprocess.run(argv, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == (["daemon-reload"] if reloads else [])


def test_runcmd_shell_steps_pass_shellcheck(
    render_example: Callable[[str], Rendered], tmp_path: Path
) -> None:
    """Every `/bin/sh -c` step of every example's runcmd, as sh runs it."""
    require_tool("shellcheck")
    from conftest import EXAMPLES

    scripts: set[str] = set()
    for example in EXAMPLES:
        rendered = render_example(example)
        for host in rendered.plan.hosts:  # type: ignore[attr-defined]
            runcmd = rendered.user_data(host.name)["runcmd"]
            scripts |= {c[2] for c in runcmd if isinstance(c, list) and c[:2] == ["/bin/sh", "-c"]}
    assert len(scripts) >= 3  # the package check, the reload check, the packaged-unit start
    for n, script in enumerate(sorted(scripts)):
        path = tmp_path / f"step{n}.sh"
        path.write_text("#!/bin/sh\n" + script + "\n")
        result = subprocess.run(
            ["shellcheck", "-s", "sh", str(path)], capture_output=True, text=True
        )
        assert result.returncode == 0, script + "\n" + result.stdout
