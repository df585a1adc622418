"""YAML serialization: the one way owuibuild turns data into YAML text (cloud-config, compose,
network-config, Qdrant's config).

Pure: data in, text out. PyYAML's pure-Python emitter is most of a large render's time, so
libyaml's C emitter is used where it is installed, but only for documents on which the two are
known to write the same bytes; anything else goes through the pure-Python emitter, whose
output is the reference. The two differ on a few inputs (a keep-chomped literal block makes
libyaml end the document with '...'; they fold long double-quoted scalars at different
columns; libyaml escapes characters outside the Basic Multilingual Plane; keys with line breaks
or empty keys get different styles), so the guard admits only plain keys and strings of
characters both print as they are, with multi-line strings only where they become literal
blocks that need no chomping indicator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

# Whether to use libyaml's emitter where it agrees (tests turn it off to compare the two).
USE_LIBYAML: bool = bool(getattr(yaml, "__with_libyaml__", False))

_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*\Z")
# Printed as they are by both emitters: printable ASCII and the printable BMP (no BOM).
_UNICODE_LINE = re.compile("[\x20-\x7e\u00a0-\ud7ff\ue000-\ufefe\uff00-\ufffd]*\\Z")
_ASCII_LINE = re.compile("[\x20-\x7e]*\\Z")
_UNICODE_LINES = re.compile("[\n\x20-\x7e\u00a0-\ud7ff\ue000-\ufefe\uff00-\ufffd]*\\Z")
_ASCII_LINES = re.compile("[\n\x20-\x7e]*\\Z")


class _Literal(yaml.SafeDumper):
    """Multi-line strings as literal blocks, so embedded files stay readable."""


def _str(dumper: Any, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    node: yaml.ScalarNode = dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)
    return node


_Literal.add_representer(str, _str)

_C_PLAIN: type[yaml.CSafeDumper] | None = getattr(yaml, "CSafeDumper", None)
_C_LITERAL: type[yaml.CSafeDumper] | None = None
if _C_PLAIN is not None:

    class _CLiteral(_C_PLAIN):  # type: ignore[valid-type, misc]
        """The same representers as _Literal, emitted by libyaml."""

    _CLiteral.add_representer(str, _str)
    _C_LITERAL = _CLiteral


def _string_agrees(value: str, literal_blocks: bool, allow_unicode: bool) -> bool:
    line = _UNICODE_LINE if allow_unicode else _ASCII_LINE
    if "\n" not in value:
        return line.match(value) is not None
    if not literal_blocks:
        return False  # double-quoted with escapes: folded differently when long
    # A literal block with no chomping or indentation indicator, and no trailing spaces (which
    # would force double quotes).
    if value.endswith("\n\n") or value.startswith((" ", "\n")) or " \n" in value:
        return False
    lines = _UNICODE_LINES if allow_unicode else _ASCII_LINES
    return lines.match(value) is not None


def libyaml_agrees(doc: Any, *, literal_blocks: bool, allow_unicode: bool) -> bool:
    """Whether libyaml's emitter writes ``doc`` exactly as the pure-Python emitter does."""
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if not _string_agrees(node, literal_blocks, allow_unicode):
                return False
        elif isinstance(node, Mapping):
            for key, value in node.items():
                if not isinstance(key, str) or _KEY.match(key) is None:
                    return False
                stack.append(value)
        elif isinstance(node, list | tuple):
            stack.extend(node)
        elif not (node is None or isinstance(node, bool | int | float)):
            return False  # anything else: let the reference emitter decide
    return isinstance(doc, Mapping) and bool(doc)


def dump(
    doc: Mapping[str, Any],
    *,
    literal_blocks: bool = False,
    allow_unicode: bool = False,
    width: int = 80,
    sort_keys: bool = False,
) -> str:
    """``doc`` as block-style YAML; multi-line strings as literal blocks when ``literal_blocks``."""
    dumper: type[Any] = _Literal if literal_blocks else yaml.SafeDumper
    if (
        USE_LIBYAML
        and _C_PLAIN is not None
        and libyaml_agrees(doc, literal_blocks=literal_blocks, allow_unicode=allow_unicode)
    ):
        fast = _C_LITERAL if literal_blocks else _C_PLAIN
        dumper = fast if fast is not None else dumper
    text: str = yaml.dump(
        doc,
        Dumper=dumper,
        sort_keys=sort_keys,
        default_flow_style=False,
        allow_unicode=allow_unicode,
        width=width,
    )
    return text
