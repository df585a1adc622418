"""The native config templates' compiled form, cached beside them as Python caches bytecode:
used only for exactly the source and environment it was compiled from, never a failure."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest
from owuibuild import quoting

pytestmark = pytest.mark.unit

TEMPLATES = sorted(
    p.name for p in (Path(quoting.__file__).parent / "templates" / "shared").glob("*.j2")
)


def compiled_sources(env: jinja2.Environment, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Load every template through ``env``; the names Jinja had to compile."""
    compiled: list[str] = []
    real = jinja2.Environment.compile

    def counting(self: jinja2.Environment, source: str, name: str | None = None, *a: Any) -> Any:
        compiled.append(str(name))
        return real(self, source, name, *a)

    with monkeypatch.context() as patch:
        patch.setattr(jinja2.Environment, "compile", counting)
        for name in TEMPLATES:
            env.get_template(name)
    return compiled


@pytest.fixture
def writes_bytecode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)


def test_a_second_process_loads_what_the_first_compiled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writes_bytecode: None
) -> None:
    first = quoting.make_environment(tmp_path)
    assert compiled_sources(first, monkeypatch) == TEMPLATES
    assert len(list(tmp_path.glob("*.jinja"))) == len(TEMPLATES)
    second = quoting.make_environment(tmp_path)  # as a later render builds it
    assert compiled_sources(second, monkeypatch) == []
    for name in TEMPLATES:  # the same code either way
        a, b = first.get_template(name), second.get_template(name)
        assert a.root_render_func.__code__.co_code == b.root_render_func.__code__.co_code


def test_an_entry_is_used_only_for_its_own_source_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writes_bytecode: None
) -> None:
    compiled_sources(quoting.make_environment(tmp_path), monkeypatch)
    with monkeypatch.context() as patch:
        patch.setattr(quoting, "_load", lambda name: f"# edited\n{name}\n")
        edited = quoting.make_environment(tmp_path)
        assert compiled_sources(edited, monkeypatch) == TEMPLATES

    other_options = quoting.make_environment(tmp_path)
    other_options.trim_blocks = False
    assert isinstance(other_options.bytecode_cache, quoting._CompiledTemplates)
    other_options.bytecode_cache.shape = quoting._shape(other_options)
    assert compiled_sources(other_options, monkeypatch) == TEMPLATES


def test_a_damaged_entry_is_compiled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writes_bytecode: None
) -> None:
    compiled_sources(quoting.make_environment(tmp_path), monkeypatch)
    for entry in tmp_path.glob("*.jinja"):
        entry.write_bytes(entry.read_bytes()[:20])
    assert compiled_sources(quoting.make_environment(tmp_path), monkeypatch) == TEMPLATES


def test_nothing_is_written_where_python_writes_no_bytecode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    env = quoting.make_environment(tmp_path / "cache")
    assert compiled_sources(env, monkeypatch) == TEMPLATES
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_cache_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writes_bytecode: None
) -> None:
    (tmp_path / "cache").write_text("a file where the directory would be")
    env = quoting.make_environment(tmp_path / "cache")
    assert compiled_sources(env, monkeypatch) == TEMPLATES
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # no temporary file left
