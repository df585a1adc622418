"""The command line: text and JSON diagnostics, exit codes, and no traceback ever.

Runs the real click command through CliRunner, and the installed console script through a
subprocess for a few inputs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fleetdoc import BASE, diagnose, edit, where
from owuibuild.cli import cli, main
from owuibuild.source import MAX_BYTES

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
CONSOLE = Path(sys.executable).parent / "owuibuild"
HEADER = re.compile(r"^(?P<file>[^\s:][^:]*?)(:(?P<line>\d+)(:(?P<col>\d+))?)?: (error|warning)\[")


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def no_traceback(result: Result) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def error_lines(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if line.startswith("owuibuild: ") or (HEADER.match(line) and "error[" in line)
    ]


# -- validate: text and json ------------------------------------------------------------------------


def test_validate_ok(tmp_path: Path) -> None:
    path = tmp_path / "bp.yml"
    path.write_text(BASE)
    result = run("validate", str(path))
    no_traceback(result)
    assert result.exit_code == 0
    assert result.stdout == f"{path}: valid (2 instances on 3 hosts)\n"
    assert result.stderr == ""


def test_validate_text_form_with_caret_and_hint(tmp_path: Path) -> None:
    path = tmp_path / "bp.yml"
    new = "{name: two, host: web-aa, port: 3001}"
    text = edit(BASE, "{name: two, host: web-b, port: 3001}", new)
    path.write_text(text)
    result = run("validate", str(path))
    no_traceback(result)
    assert result.exit_code == 1
    assert result.stdout == ""
    line, col = where(text, new, "web-aa")
    lines = result.stderr.splitlines()
    assert lines[0] == f"{path}:{line}:{col}: error[instances[1].host]: unknown host 'web-aa'"
    assert lines[1] == f"{line:>5} | {text.splitlines()[line - 1]}"
    assert lines[2].index("^") == lines[1].index(" | ") + 3 + col - 1
    assert lines[1][lines[2].index("^") :].startswith("web-aa")
    assert lines[3] == "  hint: did you mean 'web-a'?"
    assert lines[-1] == "1 error(s), 0 warning(s)"


def test_validate_json_has_the_same_diagnostics(tmp_path: Path) -> None:
    path = tmp_path / "bp.yml"
    text = edit(BASE, "name: fleet", "name: Fleet")
    text = edit(
        text, "{name: two, host: web-b, port: 3001}", "{name: one, host: web-a, port: 3001}"
    )
    path.write_text(text)
    result = run("validate", str(path), "--format", "json")
    no_traceback(result)
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    expected = [d.located(str(path), d.line, d.column).as_dict() for d in diagnose(text)]
    assert doc["diagnostics"] == expected
    assert doc["ok"] is False and doc["errors"] == len(expected) >= 3
    assert result.stderr == ""


def test_validate_json_ok(tmp_path: Path) -> None:
    path = tmp_path / "bp.yml"
    path.write_text(BASE)
    result = run("validate", str(path), "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"ok": True, "errors": 0, "warnings": 0, "diagnostics": []}


def warning_only(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "bp.yml"
    text = edit(
        BASE,
        "{name: web-a, address: 10.0.5.20, memory_gb: 64",
        "{name: web-a, address: 10.0.5.20, memory_gb: 1",
    )
    path.write_text(text)
    return path, text


def test_warnings_pass_and_strict_makes_them_errors(tmp_path: Path) -> None:
    path, text = warning_only(tmp_path)
    line, col = where(text, "memory_gb: 1,", "1")
    loose = run("validate", str(path))
    assert loose.exit_code == 0
    assert f"{path}:{line}:{col}: warning[hosts[0].memory_gb]: " in loose.stderr
    assert "0 error(s), 1 warning(s)" in loose.stderr
    strict = run("validate", str(path), "--strict")
    no_traceback(strict)
    assert strict.exit_code == 1
    assert f"{path}:{line}:{col}: error[hosts[0].memory_gb]: " in strict.stderr
    doc = json.loads(run("validate", str(path), "--strict", "--format", "json").stdout)
    assert [d["severity"] for d in doc["diagnostics"]] == ["error"]


def test_render_strict_fails_and_writes_nothing(tmp_path: Path) -> None:
    path, _ = warning_only(tmp_path)
    out = tmp_path / "out"
    result = run("render", str(path), "-o", str(out), "--strict")
    no_traceback(result)
    assert result.exit_code == 1
    assert not out.exists()
    ok = run("render", str(path), "-o", str(out))
    assert ok.exit_code == 0 and (out / "manifest.json").is_file()


def test_render_json_reports_files(tmp_path: Path) -> None:
    path = tmp_path / "bp.yml"
    path.write_text(BASE)
    out = tmp_path / "out"
    result = run("render", str(path), "-o", str(out), "--format", "json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["ok"] is True and doc["output"] == str(out)
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert doc["files"] == on_disk


def test_render_default_output_is_out_fleet_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("bp.yml").write_text(BASE)
    result = run("render", "bp.yml")
    assert result.exit_code == 0, result.output
    assert Path("out/fleet/manifest.json").is_file()
    assert result.stdout.startswith("rendered ") and "out/fleet" in result.stdout


# -- usage errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["validate"],
        ["validate", "--nope", "x.yml"],
        ["frobnicate"],
        ["validate", "x.yml", "--format", "xml"],
        ["render", "x.yml", "--check", "--check=3"],
    ],
)
def test_usage_errors_exit_2(args: list[str], tmp_path: Path) -> None:
    result = run(*args)
    no_traceback(result)
    assert result.exit_code == 2


@pytest.mark.parametrize("command", ["validate", "render"])
def test_missing_file_and_directory_exit_2(command: str, tmp_path: Path) -> None:
    missing = run(command, str(tmp_path / "nope.yml"))
    no_traceback(missing)
    assert missing.exit_code == 2
    assert missing.stderr.splitlines()[0] == f"owuibuild: {tmp_path / 'nope.yml'}: no such file"
    directory = run(command, str(tmp_path))
    assert directory.exit_code == 2
    assert error_lines(directory.stderr) == [
        f"owuibuild: {tmp_path}: is a directory, not a blueprint file"
    ]


def test_help_and_version() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for name in ("init", "validate", "render", "schema"):
        assert re.search(rf"^\s+{name}\s", result.stdout, re.M), name
    version = run("--version")
    assert version.exit_code == 0 and "owuibuild" in version.stdout


# -- hostile input: one error line, exit 1 or 2, no traceback ---------------------------------------

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + n)}: &{chr(98 + n)} [{', '.join([f'*{chr(97 + n)}'] * 10)}]\n" for n in range(8)
)

HOSTILE: dict[str, bytes] = {
    "malformed": b"apiVersion: owuibuild/v1\nname: [a, b\nadmin: x: y\n",
    "alias-bomb": BOMB.encode(),
    "list": b"- apiVersion: owuibuild/v1\n- name: x\n",
    "scalar": b"owuibuild\n",
    "binary": bytes(range(256)) * 4,
    "invalid-utf8": b"apiVersion: owuibuild/v1\nname: \xc3\x28\n",
    "empty": b"",
    "comment-only": b"# nothing here\n",
    "duplicate-keys": BASE.replace("name: fleet\n", "name: fleet\nname: again\n").encode(),
    "huge": b"# " + b"x" * MAX_BYTES + b"\n",
    "wrong-types": b"apiVersion: 2\nname: 3\nadmin: []\nnetwork: x\nshared: 1\ninstances: {}\n",
    "control-character": BASE.replace("name: fleet", "name: fl\x1beet").encode(),
    "deep-nesting": b"a: " + b"[" * 5000 + b"]" * 5000 + b"\n",
    "recursive-alias": b"a: &a [*a]\n",
    "date-in-enum": BASE.replace(
        "name: fleet\n", "name: fleet\nos: {distro: 2024-01-01}\n"
    ).encode(),
    "int-key": BASE.replace("name: fleet\n", "name: fleet\n1: x\n").encode(),
}


@pytest.mark.parametrize("command", ["validate", "render"])
@pytest.mark.parametrize(("name", "data"), HOSTILE.items(), ids=list(HOSTILE))
def test_hostile_input_gives_one_error_and_no_traceback(
    command: str, name: str, data: bytes, tmp_path: Path
) -> None:
    path = tmp_path / "bp.yml"
    path.write_bytes(data)
    out = tmp_path / "out"
    args = [command, str(path)] + (["-o", str(out)] if command == "render" else [])
    result = run(*args)
    no_traceback(result)
    assert result.exit_code == 1, result.output
    errors = error_lines(result.stderr)
    if name != "wrong-types":
        assert len(errors) == 1, result.stderr
    assert errors and errors[0].startswith(str(path)), result.stderr
    assert not out.exists()
    assert not (tmp_path / "bp.secrets.yml").exists()


@pytest.mark.parametrize(
    "name",
    ["binary", "alias-bomb", "malformed", "empty", "list", "control-character", "recursive-alias"],
)
def test_console_script_on_hostile_input(name: str, tmp_path: Path) -> None:
    path = tmp_path / "bp.yml"
    path.write_bytes(HOSTILE[name])
    proc = subprocess.run(
        [str(CONSOLE), "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert len(error_lines(proc.stderr)) == 1, proc.stderr


@pytest.mark.parametrize("target", ["missing", "directory"])
def test_console_script_usage_errors(target: str, tmp_path: Path) -> None:
    path = tmp_path / "nope.yml" if target == "missing" else tmp_path
    proc = subprocess.run(
        [str(CONSOLE), "render", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(error_lines(proc.stderr)) == 1


def test_main_catches_a_failing_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from owuibuild import targets

    def boom(plan: object, secrets: object) -> list[object]:
        raise RuntimeError("target exploded")

    monkeypatch.setattr(targets, "discover", lambda: [("boom", boom)])
    path = tmp_path / "bp.yml"
    path.write_text(BASE)
    with pytest.raises(SystemExit) as exc:
        main(["render", str(path), "-o", str(tmp_path / "out")])
    assert exc.value.code == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.splitlines()[0] == "owuibuild: internal error: RuntimeError: target exploded"
    assert not (tmp_path / "out").exists()


# -- init and schema --------------------------------------------------------------------------------


def test_init_writes_a_starter_that_validates(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yml"
    result = run("init", str(path))
    assert result.exit_code == 0
    assert path.is_file()
    assert run("validate", str(path)).exit_code == 0
    starter = (REPO / "builder" / "templates" / "starter.yml").read_bytes()
    assert path.read_bytes() == starter


def test_init_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yml"
    path.write_text("mine\n")
    result = run("init", str(path))
    no_traceback(result)
    assert result.exit_code == 2
    assert "already exists" in result.stderr
    assert path.read_text() == "mine\n"


def test_init_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert run("init").exit_code == 0
    assert Path("blueprint.yml").is_file()
    assert run("init").exit_code == 2


def test_init_into_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    result = run("init", str(tmp_path / "no" / "such" / "fleet.yml"))
    no_traceback(result)
    assert result.exit_code == 2
    assert len(error_lines(result.stderr)) == 1


def test_schema_prints_the_schema_file() -> None:
    result = run("schema")
    assert result.exit_code == 0
    text = (REPO / "schemas" / "blueprint.schema.json").read_text()
    assert result.stdout == text
    assert json.loads(result.stdout) == json.loads(text)


def test_console_script_schema() -> None:
    proc = subprocess.run(
        [str(CONSOLE), "schema"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert json.loads(proc.stdout)["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("columns", ["", "0", "x", "30", "60", "79", "80", "81", "200"])
def test_help_is_as_wide_as_click_would_make_it(
    columns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """main() gives click the help width itself (so --help need not import shutil): the same
    width click's formatter works out with shutil.get_terminal_size."""
    import shutil

    from owuibuild.cli import help_width

    monkeypatch.setenv("COLUMNS", columns)
    assert help_width() == max(min(shutil.get_terminal_size().columns, 80) - 2, 50)


def test_help_through_the_console_script_imports_no_shutil() -> None:
    code = "import sys\nfrom owuibuild.cli import main\ntry:\n    main(['--help'])\n"
    code += "except SystemExit:\n    pass\nprint('shutil' in sys.modules, file=sys.stderr)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stderr.strip() == "False" and "Usage: owuibuild" in done.stdout
