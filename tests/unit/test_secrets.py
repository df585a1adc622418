"""The secret store, and that secrets never reach the terminal; reproducible output."""

from __future__ import annotations

import datetime
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result
from fleetdoc import BASE, edit
from owuibuild import secrets as store
from owuibuild.cli import cli
from owuibuild.plan import make_plan
from owuibuild.source import parse
from owuibuild.validate import validate

pytestmark = pytest.mark.unit

CONSOLE = Path(sys.executable).parent / "owuibuild"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def needed_secrets(text: str) -> set[str]:
    source, _ = parse(text, "bp.yml")
    assert source is not None
    fleet, _ = validate(source)
    assert fleet is not None
    return {ref.name for ref in make_plan(fleet).secrets}


def stored_names(text: str) -> set[str]:
    """What render keeps in the secrets file: the secrets, and the sealed SCRAM verifiers."""
    source, _ = parse(text, "bp.yml")
    assert source is not None
    fleet, _ = validate(source)
    assert fleet is not None
    plan = make_plan(fleet)
    return needed_secrets(text) | {store.sealed_name(ref.name) for ref, _ in plan.scram_logins}


def files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def blueprint(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yml"
    path.write_text(BASE)
    return path


def test_secrets_path_naming(tmp_path: Path) -> None:
    assert store.secrets_path(tmp_path / "fleet.yml") == tmp_path / "fleet.secrets.yml"
    assert store.secrets_path(tmp_path / "fleet.yaml") == tmp_path / "fleet.secrets.yml"
    assert store.secrets_path(tmp_path / "fleet") == tmp_path / "fleet.secrets.yml"
    assert store.secrets_path(tmp_path / "a.b.yml") == tmp_path / "a.b.secrets.yml"


def test_first_render_creates_a_private_secrets_file(blueprint: Path, tmp_path: Path) -> None:
    result = run("render", str(blueprint), "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert "new secrets were added" in result.stdout
    path = tmp_path / "fleet.secrets.yml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    values, problems = store.read(path)
    assert problems == [] and values is not None
    assert set(values) == stored_names(BASE)
    assert all(store.SECRET_PATTERN.match(v) for v in values.values())
    assert len(set(values.values())) == len(values)  # every secret is its own
    assert path.read_text().startswith("# owuibuild secrets for fleet.yml.")


def test_later_renders_reuse_the_secrets(blueprint: Path, tmp_path: Path) -> None:
    assert run("render", str(blueprint), "-o", str(tmp_path / "a")).exit_code == 0
    before = (tmp_path / "fleet.secrets.yml").read_bytes()
    second = run("render", str(blueprint), "-o", str(tmp_path / "b"))
    assert second.exit_code == 0
    assert "new secrets" not in second.stdout
    assert (tmp_path / "fleet.secrets.yml").read_bytes() == before
    assert files(tmp_path / "a") == files(tmp_path / "b")


def test_new_instances_get_new_secrets_and_old_ones_stay(blueprint: Path, tmp_path: Path) -> None:
    assert run("render", str(blueprint), "-o", str(tmp_path / "a")).exit_code == 0
    old, _ = store.read(tmp_path / "fleet.secrets.yml")
    assert old is not None
    bigger = BASE + "  - {name: three, host: web-a, port: 3002}\n"
    blueprint.write_text(bigger)
    assert run("render", str(blueprint), "-o", str(tmp_path / "a")).exit_code == 0
    new, _ = store.read(tmp_path / "fleet.secrets.yml")
    assert new is not None
    assert {k: new[k] for k in old} == old
    assert set(new) - set(old) == stored_names(bigger) - stored_names(BASE) != set()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620])
