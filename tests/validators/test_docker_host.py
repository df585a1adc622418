"""Validators tier: what a Docker host's user-data carries, checked by the real tools.

- cloud-init's own schema, strictly, plus no unknown top-level key (Debian's python3 has the
  `cloudinit` package; `cloud-init schema` alone does not report unknown keys);
- the systemd units, with `systemd-analyze verify`;
- the embedded shell script, with shellcheck.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, Rendered, require_tool, unavailable
from owuibuild.hostconfig import docker as docker_section
from owuibuild.plan import Plan
from owuibuild.targets.hosts import unpack_user_data

pytestmark = pytest.mark.validators

SYSTEM_PYTHON = "/usr/bin/python3"

# Run by Debian's python3, which has cloud-init's package. Prints a JSON list of problems.
CLOUD_INIT_CHECK = """
import json, sys, yaml
from cloudinit.config.schema import SchemaValidationError, get_schema, validate_cloudconfig_schema
problems = []
for path in sys.argv[1:]:
    cfg = yaml.safe_load(open(path, encoding="utf-8"))
    schema = get_schema()
    known = set()
    for part in schema.get("allOf", []):
        if "$ref" in part:
            part = schema["$defs"][part["$ref"].rsplit("/", 1)[-1]]
        known.update(part.get("properties", {}))
    known.update(schema.get("properties", {}))
    problems += [f"{path}: unknown top-level key {k!r}" for k in cfg if k not in known]
    try:
        validate_cloudconfig_schema(cfg, schema, strict=True, log_details=False)
    except SchemaValidationError as exc:
        problems += [f"{path}: {p}: {m}" for p, m in exc.schema_errors]
print(json.dumps(problems))
"""

VARIANTS = {
    "debian-12": "debian-12",
    "ubuntu-24.04": "ubuntu-24.04",
}

BLUEPRINT = """\
apiVersion: owuibuild/v1
name: dockerhosts
os: {distro: DISTRO, timezone: UTC}
admin:
  user: ops
  ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeTestKeyOnlyNotARealKey00000000000000000 ops@laptop]
  allow_from: [10.9.0.0/24]
network: {cidr: 10.9.0.0/24, gateway: 10.9.0.1, dns: [10.9.0.1]}
shared:
  host: {name: shared, address: 10.9.0.10, memory_gb: 64, data_volume: {label: owui-data}}
hosts:
  - {name: web-a, address: 10.9.0.20, memory_gb: 64, data_volume: {label: owui-data}}
instances:
  - {name: one, host: web-a, port: 3001, env: {WEBUI_NAME: "One $ \\"quoted\\""}}
  - {name: two, host: web-a, port: 3002, public: true}
  - {name: three, host: shared, port: 3003}
