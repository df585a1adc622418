"""SCRAM verifiers and their sealed copies in the secret store: a sealed verifier is reused only
for the password and role it was made for, and output is the same bytes with or without it."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fleetdoc import BASE
from hypothesis import given, settings
from hypothesis import strategies as st
from owuibuild import scram
from owuibuild import secrets as store
from owuibuild.cli import cli

pytestmark = pytest.mark.unit

PASSWORD = "pencil-0123456789abcdefghij"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def test_scram_verifier_is_reproducible_and_salted_per_role() -> None:
    # tests/services/test_postgres.py proves a real server accepts it.
    verifier = scram.verifier("pencil", "user")
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert verifier == scram.verifier("pencil", "user")
    assert verifier != scram.verifier("pencil", "other")


def test_a_seal_gives_back_the_verifier_and_has_the_form_of_a_secret() -> None:
    sealed = scram.seal(PASSWORD, "alpha")
    assert store.SECRET_PATTERN.match(sealed) and len(sealed) == scram.SEALED_LENGTH
    assert scram.unseal(sealed, PASSWORD, "alpha") == scram.verifier(PASSWORD, "alpha")


def test_a_seal_is_refused_for_another_password_or_role() -> None:
    sealed = scram.seal(PASSWORD, "alpha")
    assert scram.unseal(sealed, PASSWORD + "x", "alpha") is None  # rotated password
    assert scram.unseal(sealed, PASSWORD, "beta") is None  # another role: another salt
    assert scram.unseal(sealed[:-4], PASSWORD, "alpha") is None
    assert scram.unseal("A" * scram.SEALED_LENGTH, PASSWORD, "alpha") is None


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=scram.SEALED_LENGTH - 1), st.sampled_from("Ab9_-"))
def test_any_edited_character_breaks_the_seal(at: int, char: str) -> None:
    sealed = scram.seal(PASSWORD, "alpha")
    edited = sealed[:at] + char + sealed[at + 1 :]
    if edited != sealed:  # 96 bytes are 128 characters exactly: no padding bits to hide in
        assert scram.unseal(edited, PASSWORD, "alpha") is None


def test_secrets_use_a_matching_seal_and_compute_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "instances.a.db_password"
    fresh = scram.verifier(PASSWORD, "alpha")
    sealed = store.Secrets({name: PASSWORD, store.sealed_name(name): scram.seal(PASSWORD, "alpha")})
    stale = store.Secrets({name: PASSWORD, store.sealed_name(name): scram.seal("old" * 9, "alpha")})
    bare = store.Secrets({name: PASSWORD})
    computed: list[str] = []
    real = scram.verifier

    def counting(password: str, role: str) -> str:
        computed.append(role)
        return real(password, role)

    monkeypatch.setattr(scram, "verifier", counting)
    assert sealed.scram_verifier(name, "alpha") == fresh
    assert computed == []  # no PBKDF2 for a matching seal
    assert stale.scram_verifier(name, "alpha") == fresh
    assert bare.scram_verifier(name, "alpha") == fresh
    assert sealed.scram_verifier(name, "beta") == real(PASSWORD, "beta")
    assert computed == ["alpha", "alpha", "beta"]


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def blueprint(tmp_path: Path) -> Path:
    path = tmp_path / "fleet.yml"
    path.write_text(BASE)
    return path


def render_once(blueprint: Path) -> tuple[Path, dict[str, str]]:
    """Render into <dir>/a; the secrets file and what it holds then."""
    assert run("render", str(blueprint), "-o", str(blueprint.parent / "a")).exit_code == 0
    secrets_file = blueprint.with_name("fleet.secrets.yml")
    values, _ = store.read(secrets_file)
    assert values is not None
    return secrets_file, values


def drop_seals(secrets_file: Path, values: dict[str, str], blueprint: Path) -> None:
    """Rewrite the secrets file as an older owuibuild wrote it: no sealed verifiers."""
    old = {k: v for k, v in values.items() if not k.endswith(store.SEALED_SUFFIX)}
    kept = store.open_store(secrets_file)  # the records stay: only seals go
    store.write(secrets_file, old, blueprint.name, kept.seeds, kept.allocations)


def test_render_seals_verifiers_once_and_the_output_is_the_same_without_them(
    blueprint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets_file, values = render_once(blueprint)
    seals = {k for k in values if k.endswith(store.SEALED_SUFFIX)}
    assert seals == {"instances.one.db_password_scram", "instances.two.db_password_scram"}
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600

    # A file as an older owuibuild wrote it (no seals): the same bytes, and the seals come back.
    drop_seals(secrets_file, values, blueprint)
    result = run("render", str(blueprint), "-o", str(tmp_path / "b"))
    assert result.exit_code == 0 and "new secrets" not in result.stdout
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert store.read(secrets_file)[0] == values
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600

    # With the seals in place, rendering computes no verifier at all.
    def refuse(password: str, role: str) -> str:
        raise AssertionError("a sealed verifier was computed again")

    monkeypatch.setattr(scram, "verifier", refuse)
    monkeypatch.setattr(scram, "seal", refuse)
    before = secrets_file.read_bytes()
    assert run("render", str(blueprint), "-o", str(tmp_path / "c")).exit_code == 0
    assert files(tmp_path / "a") == files(tmp_path / "c")
    assert secrets_file.read_bytes() == before


def test_a_rotated_password_gets_a_new_verifier_not_its_stale_seal(
    blueprint: Path, tmp_path: Path
) -> None:
    secrets_file, values = render_once(blueprint)
    rotated = "rotated-password-0123456789abcdef"
    stale_seal = values["instances.one.db_password_scram"]
    store.write(secrets_file, {**values, "instances.one.db_password": rotated}, blueprint.name)
    assert run("render", str(blueprint), "-o", str(tmp_path / "b")).exit_code == 0
    user_data = (tmp_path / "b/hosts/shared/user-data").read_text()
    assert scram.verifier(rotated, "one") in user_data
    assert scram.verifier(values["instances.one.db_password"], "one") not in user_data
    resealed, _ = store.read(secrets_file)
    assert resealed is not None
    assert resealed["instances.one.db_password_scram"] != stale_seal
    assert scram.unseal(resealed["instances.one.db_password_scram"], rotated, "one")


def test_check_neither_writes_seals_nor_calls_their_absence_missing_secrets(
    blueprint: Path, tmp_path: Path
) -> None:
    secrets_file, values = render_once(blueprint)
    drop_seals(secrets_file, values, blueprint)
    before = secrets_file.read_bytes()
    result = run("render", str(blueprint), "-o", str(tmp_path / "a"), "--check")
    assert result.exit_code == 0, result.output
    assert "up to date" in result.stdout
    assert secrets_file.read_bytes() == before


def test_a_secrets_file_that_cannot_be_rewritten_only_for_seals_is_no_error(
    blueprint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets_file, values = render_once(blueprint)
    drop_seals(secrets_file, values, blueprint)

    def unwritable(*_: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(store, "write", unwritable)
    result = run("render", str(blueprint), "-o", str(tmp_path / "b"))
    assert result.exit_code == 0, result.output
    assert files(tmp_path / "a") == files(tmp_path / "b")


@pytest.mark.parametrize("count", [3, 40])
def test_seals_made_side_by_side_are_the_ones_made_one_by_one(count: int) -> None:
    """Many missing seals are made in threads (40 here, fewer than 16 in line): each is the
    seal of its own password and role, in place, whatever order the threads finish in."""
    values = {f"db_{i}": f"password-number-{i:04d}-abcdefghijklmnop" for i in range(count)}
    logins = [(f"db_{i}", f"role_{i}") for i in range(count)]
    assert store.seal_verifiers(values, logins) is True
    for name, role in logins:
        assert values[store.sealed_name(name)] == scram.seal(values[name], role)
    # Sealed already: nothing to do.
    assert store.seal_verifiers(values, logins) is False
