"""Loading: YAML -> data plus line:col, and refusals as diagnostics, never exceptions."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fleetdoc import BASE, edit, where
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from owuibuild import source as source_mod
from owuibuild.diagnostics import Diagnostic
from owuibuild.source import MAX_BYTES, MAX_DEPTH, MAX_NODES, Mark, Source, load, parse

pytestmark = pytest.mark.unit

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + n)}: &{chr(98 + n)} [{', '.join([f'*{chr(97 + n)}'] * 10)}]\n" for n in range(8)
)


def only_error(text: str) -> tuple[str, int | None, int | None]:
    src, diagnostics = parse(text, "bp.yml")
    assert src is None
    assert len(diagnostics) == 1 and diagnostics[0].is_error
    d = diagnostics[0]
    assert d.file == "bp.yml" and d.path == ()
    return d.message, d.line, d.column


def test_values_and_keys_are_located() -> None:
    src, diagnostics = parse(BASE, "bp.yml")
    assert src is not None and diagnostics == []
    assert src.values[("instances", 1, "port")] == Mark(*where(BASE, "port: 3001}", "3001", nth=1))
    assert src.keys[("instances", 1, "port")] == Mark(*where(BASE, "port: 3001}", nth=1))
    assert src.values[("shared", "host", "name")] == Mark(*where(BASE, "{name: shared", "shared"))
    assert src.values[()] == Mark(1, 1)


def test_mark_of_walks_up_to_the_closest_known_parent() -> None:
    src, _ = parse(BASE, "bp.yml")
    assert src is not None
    missing = ("instances", 0, "database", "pool_size")
    assert src.mark_of(missing) == src.values[("instances", 0)]
    assert src.mark_of(("instances", 0, "port"), key=True) == src.keys[("instances", 0, "port")]


def test_sha256_is_of_the_raw_bytes(tmp_path: Path) -> None:
    path = tmp_path / "bp.yml"
    path.write_bytes(BASE.encode())
    src, diagnostics = load(path)
    assert diagnostics == [] and src is not None
    assert src.sha256 == hashlib.sha256(BASE.encode()).hexdigest()
    assert src.name == str(path)


def test_duplicate_key_is_refused_at_the_second_key() -> None:
    text = edit(BASE, "name: fleet\n", "name: fleet\nname: other\n")
    message, line, column = only_error(text)
    first, _ = where(text, "name: fleet")
    assert message == f"duplicate key 'name' (first defined on line {first})"
    assert (line, column) == where(text, "name: other")


def test_nested_duplicate_key() -> None:
    text = edit(
        BASE,
        "{name: one, host: web-a, port: 3001}",
        "{name: one, host: web-a, port: 3001, port: 3}",
    )
    message, line, column = only_error(text)
    assert message.startswith("duplicate key 'port'")
    assert (line, column) == where(text, "port: 3}")


def test_alias_bomb_is_refused() -> None:
    message, line, column = only_error(BOMB)
    assert message == f"the document expands to more than {MAX_NODES} nodes"
    assert (line, column) == (1, 1)


def test_a_few_aliases_are_fine() -> None:
    text = edit(
        BASE,
        "data_volume: {label: owui-data}}\n  postgres",
        "data_volume: &dv {label: owui-data}}\n  postgres",
    )
    text = text.replace("data_volume: {label: owui-data}", "data_volume: *dv")
    src, diagnostics = parse(text, "bp.yml")
    assert diagnostics == [] and src is not None
    assert src.data["hosts"][1]["data_volume"] == {"label": "owui-data"}


@pytest.mark.parametrize(
    ("text", "kind"),
    [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int"), ("~\n", "null")],
)
def test_non_mapping_documents(text: str, kind: str) -> None:
    message, line, column = only_error(text)
    assert message == f"the blueprint must be a mapping, not {kind}"
    assert (line, column) == (1, 1)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_documents(text: str) -> None:
    message, _, _ = only_error(text)
    assert message == "the blueprint is empty"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("a: b: c\n", ": c"),  # mapping values are not allowed here
        ("a: [1, 2\nb: 3\n", ":"),
        ("a: 1\n---\nb: 2\n", "---"),  # one document only
    ],
)
def test_malformed_yaml_is_located(text: str, needle: str) -> None:
    message, line, column = only_error(text)
    assert message.startswith("invalid YAML: ")
    assert "\n" not in message
    assert line is not None and column is not None
    assert 1 <= line <= text.count("\n") + 1


def test_malformed_yaml_points_at_the_problem() -> None:
    message, line, column = only_error("ok: 1\nbad: b: c\n")
    assert message == "invalid YAML: mapping values are not allowed here"
    assert (line, column) == (2, 7)


def test_unsafe_scalar_tags_are_refused() -> None:
    message, line, column = only_error("a: 1\nb: !!python/name:os.system ''\n")
    assert message.startswith("invalid YAML value: ")
    assert (line, column) == (2, 4)


def test_tags_on_collections_give_plain_data() -> None:
    # the builder builds mappings and lists itself: no constructor runs for their tags
    src, diagnostics = parse("a: !!python/object/apply:os.system [ls]\n", "bp.yml")
    assert diagnostics == [] and src is not None
    assert src.data == {"a": ["ls"]}


# -- files ------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    src, (d,) = load(tmp_path / "nope.yml")
    assert src is None and d.message == "no such file"


def test_directory(tmp_path: Path) -> None:
    src, (d,) = load(tmp_path)
    assert src is None and d.message == "is a directory, not a blueprint file"


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "bp.yml"
    path.write_bytes(b"apiVersion: owuibuild/v1\n\x00\x01\x02")
    src, (d,) = load(path)
    assert src is None and d.message == "the file is binary, not YAML text"


def test_invalid_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bp.yml"
    path.write_bytes(b"a: 1\nb: 2\nc: \xff\xfe\n")
    src, (d,) = load(path)
    assert src is None
    assert d.message == "the file is not UTF-8 text"
    assert d.line == 3


def test_huge_file_is_refused_without_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bp.yml"
    path.write_bytes(b"# " + b"x" * MAX_BYTES + b"\n")
    monkeypatch.setattr(source_mod, "parse", lambda *a, **k: pytest.fail("parsed a huge file"))
    src, (d,) = load(path)
    assert src is None
    assert d.message == f"the file is larger than {MAX_BYTES // (1024 * 1024)} MiB"


def test_the_size_limit_is_inclusive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bp.yml"
    path.write_bytes(BASE.encode())
    monkeypatch.setattr(source_mod, "MAX_BYTES", len(BASE.encode()))
    src, diagnostics = load(path)
    assert diagnostics == [] and src is not None
    monkeypatch.setattr(source_mod, "MAX_BYTES", len(BASE.encode()) - 1)
    src, (d,) = load(path)
    assert src is None and d.message.startswith("the file is larger than")


def test_crlf_and_bom_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bp.yml"
    path.write_bytes(b"\xef\xbb\xbf" + BASE.replace("\n", "\r\n").encode())
    src, diagnostics = load(path)
    assert diagnostics == [] and src is not None
    assert src.values[("instances", 1, "port")].line == where(BASE, "port: 3001}", nth=1)[0]


# -- hostile structure ------------------------------------------------------------------------------


@pytest.mark.parametrize("char", ["\x1b", "\x0c", "\x7f", "\x01"])
def test_control_characters_are_located(char: str) -> None:
    message, line, column = only_error(f"apiVersion: owuibuild/v1\nname: a{char}b\n")
    assert message.startswith("the file holds a control character (")
    assert message.endswith(") that YAML does not allow")
    assert (line, column) == (2, 8)


def test_control_character_is_named() -> None:
    message, _, _ = only_error("name: a\x1bb\n")
    assert "'\\x1b'" in message or "U+001B" in message, message


def test_nesting_depth_limit() -> None:
    def nested(levels: int) -> str:
        return "a: " + "[" * levels + "]" * levels + "\n"

    src, diagnostics = parse(nested(MAX_DEPTH), "bp.yml")
    assert diagnostics == [] and src is not None
    message, _, _ = only_error(nested(MAX_DEPTH + 1))
    assert message == f"the document is nested more than {MAX_DEPTH} levels deep"


@pytest.mark.parametrize(
    "text",
    ["a: " + "[" * 5000 + "]" * 5000 + "\n", "a: " + "{b: " * 3000 + "1" + "}" * 3000 + "\n"],
)
def test_very_deep_nesting(text: str) -> None:
    message, _, _ = only_error(text)
    assert message == f"the document is nested more than {MAX_DEPTH} levels deep"


def test_self_referencing_alias() -> None:
    message, _, _ = only_error("a: &a [*a]\n")
    assert message == f"the document is nested more than {MAX_DEPTH} levels deep"


@pytest.mark.parametrize(
    ("text", "shown"),
    [("true: 1\n", "True"), ("1: x\n", "1"), ("2024-01-01: x\n", "datetime.date(2024, 1, 1)")],
)
def test_keys_must_be_text(text: str, shown: str) -> None:
    src, (d,) = parse(text, "bp.yml")
    assert src is None
    assert d.message == f"mapping key {shown} is not text"
    assert (d.line, d.column) == (1, 1)


@pytest.mark.parametrize(
    ("text", "column", "tag"),
    [("a: !!int x\n", 4, "!!int"), ("!!int ", 1, "!!int"), ("a: !!bool x\n", 4, "!!bool")],
)
def test_a_value_its_explicit_tag_cannot_hold_is_located(text: str, column: int, tag: str) -> None:
    assert only_error(text) == (
        f"invalid YAML value: the value cannot be read as {tag}",
        1,
        column,
    )


# -- libyaml parses, PyYAML's pure-Python parser is the reference --------------------------------

YAMLISH = [
    *"ab:-?,[]{}#&*!|>'\"%@`\\ \t\n\r0123456789.~",
    "\r\n",
    "\x85",
    "\u2028",
    "é",
    "\U0001f600",
    "\ufeff",
    "\x01",
    "- ",
    ": ",
    "? ",
    "&a ",
    "*a",
    "!!str ",
    "!!int ",
    "!!binary ",
    "!x ",
    "---\n",
    "...\n",
    "%YAML 1.1\n",
    "%TAG ! tag:x,2000:\n",
    "true",
    "null",
    "0x1F",
    "1e3",
    "2001-12-14",
    "<<: *a\n",
    "  ",
    "    ",
]
YAMLISH_TEXT = st.one_of(
    st.lists(st.sampled_from(YAMLISH), max_size=60).map("".join),
    st.lists(
        st.tuples(
            st.integers(0, 3),
            st.sampled_from(["a", "b", "- a", "? a", "c"]),
            st.lists(st.sampled_from(YAMLISH), max_size=6).map("".join),
        ),
        max_size=12,
    ).map(lambda rows: "".join(f"{'  ' * d}{k}: {v}\n" for d, k, v in rows)),
)


def pure_parse(text: str) -> tuple[Source | None, list[Diagnostic]]:
    fast = source_mod._FastLoader
    source_mod._FastLoader = None
    try:
        return parse(text, "bp.yml")
    finally:
        source_mod._FastLoader = fast


def outcome(parsed: tuple[Source | None, list[Diagnostic]]) -> object:
    src, diagnostics = parsed
    if src is None:
        return [d.as_dict() for d in diagnostics]
    return repr(src.data), src.values, src.keys


@pytest.mark.skipif(source_mod._FastLoader is None, reason="PyYAML here is built without libyaml")
@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(YAMLISH_TEXT)
def test_libyaml_parses_as_the_pure_python_parser(text: str) -> None:
    """Same data, same locations, same diagnostics (libyaml's findings are reported by the
    pure-Python parser in its own words)."""
    assert outcome(parse(text, "bp.yml")) == outcome(pure_parse(text))


@pytest.mark.skipif(source_mod._FastLoader is None, reason="PyYAML here is built without libyaml")
def test_examples_parse_alike() -> None:
    for example in sorted(Path(__file__).parents[2].joinpath("blueprints").glob("*.yml")):
        text = example.read_text()
        assert outcome(parse(text, "bp.yml")) == outcome(pure_parse(text)), example
