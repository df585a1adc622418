"""The pipeline end to end, in memory: check, compile, verify, manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fleetdoc import BASE, edit
from owuibuild import __version__, targets
from owuibuild import secrets as store
from owuibuild.pipeline import check, compile_blueprint, internal_error, manifest
from owuibuild.targets import Artifact, discover, render_all

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(
    p for p in (REPO / "blueprints").glob("*.yml") if not p.name.endswith(".secrets.yml")
)


@pytest.fixture
def blueprint(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yml"
    path.write_text(BASE)
    return path


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_check_clean(example: Path) -> None:
    """Clean but for the placeholder SSH key the examples share with the starter, which
    validation names (until it is replaced, nobody could log in)."""
    checked = check(example)
    assert checked.ok, [d.as_dict() for d in checked.diagnostics]
    assert [(d.severity.value, d.path[:2]) for d in checked.diagnostics] == [
        ("warning", ("admin", "ssh_authorized_keys"))
    ]
    assert "example key" in checked.diagnostics[0].message


def test_strict_promotes_warnings(tmp_path: Path) -> None:
    path = tmp_path / "bp.yml"
    path.write_text(
        edit(
            BASE,
            "memory_gb: 64, data_volume: {label: owui-data}}\n  - {name: web-b",
            "memory_gb: 1, data_volume: {label: owui-data}}\n  - {name: web-b",
        )
    )
    loose = check(path)
    assert loose.ok and [d.severity.value for d in loose.diagnostics] == ["warning"]
    strict = check(path, strict=True)
    assert not strict.ok and strict.fleet is None
    assert [d.severity.value for d in strict.diagnostics] == ["error"]
    assert not compile_blueprint(path, strict=True).ok


def test_compile_gives_sorted_unique_artifacts_and_a_manifest(blueprint: Path) -> None:
    compiled = compile_blueprint(blueprint)
    assert compiled.ok and compiled.secrets_changed
    paths = [a.path for a in compiled.artifacts]
    assert paths == sorted(set(paths))
    doc = json.loads(next(a for a in compiled.artifacts if a.path == "manifest.json").data)
    assert doc["blueprint_sha256"] == hashlib.sha256(blueprint.read_bytes()).hexdigest()
    assert [f["path"] for f in doc["files"]] == [p for p in paths if p != "manifest.json"]
    assert not compile_blueprint(blueprint).secrets_changed


def test_compile_without_writing_secrets(blueprint: Path) -> None:
    compiled = compile_blueprint(blueprint, write_secrets=False)
    assert compiled.ok and compiled.secrets_changed
    assert not store.secrets_path(blueprint).exists()


def test_an_invalid_blueprint_compiles_to_diagnostics_only(tmp_path: Path) -> None:
    path = tmp_path / "bp.yml"
    path.write_text("- not a mapping\n")
    compiled = compile_blueprint(path)
    assert not compiled.ok and compiled.plan is None and compiled.artifacts == []
    assert not store.secrets_path(path).exists()


def test_manifest_shape() -> None:
    art = manifest([Artifact("a", b"x"), Artifact("b/c", b"yz", secret=True)], "f" * 64)
    assert art.path == "manifest.json" and not art.secret
    doc = json.loads(art.data)
    assert doc == {
        "generator": {"name": "owuibuild", "version": __version__},
        "blueprint_sha256": "f" * 64,
        "files": [
            {"path": "a", "sha256": hashlib.sha256(b"x").hexdigest(), "size": 1, "mode": "0644"},
            {"path": "b/c", "sha256": hashlib.sha256(b"yz").hexdigest(), "size": 2, "mode": "0600"},
        ],
    }
    assert art.data.endswith(b"\n")


def test_verify_failures_stop_the_render(blueprint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = discover()

    def broken(plan: object, secrets: store.Secrets) -> list[Artifact]:
        leaked = secrets["qdrant.api_key"]
        return [Artifact("broken.yaml", b"a: [\n"), Artifact("leak.md", leaked.encode())]

    monkeypatch.setattr(targets, "discover", lambda: [*real, ("broken", broken)])
    compiled = compile_blueprint(blueprint)
    assert not compiled.ok and compiled.artifacts == []
    messages = [d.message for d in compiled.diagnostics]
    assert any(m.startswith("generated broken.yaml does not parse") for m in messages)
    assert "a secret value would be written to non-secret file leak.md" in messages
    assert all(d.file == "<output>" for d in compiled.diagnostics)


def test_a_path_written_twice_is_a_bug(blueprint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    twice = [("a", lambda p, s: [Artifact("x", b"1")]), ("b", lambda p, s: [Artifact("x", b"2")])]
    monkeypatch.setattr(targets, "discover", lambda: twice)
    with pytest.raises(ValueError, match="target b writes x twice"):
        render_all(None, None)  # type: ignore[arg-type]


def test_targets_are_discovered_in_a_stable_order() -> None:
    names = [name for name, _ in discover()]
    assert names == sorted(names)
    assert {"hosts", "readme"} <= set(names)


def test_internal_error_diagnostic() -> None:
    d = internal_error(KeyError("x"))
    assert d.is_error and d.message == "internal error: KeyError: 'x'"
