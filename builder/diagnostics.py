"""Diagnostics: errors and warnings as values.

Every stage returns diagnostics instead of raising them. They are turned into text or JSON
only at the edge (the CLI). This module touches no files and no terminal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


JsonPath = tuple[str | int, ...]


def format_path(path: JsonPath) -> str:
    """Render a JSON path like ``instances[1].port``; the document root is ``$``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif out:
            out += f".{part}"
        else:
            out = str(part)
    return out or "$"


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    path: JsonPath
    message: str
    hint: str | None = None
    file: str | None = None
    line: int | None = None  # 1-based
    column: int | None = None  # 1-based

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def located(self, file: str, line: int | None, column: int | None) -> Diagnostic:
        return replace(self, file=file, line=line, column=column)

    def as_dict(self) -> dict[str, object]:
        return {
            "severity": self.severity.value,
            "path": format_path(self.path),
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "hint": self.hint,
        }


def error(path: JsonPath, message: str, hint: str | None = None) -> Diagnostic:
    return Diagnostic(Severity.ERROR, path, message, hint)


def warning(path: JsonPath, message: str, hint: str | None = None) -> Diagnostic:
    return Diagnostic(Severity.WARNING, path, message, hint)


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.is_error for d in diagnostics)


def promote_warnings(diagnostics: Sequence[Diagnostic]) -> list[Diagnostic]:
    """--strict: every warning becomes an error."""
    return [replace(d, severity=Severity.ERROR) for d in diagnostics]


def sort_key(d: Diagnostic) -> tuple[str, int, int, str]:
    return (d.file or "", d.line or 0, d.column or 0, d.message)


def format_text(
    diagnostics: Sequence[Diagnostic],
    source_lines: Sequence[str] = (),
    source_file: str | None = None,
) -> str:
    """``file:line:col: severity[path]: message``, the source line with a caret, and a hint.

    The source line is shown for diagnostics of ``source_file`` only, when it is given: another
    file's line numbers do not index these lines (and the secrets file's lines are never shown).
    """
    chunks: list[str] = []
    for d in diagnostics:
        where = d.file or "<blueprint>"
        if d.line is not None:
            where += f":{d.line}"
            if d.column is not None:
                where += f":{d.column}"
        lines = [f"{where}: {d.severity.value}[{format_path(d.path)}]: {d.message}"]
        ours = source_file is None or d.file == source_file
        if ours and d.line is not None and 0 < d.line <= len(source_lines):
            text = source_lines[d.line - 1].rstrip("\r\n").expandtabs(1)
            gutter = f"{d.line:>5} | "
            lines.append(gutter + text)
            col = max((d.column or 1) - 1, 0)
            lines.append(" " * (len(gutter) - 2) + "| " + " " * col + "^")
        if d.hint:
            lines.append(f"  hint: {d.hint}")
        chunks.append("\n".join(lines))
    errors = sum(1 for d in diagnostics if d.is_error)
    warnings = len(diagnostics) - errors
    if diagnostics:
        chunks.append(f"{errors} error(s), {warnings} warning(s)")
    return "\n".join(chunks)


def format_json(diagnostics: Sequence[Diagnostic], **extra: object) -> str:
    errors = sum(1 for d in diagnostics if d.is_error)
    doc = {
        "ok": errors == 0,
        "errors": errors,
        "warnings": len(diagnostics) - errors,
        "diagnostics": [d.as_dict() for d in diagnostics],
        **extra,
    }
    return json.dumps(doc, indent=2, sort_keys=False)