"""


def docker_hosts(r: Rendered) -> list[str]:
    assert isinstance(r.plan, Plan)
    return [h.name for h in r.plan.hosts if h.runs_docker]


def write_files(r: Rendered, host: str) -> dict[str, dict[str, Any]]:
    doc = r.user_data(host)  # unzipped where the render gzipped it
    return {f["path"]: f for f in doc.get("write_files", [])}


def rendered_variants(
    render_example: Callable[[str], Rendered], render_text: Callable[[str], Rendered]
) -> list[Rendered]:
    out = [render_example(name) for name in EXAMPLES]
    out += [render_text(BLUEPRINT.replace("DISTRO", d)) for d in VARIANTS]
    return out


def require_cloud_init() -> None:
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import cloudinit.config.schema"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        unavailable("cloud-init's Python package is not installed (apt cloud-init)")


def test_docker_host_user_data_passes_cloud_init_schema_strictly(
    render_example: Callable[[str], Rendered],
    render_text: Callable[[str], Rendered],
    tmp_path: Path,
) -> None:
    require_cloud_init()
    paths: list[str] = []
    for n, r in enumerate(rendered_variants(render_example, render_text)):
        for host in docker_hosts(r):
            path = tmp_path / f"{n}-{host}.yaml"
            path.write_bytes(unpack_user_data(r.files[f"hosts/{host}/user-data"]))
            paths.append(str(path))
    assert len(paths) >= 5
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", CLOUD_INIT_CHECK, *paths],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
    gate = subprocess.run(
        ["cloud-init", "schema", "--config-file", paths[0]], capture_output=True, text=True
    )
    assert gate.returncode == 0, gate.stdout + gate.stderr


def test_units_pass_systemd_analyze_verify(
    render_text: Callable[[str], Rendered], tmp_path: Path
) -> None:
    require_tool("systemd-analyze")
    if not Path("/usr/bin/docker").exists():
        unavailable("verify needs docker.service and /usr/bin/docker (apt docker.io)")
    r = render_text(BLUEPRINT.replace("DISTRO", "debian-12"))
    for host in docker_hosts(r):
        unit_dir = tmp_path / host
        unit_dir.mkdir()
        files = write_files(r, host)
        assert isinstance(r.plan, Plan)
        ours = {i.unit_name for i in r.plan.instances_on(host)}
        units = []
        for path, entry in files.items():
            if path.startswith("/etc/systemd/system/") and Path(path).name in ours:
                unit = unit_dir / Path(path).name
                unit.write_text(entry["content"])
                units.append(str(unit))
        assert units
        env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_dir}:")
        out = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", *units],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
        problems = [
            line
            for line in (out.stdout + out.stderr).splitlines()
            # Compose v2 at the path of the distributions' packages exists only on the generated
            # host (this machine's is a CLI plugin of its own; the boot tier runs the units'
            # compose on Debian 13).
            if docker_section.COMPOSE not in line
        ]
        assert out.returncode == 0 or not problems, "\n".join(problems)
        assert not problems, "\n".join(problems)


def test_containerd_reads_its_generated_configuration(
    render_text: Callable[[str], Rendered], tmp_path: Path
) -> None:
    """The real containerd parses the generated config.toml (`config dump` fails on a bad
    file) and ends up with its CRI plugin disabled."""
    require_tool("containerd")
    r = render_text(BLUEPRINT.replace("DISTRO", "debian-13"))
    for host in docker_hosts(r):
        config = tmp_path / f"{host}.toml"
        config.write_text(write_files(r, host)[docker_section.CONTAINERD_CONFIG]["content"])
        dump = subprocess.run(
            ["containerd", "--config", str(config), "config", "dump"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert dump.returncode == 0, dump.stderr
        assert 'disabled_plugins = ["io.containerd.grpc.v1.cri"]' in dump.stdout, dump.stdout
        assert 'path = "/var/lib/containerd/opt"' in dump.stdout


@contextmanager
def _health_server(answers: list[int]) -> Iterator[tuple[str, list[str]]]:
    """A loopback /health that gives ``answers`` in turn (the last one from then on): its URL
    and the paths it was asked for."""
    seen: list[str] = []

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            code = answers[min(len(seen), len(answers)) - 1]
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/health", seen
    finally:
        server.shutdown()


def test_instance_ready_check_waits_until_health_answers(
    render_text: Callable[[str], Rendered],
) -> None:
    """The unit's ready check, run by the real curl against a loopback /health (in place of
    the host's address): it asks again while the instance is not up yet (503), ends with
    success at the first 200, and gives up with an error once its tries are spent."""
    require_tool("curl")
    r = render_text(BLUEPRINT.replace("DISTRO", "debian-13"))
    assert isinstance(r.plan, Plan)
    host = docker_hosts(r)[0]
    inst = r.plan.instances_on(host)[0]
    unit = write_files(r, host)[f"/etc/systemd/system/{inst.unit_name}"]["content"]
    # The first: the upgrade guard's stamp follows it, once the instance answers.
    post = next(ln for ln in unit.splitlines() if ln.startswith("ExecStartPost="))
    argv = shlex.split(post.removeprefix("ExecStartPost="))
    assert argv[-1] == docker_section.health_url(inst)

    with _health_server([503, 503, 200]) as (url, seen):
        done = subprocess.run([*argv[:-1], url], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert seen == ["/health"] * 3

    tries = argv.index("--retry") + 1
    with _health_server([503]) as (url, seen):
        few = [*argv[:tries], "2", *argv[tries + 1 : -1], url]
        failed = subprocess.run(few, capture_output=True, text=True, timeout=60)
        assert failed.returncode == 22, failed.stderr  # curl: the server answered an error
        assert len(seen) == 3


def test_embedded_scripts_pass_shellcheck(
    render_example: Callable[[str], Rendered],
    render_text: Callable[[str], Rendered],
    tmp_path: Path,
) -> None:
    require_tool("shellcheck")
    checked = 0
    for n, r in enumerate(rendered_variants(render_example, render_text)):
        for host in docker_hosts(r):
            scripts = [
                entry["content"]
                for entry in write_files(r, host).values()
                if str(entry["content"]).startswith("#!/bin/sh")
            ]
            for k, script in enumerate(scripts):
                path = tmp_path / f"{n}-{host}-{k}.sh"
                path.write_text(script)
                out = subprocess.run(["shellcheck", str(path)], capture_output=True, text=True)
                assert out.returncode == 0, out.stdout
                checked += 1
    assert checked >= 5
