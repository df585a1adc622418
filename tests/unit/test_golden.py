"""Golden files: whole renders of every example blueprint, compared byte for byte.

Each example renders with a fixed, obviously fake secrets file, tests/golden/<example>.secrets.yml,
and a fixed CA file, tests/golden/<example>.tls.secrets.yml (a CA and host keys made for these
tests only), so the output is stable. Text files are stored verbatim under tests/golden/<example>/; binary
files (seed.iso) as <path>.sha256, since their bytes are covered by the manifest and by the
text files they are made of. Any output change makes this test fail: regenerate with
`make golden` (pytest --update-golden) and review the diff before committing it.
"""

from __future__ import annotations

import datetime
import difflib
import hashlib
import shutil
from pathlib import Path

import pytest
from owuibuild import bundle, pki, yamldump
from owuibuild import secrets as store
from owuibuild.pipeline import compile_blueprint
from owuibuild.plan import make_plan

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden"
EXAMPLES = sorted(
    p.name for p in (REPO / "blueprints").glob("*.yml") if not p.name.endswith(".secrets.yml")
)


# The day the golden certificates are checked against: the goldens do not age with the clock.
GOLDEN_TODAY = datetime.date(2026, 12, 1)


def fake_secret(name: str) -> str:
    value = f"golden-fake-secret-{name.replace('.', '-')}-000000000000000"
    assert store.SECRET_PATTERN.match(value), value
    return value


def golden_form(files: dict[str, bytes]) -> dict[str, bytes]:
    """Text files as they are; binary files as their sha256."""
    out: dict[str, bytes] = {}
    for path, data in files.items():
        try:
            if b"\x00" in data:
                raise UnicodeDecodeError("utf-8", data, 0, 1, "binary")
            data.decode("utf-8")
            out[path] = data
        except UnicodeDecodeError:
            out[f"{path}.sha256"] = (hashlib.sha256(data).hexdigest() + "\n").encode()
    return out


def stored(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def render(example: str, tmp_path: Path, update: bool) -> dict[str, bytes]:
    stem = example.removesuffix(".yml")
    blueprint = tmp_path / example
    shutil.copy(REPO / "blueprints" / example, blueprint)
    golden_secrets = GOLDEN / f"{stem}.secrets.yml"
    secrets_file = store.secrets_path(blueprint)
    if update:
        compiled = compile_blueprint(blueprint, write_secrets=False)
        assert compiled.plan is not None, [d.as_dict() for d in compiled.diagnostics]
        names = [ref.name for ref in make_plan(compiled.plan.fleet).secrets]
        GOLDEN.mkdir(parents=True, exist_ok=True)
        store.write(golden_secrets, {n: fake_secret(n) for n in names}, example)
    assert golden_secrets.is_file(), f"{golden_secrets} is missing: run make golden"
    shutil.copy(golden_secrets, secrets_file)
    secrets_file.chmod(0o600)
    golden_tls, tls_file = GOLDEN / f"{stem}.tls.secrets.yml", pki.tls_path(blueprint)
    if golden_tls.is_file():
        shutil.copy(golden_tls, tls_file)
        tls_file.chmod(0o600)
    if update:  # issue what is missing (real keys, for tests only), and keep it
        compile_blueprint(blueprint, write_secrets=True, today=GOLDEN_TODAY)
        shutil.copy(tls_file, golden_tls)
    assert golden_tls.is_file(), f"{golden_tls} is missing: run make golden"
    compiled = compile_blueprint(blueprint, write_secrets=False, today=GOLDEN_TODAY)
    assert compiled.ok, [d.as_dict() for d in compiled.diagnostics]
    assert not compiled.secrets_changed, (
        f"the plan needs secrets {golden_secrets.name} lacks: run make golden and review"
    )
    return golden_form({a.path: a.data for a in compiled.artifacts})


@pytest.mark.parametrize("example", EXAMPLES)
def test_golden(example: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    update = bool(request.config.getoption("--update-golden"))
    files = render(example, tmp_path, update)
    root = GOLDEN / example.removesuffix(".yml")
    if update:
        shutil.rmtree(root, ignore_errors=True)
        for path, data in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
    expected = stored(root)
    assert expected, f"no golden files for {example}: run make golden"
    added, removed = sorted(files.keys() - expected.keys()), sorted(expected.keys() - files.keys())
    assert not added and not removed, (
        f"files added {added} or removed {removed}: run make golden and review"
    )
    problems = []
    for path in sorted(files):
        if files[path] != expected[path]:
            diff = difflib.unified_diff(
                expected[path].decode(errors="replace").splitlines(),
                files[path].decode(errors="replace").splitlines(),
                f"golden/{path}",
                f"rendered/{path}",
                lineterm="",
                n=2,
            )
            problems.append("\n".join(list(diff)[:40]))
    assert not problems, "output differs from golden files (make golden, then review):\n" + (
        "\n".join(problems)
    )


@pytest.mark.parametrize("example", EXAMPLES)
def test_pure_python_yaml_emitter_gives_the_golden_bytes(
    example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Renders use libyaml's emitter where PyYAML has it; without it (or where it is not
    trusted) the pure-Python emitter must write exactly the same files."""
    monkeypatch.setattr(yamldump, "USE_LIBYAML", False)
    monkeypatch.setattr(bundle, "_COMPOSE_CACHE", type(bundle._COMPOSE_CACHE)())
    files = render(example, tmp_path, update=False)
    expected = stored(GOLDEN / example.removesuffix(".yml"))
    assert files.keys() == expected.keys()
    differ = sorted(path for path in files if files[path] != expected[path])
    assert not differ, f"the pure-Python emitter writes other bytes for {differ}"


@pytest.mark.parametrize("example", EXAMPLES)
def test_pyyaml_representer_gives_the_golden_bytes(
    example: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """yamldump builds the emitter's events itself for plain data; PyYAML's own representer
    (what it falls back to for anything else) must write exactly the same files."""

    def unplain(*_: object) -> None:
        raise yamldump._Unplain

    monkeypatch.setattr(yamldump, "_events", unplain)
    monkeypatch.setattr(bundle, "_COMPOSE_CACHE", type(bundle._COMPOSE_CACHE)())
    files = render(example, tmp_path, update=False)
    expected = stored(GOLDEN / example.removesuffix(".yml"))
    differ = sorted(path for path in files if files[path] != expected[path])
    assert files.keys() == expected.keys() and not differ, f"other bytes for {differ}"


def test_golden_secrets_are_fake() -> None:
    import yaml

    found = sorted(p for p in GOLDEN.glob("*.secrets.yml") if ".tls." not in p.name)
    assert [p.name.removesuffix(".secrets.yml") for p in found] == [
        e.removesuffix(".yml") for e in EXAMPLES
    ]
    for path in found:
        values = store._flatten(yaml.safe_load(path.read_text()))
        assert values and all(str(v).startswith("golden-fake-secret-") for v in values.values())
