"""The atomic writer, render --check, the manifest and file modes."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fleetdoc import BASE, edit
from owuibuild import __version__, targets, writer
from owuibuild import secrets as store
from owuibuild.cli import cli
from owuibuild.targets import Artifact
from owuibuild.writer import MANIFEST, Change, WriteError, check_target, diff, write

pytestmark = pytest.mark.unit


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


ARTIFACTS = [
    Artifact("a.txt", b"a\n"),
    Artifact("dir/secret", b"s\n", secret=True),
    Artifact(MANIFEST, b"{}\n"),
]


@pytest.fixture
def rendered(tmp_path: Path) -> tuple[Path, Path]:
    """A blueprint and its rendered output directory."""
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE)
    out = tmp_path / "out"
    result = run("render", str(blueprint), "-o", str(out))
    assert result.exit_code == 0, result.output
    return blueprint, out


# -- write ------------------------------------------------------------------------------------------


def test_write_creates_exactly_the_artifacts_with_their_modes(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    old = os.umask(0o077)  # the umask must not change the intended modes
    try:
        write(out, ARTIFACTS)
    finally:
        os.umask(old)
    assert files(out) == {
        "a.txt": (b"a\n", 0o644),
        "dir/secret": (b"s\n", 0o600),
        MANIFEST: (b"{}\n", 0o644),
    }
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert siblings(out) == []  # no staging directory left behind


def test_manifest_is_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    real_open = os.open

    def recording_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_CREAT:  # the files written, not the directory opened for the lock
            order.append(Path(str(path)).name)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(writer.os, "open", recording_open)
    write(tmp_path / "out", [ARTIFACTS[2], ARTIFACTS[0], ARTIFACTS[1]])
    monkeypatch.undo()
    assert order[-1] == MANIFEST and set(order) == {"a.txt", "secret", MANIFEST}


def test_write_replaces_the_previous_output_as_a_whole(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write(out, [Artifact("old.txt", b"old"), Artifact(MANIFEST, b"{}")])
    write(out, ARTIFACTS)
    assert sorted(files(out)) == ["a.txt", "dir/secret", MANIFEST]
    assert siblings(out) == []


def test_a_failing_write_leaves_the_previous_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    write(out, ARTIFACTS)
    before = files(out)
    real = writer._materialize

    def half(root: Path, artifacts: list[Artifact]) -> None:
        real(root, artifacts[:1])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "_materialize", half)
    with pytest.raises(OSError):
        write(out, [Artifact("new.txt", b"n"), Artifact(MANIFEST, b"{}")])
    assert files(out) == before
    assert siblings(out) == []


def test_fallback_when_renameat2_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    write(out, [Artifact("old.txt", b"old"), Artifact(MANIFEST, b"{}")])
    monkeypatch.setattr(writer, "_exchange", lambda a, b: False)
    write(out, ARTIFACTS)
    assert sorted(files(out)) == ["a.txt", "dir/secret", MANIFEST]
    assert siblings(out) == []


@pytest.mark.parametrize("setup", ["file", "foreign-dir", "symlink"])
def test_refuses_what_is_not_an_earlier_output(setup: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    if setup == "file":
        out.write_text("precious")
    elif setup == "foreign-dir":
        out.mkdir()
        (out / "precious.txt").write_text("precious")
    else:
        (tmp_path / "real").mkdir()
        (tmp_path / "real" / MANIFEST).write_text("{}")
        out.symlink_to(tmp_path / "real")
    with pytest.raises(WriteError) as exc:
        write(out, ARTIFACTS)
    assert exc.value.hint
    if setup == "foreign-dir":
        assert (
            str(exc.value) == f"{out} is not empty and holds no {MANIFEST}: refusing to replace it"
        )
        assert files(out) == {"precious.txt": (b"precious", 0o644)}


def test_an_empty_directory_may_be_replaced(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    check_target(tmp_path / "out")
    write(tmp_path / "out", ARTIFACTS)
    assert (tmp_path / "out" / MANIFEST).is_file()


def test_render_refuses_a_foreign_directory(tmp_path: Path) -> None:
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE)
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run("render", str(blueprint), "-o", str(out))
    assert result.exit_code == 1
    assert result.stderr.splitlines()[0] == (
        f"owuibuild: {out} is not empty and holds no {MANIFEST}: refusing to replace it"
    )
    assert files(out) == {"notes.txt": (b"mine", 0o644)}


# -- atomic renders ---------------------------------------------------------------------------------


def test_an_invalid_blueprint_leaves_the_previous_output(rendered: tuple[Path, Path]) -> None:
    blueprint, out = rendered
    before = files(out)
    blueprint.write_text(edit(BASE, "port: 3001}\n  - {name: two", "port: 99999}\n  - {name: two"))
    result = run("render", str(blueprint), "-o", str(out))
    assert result.exit_code == 1
    assert files(out) == before


def test_a_target_failing_midway_leaves_the_previous_output(
    rendered: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    blueprint, out = rendered
    before = files(out)
    real = targets.discover()
    assert len(real) >= 2

    def boom(plan: object, secrets: object) -> list[Artifact]:
        raise RuntimeError("target exploded")

    # the real targets run first, then one raises
    monkeypatch.setattr(targets, "discover", lambda: [*real, ("zz_boom", boom)])
    blueprint.write_text(BASE + "  - {name: three, host: web-a, port: 3002}\n")
    result = run("render", str(blueprint), "-o", str(out))
    assert result.exit_code != 0
    assert isinstance(result.exception, RuntimeError)
    assert files(out) == before
    assert siblings(out) == sorted(["fleet.yml", "fleet.secrets.yml", "fleet.tls.secrets.yml"])


def test_a_failing_write_during_render_leaves_the_previous_output(
    rendered: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    blueprint, out = rendered
    before = files(out)

    def full(root: Path, artifacts: list[Artifact]) -> None:
        (root / "partial").write_text("x")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "_materialize", full)
    blueprint.write_text(BASE + "  - {name: three, host: web-a, port: 3002}\n")
    result = run("render", str(blueprint), "-o", str(out))
    assert result.exit_code == 1
    assert (
        result.stderr.splitlines()[0] == f"owuibuild: cannot write {out}: No space left on device"
    )
    assert files(out) == before
    assert siblings(out) == sorted(["fleet.yml", "fleet.secrets.yml", "fleet.tls.secrets.yml"])


# -- render --check ---------------------------------------------------------------------------------


def test_check_on_a_fresh_directory_lists_everything_and_writes_nothing(tmp_path: Path) -> None:
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE)
    assert run("render", str(blueprint), "-o", str(tmp_path / "elsewhere")).exit_code == 0
    out = tmp_path / "out"
    result = run("render", str(blueprint), "-o", str(out), "--check")
    assert result.exit_code == 1
    listed = [line.split() for line in result.stdout.splitlines()]
    assert all(kind == "added" for kind, _ in listed)
    expected = sorted(str(out / p) for p in files(tmp_path / "elsewhere"))
    assert sorted(path for _, path in listed) == expected
    assert not out.exists()


def test_check_without_secrets_writes_no_secrets(tmp_path: Path) -> None:
    blueprint = tmp_path / "fleet.yml"
    blueprint.write_text(BASE)
    result = run("render", str(blueprint), "-o", str(tmp_path / "out"), "--check")
    assert result.exit_code == 1
    assert "render without --check first" in result.stderr
    assert not store.secrets_path(blueprint).exists()
    assert not (tmp_path / "out").exists()


def test_check_up_to_date(rendered: tuple[Path, Path]) -> None:
    blueprint, out = rendered
    result = run("render", str(blueprint), "-o", str(out), "--check")
    assert result.exit_code == 0
    assert result.stdout == f"{out}: up to date\n"
    doc = json.loads(
        run("render", str(blueprint), "-o", str(out), "--check", "--format", "json").stdout
    )
    assert doc["changes"] == [] and doc["ok"] is True


def test_check_lists_added_changed_removed_and_mode(rendered: tuple[Path, Path]) -> None:
    blueprint, out = rendered
    (out / "README.md").write_text("edited by hand\n")
    (out / "hosts" / "web-a" / "meta-data").unlink()
    (out / "stale.txt").write_text("left over")
    (out / "hosts" / "web-b" / "meta-data").chmod(0o666)
    before = files(out)
    result = run("render", str(blueprint), "-o", str(out), "--check")
    assert result.exit_code == 1
    rows = {tuple(line.split()) for line in result.stdout.splitlines()}
    assert rows == {
        ("changed", str(out / "README.md")),
        ("added", str(out / "hosts/web-a/meta-data")),
        ("removed", str(out / "stale.txt")),
        ("mode", str(out / "hosts/web-b/meta-data")),
    }
    assert files(out) == before  # --check writes nothing
    doc = json.loads(
        run("render", str(blueprint), "-o", str(out), "--check", "--format", "json").stdout
    )
    assert {(c["change"], c["path"]) for c in doc["changes"]} == {
        ("changed", "README.md"),
        ("added", "hosts/web-a/meta-data"),
        ("removed", "stale.txt"),
        ("mode", "hosts/web-b/meta-data"),
    }


def test_diff_is_empty_for_identical_output(tmp_path: Path) -> None:
    write(tmp_path / "out", ARTIFACTS)
    assert diff(tmp_path / "out", ARTIFACTS) == []
    assert diff(tmp_path / "none", ARTIFACTS[:1]) == [Change("a.txt", "added")]


# -- manifest and modes -----------------------------------------------------------------------------


def test_manifest_lists_every_file(rendered: tuple[Path, Path]) -> None:
    blueprint, out = rendered
    manifest = json.loads((out / MANIFEST).read_text())
    on_disk = files(out)
    del on_disk[MANIFEST]
    assert manifest["generator"] == {"name": "owuibuild", "version": __version__}
    assert manifest["blueprint_sha256"] == hashlib.sha256(blueprint.read_bytes()).hexdigest()
    listed = {f["path"]: f for f in manifest["files"]}
    assert sorted(listed) == sorted(on_disk) == [f["path"] for f in manifest["files"]]
    for path, (data, mode) in on_disk.items():
        assert listed[path]["sha256"] == hashlib.sha256(data).hexdigest(), path
        assert listed[path]["size"] == len(data)
        assert listed[path]["mode"] == f"{mode:04o}", path


def test_manifest_holds_no_secret(rendered: tuple[Path, Path]) -> None:
    blueprint, out = rendered
    values, _ = store.read(store.secrets_path(blueprint))
    assert values
    text = (out / MANIFEST).read_text()
    assert not any(v in text for v in values.values())


def test_file_modes(rendered: tuple[Path, Path]) -> None:
    _, out = rendered
    on_disk = files(out)
    assert any(p.endswith("/user-data") for p in on_disk)
    for path, (_, mode) in on_disk.items():
        name = path.rsplit("/", 1)[-1]
        if name in ("user-data", "seed.iso") or name.endswith(".env") or name == "env":
            assert mode == 0o600, path
        elif path.endswith((".md", ".json", ".hcl", "meta-data", "network-config")):
            assert mode == 0o644, path
        else:
            assert mode in (0o600, 0o644), path