def test_a_secrets_file_others_can_use_is_refused(
    mode: int, blueprint: Path, tmp_path: Path
) -> None:
    assert run("render", str(blueprint), "-o", str(tmp_path / "out")).exit_code == 0
    path = tmp_path / "fleet.secrets.yml"
    path.chmod(mode)
    before = files(tmp_path / "out")
    result = run("render", str(blueprint), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert (
        f"{path}: error[$]: the secrets file is readable by others (mode {mode:04o})"
        in result.stderr
    )
    assert f"  hint: run: chmod 600 {path}" in result.stderr
    assert files(tmp_path / "out") == before
    assert stat.S_IMODE(path.stat().st_mode) == mode  # never "fixed" behind the user's back


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("qdrant: {api_key: [unclosed\n", "the secrets file cannot be parsed"),
        ("- a\n- b\n", "the secrets file must be a mapping"),
        ("qdrant: {api_key: short}\n", "secret has an invalid form"),
        ("qdrant: {api_key: 'has spaces and is long enough !!'}\n", "secret has an invalid form"),
        ("\xff\xfe", "the secrets file cannot be parsed"),
    ],
)
def test_malformed_secrets_are_refused(
    content: str, message: str, blueprint: Path, tmp_path: Path
) -> None:
    path = tmp_path / "fleet.secrets.yml"
    path.write_bytes(content.encode("latin-1") if content == "\xff\xfe" else content.encode())
    path.chmod(0o600)
    before = path.read_bytes()
    result = run("render", str(blueprint), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
    assert path.read_bytes() == before
    for word in ("short", "has spaces", "12345678901234567890123456789"):
        if word in content:
            assert word not in result.output  # the bad value itself is not printed


def test_a_secrets_directory_is_refused(blueprint: Path, tmp_path: Path) -> None:
    (tmp_path / "fleet.secrets.yml").mkdir()
    result = run("render", str(blueprint), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "the secrets file is not a regular file" in result.stderr


def test_write_creates_mode_0600_regardless_of_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        store.write(tmp_path / "x.secrets.yml", {"a.b": "A" * 30}, "x.yml")
    finally:
        os.umask(old)
    path = tmp_path / "x.secrets.yml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert yaml.safe_load(path.read_text()) == {"a": {"b": "A" * 30}}
    assert [p.name for p in tmp_path.iterdir()] == ["x.secrets.yml"]  # no temp file left


def test_complete_keeps_existing_values() -> None:
    values, added = store.complete({"a": "x" * 30}, ["a", "b"])
    assert values["a"] == "x" * 30 and store.SECRET_PATTERN.match(values["b"])
    assert added
    assert store.complete(values, ["a", "b"]) == (values, False)


def test_new_secrets_are_random_and_well_formed() -> None:
    made = {store.new_secret() for _ in range(50)}
    assert len(made) == 50
    assert all(store.SECRET_PATTERN.match(s) for s in made)


# -- secrets never reach the terminal ---------------------------------------------------------------


def test_secrets_never_appear_in_cli_output(blueprint: Path, tmp_path: Path) -> None:
    # a warning, so diagnostics are printed on success too
    blueprint.write_text(
        edit(
            BASE,
            "memory_gb: 64, data_volume: {label: owui-data}}\n  - {name: web-b",
            "memory_gb: 1, data_volume: {label: owui-data}}\n  - {name: web-b",
        )
    )
    out = str(tmp_path / "out")
    results = [run("render", str(blueprint), "-o", out)]
    values, _ = store.read(tmp_path / "fleet.secrets.yml")
    assert values
    for args in (
        ["render", str(blueprint), "-o", out],
        ["render", str(blueprint), "-o", out, "--format", "json"],
        ["render", str(blueprint), "-o", out, "--check"],
        ["render", str(blueprint), "-o", out, "--check", "--format", "json"],
        ["render", str(blueprint), "-o", str(tmp_path / "other"), "--check"],
        ["render", str(blueprint), "-o", out, "--strict"],
        ["validate", str(blueprint)],
        ["validate", str(blueprint), "--format", "json"],
    ):
        results.append(run(*args))
    for result in results:
        assert result.exit_code in (0, 1)
        for value in values.values():
            assert value not in result.stdout and value not in result.stderr


def test_secrets_never_appear_in_non_secret_files(blueprint: Path, tmp_path: Path) -> None:
    assert run("render", str(blueprint), "-o", str(tmp_path / "out")).exit_code == 0
    values, _ = store.read(tmp_path / "fleet.secrets.yml")
    assert values
    for rel, (data, mode) in files(tmp_path / "out").items():
        if mode != 0o600:
            assert not any(v.encode() in data for v in values.values()), rel


# -- reproducible output ----------------------------------------------------------------------------


def test_output_is_byte_identical_across_processes(blueprint: Path, tmp_path: Path) -> None:
    """Two renders in separate processes with different hash seeds, at different times."""
    assert run("render", str(blueprint), "-o", str(tmp_path / "first")).exit_code == 0
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"proc{seed}"
        subprocess.run(
            [str(CONSOLE), "render", str(blueprint), "-o", str(out)],
            check=True,
            capture_output=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        outs.append(files(out))
    assert outs[0] == outs[1] == files(tmp_path / "first")


def test_rerender_into_the_same_dir_changes_nothing(blueprint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("render", str(blueprint), "-o", str(out)).exit_code == 0
    before = files(out)
    assert run("render", str(blueprint), "-o", str(out)).exit_code == 0
    assert files(out) == before
    check = run("render", str(blueprint), "-o", str(out), "--check")
    assert check.exit_code == 0 and "up to date" in check.stdout


def test_no_timestamps_in_output(blueprint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run("render", str(blueprint), "-o", str(out)).exit_code == 0
    today = datetime.datetime.now(datetime.UTC)
    stamps = {today.strftime("%Y-%m-%d"), today.strftime("%Y%m%d"), str(today.year) + "-"}
    for rel, (data, _) in files(out).items():
        if rel.endswith(".iso"):
            continue  # its volume dates are frozen by seed_iso, tested there
        text = data.decode("utf-8", "replace")
        for stamp in stamps:
            assert stamp not in text, (rel, stamp)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest) == {"generator", "blueprint_sha256", "files"}


def test_write_is_0600_even_over_a_stale_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "x.secrets.yml"
    stale = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    stale.write_text("left over")
    stale.chmod(0o644)
    store.write(path, {"a": "A" * 30}, "x.yml")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_secret_of_digits_is_read_as_text(tmp_path: Path) -> None:
    """YAML would read 24 digits as a number (and drop leading zeros); a secret is text."""
    path = tmp_path / "fleet.secrets.yml"
    path.write_text("qdrant:\n  api_key: 000123456789012345678901\nb: 0_123_456_789_012_345_678_901\n")
    path.chmod(0o600)
    values, problems = store.read(path)
    assert problems == []
    assert values == {"qdrant.api_key": "000123456789012345678901", "b": "0_123_456_789_012_345_678_901"}


@pytest.mark.parametrize(
    ("content", "where", "path"),
    [
        ("qdrant:\n  api_key: short\n", (2, 12), "qdrant.api_key"),
        ("a: " + "A" * 30 + "\nqdrant:\n  api_key:\n", (3, 3), "qdrant.api_key"),
        ("a: [" + "A" * 30 + "]\n", (1, 4), "a"),
        ("a: " + "A" * 30 + "\na: " + "B" * 30 + "\n", (2, 1), "a"),
        ("qdrant: {api_key: [unclosed\n", (2, 1), "$"),
    ],
)
def test_secret_problems_are_located(
    content: str, where: tuple[int, int], path: str, tmp_path: Path
) -> None:
    file = tmp_path / "fleet.secrets.yml"
    file.write_text(content)
    file.chmod(0o600)
    values, problems = store.read(file)
    assert values is None and len(problems) == 1
    d = problems[0].as_dict()
    assert (d["file"], d["line"], d["column"], d["path"]) == (str(file), *where, path)


def test_validate_reads_the_secrets_file_too(blueprint: Path, tmp_path: Path) -> None:
    assert run("validate", str(blueprint)).exit_code == 0  # no secrets file yet: fine
    path = tmp_path / "fleet.secrets.yml"
    path.write_text("qdrant:\n  api_key: 'not a secret: has spaces'\n")
    path.chmod(0o600)
    before = path.read_bytes()
    result = run("validate", str(blueprint))
    assert result.exit_code == 1
    assert f"{path}:2:12: error[qdrant.api_key]: secret has an invalid form" in result.stderr
    assert "has spaces" not in result.output  # neither the value nor its line is shown
    assert "1 error(s), 0 warning(s)" in result.stderr
    assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == 0o600
    as_json = run("validate", str(blueprint), "--format", "json")
    assert as_json.exit_code == 1
    (d,) = json.loads(as_json.stdout)["diagnostics"]
    assert (d["file"], d["line"], d["path"]) == (str(path), 2, "qdrant.api_key")
    path.chmod(0o644)
    assert "readable by others" in run("validate", str(blueprint)).stderr
