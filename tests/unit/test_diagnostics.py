"""Diagnostics as values, and their text and JSON forms."""

from __future__ import annotations

import json

import pytest
from owuibuild.diagnostics import (
    Diagnostic,
    Severity,
    error,
    format_json,
    format_path,
    format_text,
    has_errors,
    promote_warnings,
    warning,
)

pytestmark = pytest.mark.unit

LINES = ["apiVersion: owuibuild/v1", "name: fleet", "instances:", "  - {name: one, port: 99999}"]


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ((), "$"),
        (("name",), "name"),
        (("instances", 1, "port"), "instances[1].port"),
        (("shared", "host", "name"), "shared.host.name"),
        ((0,), "[0]"),
        (("instances", 0, "env", "A_B"), "instances[0].env.A_B"),
    ],
)
def test_format_path(path: tuple[str | int, ...], text: str) -> None:
    assert format_path(path) == text


def caret_column(block: str) -> tuple[str, str]:
    """The source line and the caret line of one formatted diagnostic, gutters aligned."""
    lines = block.splitlines()
    src = next(line for line in lines if " | " in line and not line.strip().startswith("|"))
    caret = next(line for line in lines if line.rstrip().endswith("^"))
    return src, caret


def test_text_form_has_location_source_caret_and_hint() -> None:
    d = error(("instances", 0, "port"), "too big", "use a port below 65536").located(
        "bp.yml", 4, 23
    )
    text = format_text([d], LINES)
    lines = text.splitlines()
    assert lines[0] == "bp.yml:4:23: error[instances[0].port]: too big"
    src, caret = caret_column(text)
    assert src.endswith(" | " + LINES[3])
    assert src.index("|") == caret.index("|")  # gutters line up
    assert src[caret.index("^")] == "9"  # the caret is under the value's first character
    assert src[caret.index("^") :].startswith("99999")
    assert "  hint: use a port below 65536" in lines
    assert lines[-1] == "1 error(s), 0 warning(s)"


def test_caret_at_column_one() -> None:
    d = error(("name",), "bad").located("bp.yml", 2, 1)
    src, caret = caret_column(format_text([d], LINES))
    assert src[caret.index("^") :].startswith("name: fleet")


def test_caret_under_a_character_after_a_tab() -> None:
    lines = ["a:\tvalue"]  # YAML columns count a tab as one character
    d = error(("a",), "bad").located("bp.yml", 1, 4)
    src, caret = caret_column(format_text([d], lines))
    assert src[caret.index("^") :].startswith("value")


def test_warning_form_and_counts() -> None:
    w = warning(("hosts", 0, "memory_gb"), "low memory").located("bp.yml", 2, 7)
    e = error(("name",), "bad").located("bp.yml", 2, 7)
    text = format_text([e, w], LINES)
    assert "bp.yml:2:7: warning[hosts[0].memory_gb]: low memory" in text.splitlines()
    assert text.splitlines()[-1] == "1 error(s), 1 warning(s)"


def test_without_a_line_there_is_no_source_and_no_caret() -> None:
    d = error((), "no such file").located("missing.yml", None, None)
    assert (
        format_text([d], LINES) == "missing.yml: error[$]: no such file\n1 error(s), 0 warning(s)"
    )


def test_line_without_column_and_line_past_the_end() -> None:
    d = error((), "not UTF-8").located("bp.yml", 3, None)
    assert format_text([d]).splitlines()[0] == "bp.yml:3: error[$]: not UTF-8"
    far = error((), "x").located("bp.yml", 99, 1)
    assert "^" not in format_text([far], LINES)


def test_no_diagnostics_no_text() -> None:
    assert format_text([], LINES) == ""


def test_json_form() -> None:
    d = error(("instances", 0, "port"), "too big", "lower it").located("bp.yml", 4, 23)
    w = warning(("name",), "hmm").located("bp.yml", 2, 7)
    doc = json.loads(format_json([d, w], output="out/x"))
    assert doc["ok"] is False and doc["errors"] == 1 and doc["warnings"] == 1
    assert doc["output"] == "out/x"
    assert doc["diagnostics"][0] == {
        "severity": "error",
        "path": "instances[0].port",
        "file": "bp.yml",
        "line": 4,
        "column": 23,
        "message": "too big",
        "hint": "lower it",
    }
    assert doc["diagnostics"][1]["severity"] == "warning"
    assert json.loads(format_json([w]))["ok"] is True


def test_promote_warnings_and_has_errors() -> None:
    w = warning(("a",), "w")
    assert not has_errors([w])
    promoted = promote_warnings([w])
    assert has_errors(promoted)
    assert promoted[0].severity is Severity.ERROR and promoted[0].message == "w"
    assert w.severity is Severity.WARNING  # values are not mutated


def test_located_returns_a_new_value() -> None:
    d = error(("a",), "m", "h")
    placed = d.located("f.yml", 3, 4)
    assert (placed.file, placed.line, placed.column) == ("f.yml", 3, 4)
    assert d.file is None
    assert isinstance(placed, Diagnostic) and placed.hint == "h"
