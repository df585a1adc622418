"""Validators tier: the generated compose bundles, read back by the real Compose v2.

`docker compose config` parses and resolves a project without a daemon, so these tests need
only the docker client and the compose plugin (tests/infra/docker-up.sh installs both).
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, Rendered, unavailable
from owuibuild import bundle
from owuibuild.plan import Plan

pytestmark = pytest.mark.validators


def require_compose() -> None:
    if shutil.which("docker") is None:
        unavailable("docker client not found (tests/infra/system-deps.sh installs it)")
    try:
        out = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        unavailable("docker compose version timed out")
        return
    if out.returncode != 0 or " v2." not in out.stdout:
        unavailable(
            f"Compose v2 plugin missing (tests/infra/docker-up.sh): {out.stdout}{out.stderr}"
        )


def write_bundle(r: Rendered, name: str, into: Path) -> Path:
    """The instance's bundle as it lies on its host, in a directory of its own."""
    target = into / name
    target.mkdir(parents=True)
    for path, data in r.files.items():
        if path.startswith(f"instances/{name}/"):
            (target / path.rsplit("/", 1)[1]).write_bytes(data)
    return target / bundle.COMPOSE_FILE


def compose(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", "compose", *args], capture_output=True, text=True, timeout=120, check=False
    )


def resolved_environment(compose_file: Path) -> dict[str, str]:
    out = compose("-f", str(compose_file), "config", "--format", "json")
    assert out.returncode == 0, out.stderr
    doc: dict[str, Any] = json.loads(out.stdout)
    env: dict[str, str] = doc["services"][bundle.SERVICE]["environment"]
    # `config` prints a project that can be read again, so it writes a literal `$` as `$$`.
    return {k: v.replace("$$", "$") for k, v in env.items()}


@pytest.mark.parametrize("example", EXAMPLES)
def test_example_compose_files_pass_compose_config(
    example: str, render_example: Callable[[str], Rendered], tmp_path: Path
) -> None:
    require_compose()
    r = render_example(example)
    assert isinstance(r.plan, Plan)
    for inst in r.plan.instances:
        compose_file = write_bundle(r, inst.name, tmp_path)
        out = compose("-f", str(compose_file), "config", "-q")
        assert out.returncode == 0, f"{inst.name}: {out.stderr}"
        env = resolved_environment(compose_file)
        assert env == dict(bundle.environment(r.plan, inst, r.secrets))  # type: ignore[arg-type]


# Characters that mean something to some env-file parser: quotes, `$` interpolation, `#`
# comments, backslash escapes, `=`, whitespace at either end, and non-ASCII (NBSP and NEL are
# whitespace to compose's key parser).
HOSTILE_FIXED = [
    "",
    " ",
    "  leading and trailing  ",
    "\\",
    "ends with backslash \\",
    '\\"',
    '"',
    "'",
    "''",
    "\"double\" and 'single'",
    "$HOME",
    "${HOME}",
    "${HOME:-fallback}",
    "$$",
    "\\$HOME",
    "a #comment",
    "#start",
    "x=y=z",
    "\\n is not a newline",
    "\\0134 is not a backslash",
    "tab\\t",
    "ünïcödé € ✓ 日本語",
    "\u00a0nbsp\u00a0",
    "`backticks` $(cmd) ;|&<>",
    "export X=1",
]
ALPHABET = "ab Z9 '\"$#\\{}=`!;&|<>()*?~%^[]:-_/\u00e9\u20ac\u00a0"


def hostile_values() -> list[str]:
    rng = random.Random(4)  # fixed: the same values on every run
    generated = [
        "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 24))) for _ in range(60)
    ]
    return HOSTILE_FIXED + generated


HOSTILE_BLUEPRINT = """\
apiVersion: owuibuild/v1
name: hostile
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
  - {name: hostile, host: web-a, port: 3001, env: ENV}
"""


def test_hostile_env_values_round_trip_through_compose(
    render_text: Callable[[str], Rendered], tmp_path: Path
) -> None:
    require_compose()
    values = {f"HOSTILE_{n:03d}": v for n, v in enumerate(hostile_values())}
    r = render_text(HOSTILE_BLUEPRINT.replace("ENV", json.dumps(values)))
    env = resolved_environment(write_bundle(r, "hostile", tmp_path))
    wrong = {k: (v, env.get(k)) for k, v in values.items() if env.get(k) != v}
    assert not wrong, wrong


@pytest.mark.parametrize("value", ["\u0085nel", "line\u2028separator", "para\u2029separator"])
def test_unicode_line_separators_round_trip(
    value: str, render_text: Callable[[str], Rendered], tmp_path: Path
) -> None:
    require_compose()
    r = render_text(HOSTILE_BLUEPRINT.replace("ENV", json.dumps({"ODD": value})))
    assert resolved_environment(write_bundle(r, "hostile", tmp_path))["ODD"] == value
