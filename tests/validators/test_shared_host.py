"""Validators for the host configuration: cloud-init's own schema, shellcheck, systemd-analyze
and nft run on every host's user-data of every example blueprint.

cloud-init is asked through Debian's python3 (which ships ``cloudinit``), strictly, plus a check
for top-level keys its schema does not know (``cloud-init schema`` ignores those); the program
is cloud_init_schema.CHECK, which test_cloud_init_trixie.py runs with Debian 13's cloud-init.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cloud_init_schema import distro_of, examples_on, run_check, user_data_texts
from conftest import EXAMPLES, Rendered, require_tool, unavailable
from owuibuild.hostconfig import docker as docker_section
from owuibuild.targets.hosts import unpack_user_data

pytestmark = pytest.mark.validators

SYSTEM_PYTHON = "/usr/bin/python3"
UNIT_DIR = "/etc/systemd/system/"
COMPOSE_DIR = str(Path(docker_section.COMPOSE).parent).lstrip("/")


def user_data(rendered: Rendered, host: str) -> bytes:
    return unpack_user_data(rendered.files[f"hosts/{host}/user-data"])


def user_datas(rendered: Rendered) -> dict[str, dict[str, Any]]:
    out = {}
    for path in rendered.files:
        if path.endswith("/user-data"):
            host = path.split("/")[1]
            out[host] = yaml.safe_load(user_data(rendered, host))
    return out


def written(rendered: Rendered) -> dict[str, str]:
    """Every write_files entry of every host, keyed '<host>:<path>'."""
    return {
        f"{host}:{f['path']}": f["content"]
        for host, doc in user_datas(rendered).items()
        for f in doc.get("write_files", [])
    }


def cloud_init_problems(paths: list[Path]) -> dict[str, list[str]]:
    """This machine's cloud-init (Debian 12: 22.4) on each file: {str(path): problems}."""
    if not Path(SYSTEM_PYTHON).exists():
        unavailable("Debian's python3 is missing")
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import cloudinit"], capture_output=True)
    if probe.returncode != 0:
        unavailable("cloud-init is not installed (make system-deps installs it)")
    _, problems = run_check([SYSTEM_PYTHON], {str(p): p.read_text() for p in paths})
    return problems


@pytest.mark.parametrize("example", EXAMPLES)
def test_user_data_passes_cloud_init_schema_strictly(
    example: str, render_example: Callable[[str], Rendered], tmp_path: Path
) -> None:
    rendered = render_example(example)
    paths = []
    for host in user_datas(rendered):
        path = tmp_path / f"{host}.yaml"
        path.write_bytes(user_data(rendered, host))
        paths.append(path)
    assert paths
    problems = cloud_init_problems(paths)
    assert problems == {str(p): [] for p in paths}


def test_debian12_user_data_passes_its_own_cloud_init_schema(
    render_example: Callable[[str], Rendered], tmp_path: Path
) -> None:
    """Debian 12 hosts run cloud-init 22.4 (this machine's): the debian-12 examples, or a
    debian-12 variant of each example while every example is on another release."""
    how, cases = examples_on("debian-12", render_example, tmp_path)
    paths = []
    for case, rendered in cases.items():
        assert distro_of(rendered) == "debian-12", how
        for host, text in user_data_texts(rendered):
            path = tmp_path / f"{case}-{host}.yaml"
            path.write_text(text)
            paths.append(path)
    assert paths, how
    assert cloud_init_problems(paths) == {str(p): [] for p in paths}, how


