"""YAML serialization: libyaml's C emitter and PyYAML's pure-Python emitter write the same bytes
for every document the C emitter is trusted with, and the guard hands everything else to the
pure-Python emitter (the reference)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from owuibuild import yamldump

pytestmark = pytest.mark.unit

needs_libyaml = pytest.mark.skipif(
    yamldump._C_PLAIN is None,
    reason="PyYAML here is built without libyaml: only the pure-Python emitter exists",
)

STYLES = [
    {"literal_blocks": True, "allow_unicode": True, "width": 100},  # user-data, seed files
    {"literal_blocks": False, "allow_unicode": False, "width": 100},  # compose.yaml
    {"literal_blocks": False, "allow_unicode": False, "width": 80},  # Qdrant's config
]


def both(doc: Any, monkeypatch: pytest.MonkeyPatch, **style: Any) -> tuple[str, str]:
    monkeypatch.setattr(yamldump, "USE_LIBYAML", True)
    fast = yamldump.dump(doc, **style)
    monkeypatch.setattr(yamldump, "USE_LIBYAML", False)
    return fast, yamldump.dump(doc, **style)


# Documents on which the two emitters differ: each must go to the pure-Python emitter.
DIFFERING = [
    ({"a": "x\n\n", "b": 1}, True),  # keep-chomped literal block: libyaml adds '...'
    ({"": "x"}, True),  # empty key: '? ' form in pure Python only
    ({"a\rb": 1}, False),  # key with a line break
    ({"a": "smile \U0001f600"}, True),  # outside the BMP: libyaml escapes it
    ({"a": "x\x85y"}, True),  # NEL
    ({"a": "\n\n?-\ufeff6\x007\ufeff2\n" + "x" * 90 + "\ufeff}"}, False),  # folded escapes
]


@pytest.mark.parametrize(("doc", "literal"), DIFFERING)
def test_documents_libyaml_writes_differently_stay_with_the_reference(
    doc: dict[str, Any], literal: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not yamldump.libyaml_agrees(doc, literal_blocks=literal, allow_unicode=True)
    fast, reference = both(doc, monkeypatch, literal_blocks=literal, allow_unicode=True)
    assert fast == reference


@needs_libyaml
def test_the_guard_is_needed() -> None:
    """Without the guard, libyaml really would write other bytes for the documents above."""
    for doc, literal in DIFFERING[:4]:
        c = yamldump._C_LITERAL if literal else yamldump._C_PLAIN
        py = yamldump._Literal if literal else yaml.SafeDumper
        kw = {"sort_keys": False, "default_flow_style": False, "allow_unicode": True}
        assert yaml.dump(doc, Dumper=c, **kw) != yaml.dump(doc, Dumper=py, **kw), doc


@needs_libyaml
def test_trusted_documents_go_to_libyaml(monkeypatch: pytest.MonkeyPatch) -> None:
    used: list[type] = []
    real = yaml.emit

    def spy(events: Any, **kw: Any) -> Any:
        used.append(kw["Dumper"])
        return real(events, **kw)

    monkeypatch.setattr(yamldump.yaml, "emit", spy)
    yamldump.dump({"write_files": [{"path": "/x", "content": "a\nb\n"}]}, literal_blocks=True)
    yamldump.dump({"services": {"a": {"image": "x:1", "ports": ["127.0.0.1:80:80"]}}})
    yamldump.dump({"a": "x\n\n"}, literal_blocks=True)  # not trusted: the pure-Python emitter
    assert used == [yamldump._C_PLAIN, yamldump._C_PLAIN, yaml.SafeDumper]


def reference(doc: Any, style: dict[str, Any], sort_keys: bool = False) -> str:
    """What PyYAML's own dump writes: safe representer, pure-Python emitter."""
    dumper = yamldump._Literal if style["literal_blocks"] else yaml.SafeDumper
    text: str = yaml.dump(
        doc,
        Dumper=dumper,
        sort_keys=sort_keys,
        default_flow_style=False,
        allow_unicode=style["allow_unicode"],
        width=style["width"],
    )
    return text


def test_documents_not_of_plain_data_go_through_the_representer() -> None:
    """Shared containers (anchors), floats, other key types: yaml.dump itself writes them."""
    shared = ["a", "b"]
    for doc in (
        {"x": shared, "y": shared},
        {"x": (1, 2), "y": 1.5},
        {1: "one", "a": "b"},
        {"a": {"b": [None, True, -3]}, "c": float("inf")},
    ):
        for style in STYLES:
            with pytest.raises(yamldump._Unplain):
                yamldump._events(doc, style["literal_blocks"], True, False)  # type: ignore[arg-type]
            assert yamldump.dump(doc, **style) == reference(doc, style)  # type: ignore[arg-type]
    assert "&id001" in yamldump.dump({"x": shared, "y": shared})


CHARS = [*"ab c:#-'\"|>{}[]&*!%@`,?=~\\/.09 $()<>;", "é", "\u00a0", "\ud7ff", "\ue000"]
CHARS += ["\ufffd", "  ", "\n", "- ", ": ", " #"]
TEXT = st.lists(st.sampled_from(CHARS), max_size=300).map("".join)
KEY = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9_./-]{0,10}\Z")
DOCS = st.recursive(
    TEXT | st.integers() | st.booleans() | st.none(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEY, inner, max_size=4),
    max_leaves=10,
)


@needs_libyaml
@settings(max_examples=400, suppress_health_check=list(HealthCheck), deadline=None)
@given(st.dictionaries(KEY, DOCS, min_size=1, max_size=3), st.sampled_from(STYLES))
def test_wherever_libyaml_is_trusted_it_writes_the_reference_bytes(
    doc: dict[str, Any], style: dict[str, Any]
) -> None:
    literal, unicode = style["literal_blocks"], style["allow_unicode"]
    if not yamldump.libyaml_agrees(doc, literal_blocks=literal, allow_unicode=unicode):
        return
    c = yamldump._C_LITERAL if literal else yamldump._C_PLAIN
    py = yamldump._Literal if literal else yaml.SafeDumper
    kw = {
        "sort_keys": False,
        "default_flow_style": False,
        "allow_unicode": unicode,
        "width": style["width"],
    }
    assert yaml.dump(doc, Dumper=c, **kw) == yaml.dump(doc, Dumper=py, **kw)


SHARED = ["shared", 1]
PLAIN_OR_NOT = st.recursive(
    TEXT | st.integers() | st.booleans() | st.none() | st.floats() | st.just(SHARED),
    lambda inner: st.lists(inner, max_size=4)
    | st.lists(inner, max_size=3).map(tuple)
    | st.dictionaries(KEY | TEXT, inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=500, suppress_health_check=list(HealthCheck), deadline=None)
@given(
    st.dictionaries(KEY, PLAIN_OR_NOT, max_size=3),
    st.sampled_from(STYLES),
    st.booleans(),
    st.booleans(),
)
def test_dump_writes_the_bytes_of_pyyaml_s_own_dump(
    doc: dict[str, Any], style: dict[str, Any], sort_keys: bool, libyaml: bool
) -> None:
    """Events built here, emitted by libyaml or by the pure-Python emitter, or yaml.dump itself
    for what is not plain data: always the bytes of the reference."""
    old = yamldump.USE_LIBYAML
    yamldump.USE_LIBYAML = libyaml and yamldump._C_PLAIN is not None
    try:
        written = yamldump.dump(doc, sort_keys=sort_keys, **style)
    finally:
        yamldump.USE_LIBYAML = old
    assert written == reference(doc, style, sort_keys)