def test_schema_check_catches_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    """The checker itself: it must see an unknown top-level key and a schema error."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("#cloud-config\nno_such_module: 1\nruncmd: 5\n")
    problems = cloud_init_problems([bad])[str(bad)]
    assert any("no_such_module" in p for p in problems)
    assert any("runcmd" in p for p in problems)


def shell_scripts(rendered: Rendered) -> dict[str, str]:
    return {
        k: v for k, v in written(rendered).items() if v.startswith(("#!/bin/sh", "#!/bin/bash"))
    }


@pytest.mark.parametrize("example", EXAMPLES)
def test_scripts_pass_shellcheck(
    example: str, render_example: Callable[[str], Rendered], tmp_path: Path
) -> None:
    require_tool("shellcheck")
    scripts = shell_scripts(render_example(example))
    assert any(k.endswith("/postgresql-setup.sh") for k in scripts)
    failures = []
    for key, text in scripts.items():
        path = tmp_path / key.replace("/", "_").replace(":", "_")
        path.write_text(text)
        result = subprocess.run(
            ["shellcheck", "--severity=style", str(path)], capture_output=True, text=True
        )
        if result.returncode != 0:
            failures.append(f"{key}\n{result.stdout}")
    assert not failures, "\n".join(failures)


def _need_root(what: str) -> None:
    if os.geteuid() != 0:
        unavailable(f"{what} needs root (a private mount or network namespace)")
    require_tool("unshare")


@pytest.mark.parametrize("example", EXAMPLES)
def test_units_pass_systemd_analyze_verify(
    example: str, render_example: Callable[[str], Rendered], tmp_path: Path
) -> None:
    """Every unit and drop-in the sections write, verified as systemd would load them.

    systemd-analyze insists that ExecStart binaries exist, and the drop-ins only mean something
    next to the distribution's units (postgresql@.service, redis-server@.service). So the check
    runs in a private mount namespace (unshare -m) where a tmpfs over /etc/systemd/system holds
    the generated units and drop-ins, and empty executable stubs stand in for the binaries the
    install steps would put in /usr/local/bin. Nothing outside the namespace changes. Any
    message at all (systemd only warns about unknown keys) fails the test.
    """
    require_tool("systemd-analyze")
    _need_root("systemd-analyze verify with stub binaries")
    if (
        not Path("/lib/systemd/system/postgresql@.service").exists()
        or not Path("/lib/systemd/system/redis-server@.service").exists()
    ):
        unavailable("postgresql and redis-server packages are needed for their template units")
    rendered = render_example(example)
    for host, doc in user_datas(rendered).items():
        units = tmp_path / host / "units"
        stubs = tmp_path / host / "bin"
        stubs.mkdir(parents=True)
        names: list[str] = []
        masked: list[str] = []  # empty unit files: a package's unit that must never start
        for f in doc.get("write_files", []):
            path = f["path"]
            if not path.startswith(UNIT_DIR):
                continue
            target = units / path[len(UNIT_DIR) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f["content"])
            if "/" not in path[len(UNIT_DIR) :]:
                (names if f["content"] else masked).append(target.name)
            for line in f["content"].splitlines():
                key, _, command = line.partition("=")
                binary = command.split(" ", 1)[0].lstrip("-@+!")
                if key.startswith("Exec") and binary and not Path(binary).exists():
                    stub = stubs / binary.lstrip("/")
                    stub.parent.mkdir(parents=True, exist_ok=True)
                    stub.write_text("#!/bin/sh\n")
                    stub.chmod(0o755)
        if (units / "postgresql@.service.d").exists():
            names.append(f"postgresql@{rendered.plan.fleet.shared.postgres.version}-main.service")
        if (units / "redis-server@.service.d").exists():
            names += [f"redis-server@{s.name}.service" for s in rendered.plan.redis_servers]
        if not names:
            continue
        # Only the binaries the install steps and write_files provide may be missing here, and
        # compose v2 of a host that also runs instances (a package of the generated host).
        stubbed = sorted(str(p.parent.relative_to(stubs)) for p in stubs.rglob("*") if p.is_file())
        assert set(stubbed) <= {"usr/local/bin", "usr/local/sbin", COMPOSE_DIR}, stubbed
        # Each stub directory is laid over its real top directory (read-only overlay).
        roots = sorted({d if d != COMPOSE_DIR else "usr/libexec" for d in stubbed})
        binds = "".join(
            f"mount -t overlay overlay -o lowerdir={stubs}/{d}:/{d} /{d} && " for d in roots
        )
        script = (
            f"{binds}mount -t tmpfs tmpfs {UNIT_DIR} && "
            f"cp -R {units}/. {UNIT_DIR} && cd {UNIT_DIR} && "
            'exec systemd-analyze verify --man=no "$@"'
        )
        result = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, "sh", *names], capture_output=True, text=True
        )
        output = (result.stdout + result.stderr).strip()
        assert result.returncode == 0 and not output, f"{host}: {output}"
        for name in masked:  # systemd loads the empty file as a mask, and refuses the unit
            result = subprocess.run(
                ["unshare", "-m", "sh", "-c", script, "sh", name], capture_output=True, text=True
            )
            assert result.returncode != 0, f"{host}: {name} is not masked"
            assert f"Unit {name} is masked." in result.stderr, result.stderr


def test_systemd_check_sees_a_bad_key(tmp_path: Path) -> None:
    """The mechanism above really loads drop-ins: a bogus key in one is reported."""
    require_tool("systemd-analyze")
    _need_root("systemd-analyze verify with a private /etc/systemd/system")
    units = tmp_path / "units" / "redis-server@.service.d"
    units.mkdir(parents=True)
    (units / "x.conf").write_text("[Service]\nBogusKey=1\n")
    script = (
        f"mount -t tmpfs tmpfs {UNIT_DIR} && cp -R {tmp_path}/units/. {UNIT_DIR} && "
        "systemd-analyze verify --man=no redis-server@t.service"
    )
    result = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True)
    assert "BogusKey" in result.stdout + result.stderr


def rulesets(rendered: Rendered) -> dict[str, str]:
    return {k: v for k, v in written(rendered).items() if k.endswith("/firewall.nft")}


@pytest.mark.parametrize("example", EXAMPLES)
def test_firewall_passes_nft_check_and_keeps_other_tables(
    example: str, render_example: Callable[[str], Rendered], tmp_path: Path
) -> None:
    """nft -c accepts every ruleset; loading it twice in a fresh network namespace (unshare -n)
    works and leaves a foreign table (standing in for Docker's) untouched."""
    require_tool("nft")
    _need_root("nft in a private network namespace")
    rendered = render_example(example)
    found = rulesets(rendered)
    assert set(found) == {f"{h}:/etc/owuibuild/firewall.nft" for h in user_datas(rendered)}
    for key, text in found.items():
        path = tmp_path / "ruleset.nft"
        path.write_text(text)
        check = subprocess.run(
            ["unshare", "-n", "nft", "-c", "-f", str(path)], capture_output=True, text=True
        )
        assert check.returncode == 0, f"{key}: {check.stderr}"
        script = (
            "nft add table ip docker_standin && nft add chain ip docker_standin c && "
            f"nft -f {path} && nft -f {path} && nft list ruleset"
        )
        run = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        assert "table ip docker_standin" in run.stdout
        assert run.stdout.count("table inet owuibuild") == 1
        assert "policy drop" in run.stdout
