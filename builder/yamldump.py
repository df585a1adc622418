"""YAML serialization: the one way owuibuild turns data into YAML text (cloud-config, compose,
network-config, Qdrant's config).

Pure: data in, text out. The reference is PyYAML's ``yaml.dump`` with the safe representer and
its pure-Python emitter, and every document comes out as exactly those bytes. Two things make
large renders fast without leaving the reference:

* Documents of plain data (dicts with text keys, lists, tuples, text, ints, bools, None, no
  object twice) are turned into the emitter's events here, in one walk, with the tags, implicit
  flags and styles the representer and serializer would have given them; building and
  resolving PyYAML's node graph was most of a large render's time. Anything else (floats,
  other types, shared or recursive containers, unusual keys) goes through ``yaml.dump`` itself.
* libyaml's C emitter writes the events where it is installed, but only for documents on which
  it is known to write the same bytes as the pure-Python emitter; anything else goes to the
  pure-Python emitter. The two differ on a few inputs (a keep-chomped literal block makes
  libyaml end the document with '...'; they fold long double-quoted scalars at different
  columns; libyaml escapes characters outside the Basic Multilingual Plane; keys with line
  breaks or empty keys get different styles), so the guard admits only plain keys and strings
  of characters both print as they are, with multi-line strings only where they become literal
  blocks that need no chomping indicator.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache, lru_cache
from typing import Any

import yaml
from yaml.events import (
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)

# Whether to use libyaml's emitter where it agrees (tests turn it off to compare the two).
USE_LIBYAML: bool = bool(getattr(yaml, "__with_libyaml__", False))

_KEY = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_./-]*\Z")
# Printed as they are by both emitters: printable ASCII and the printable BMP (no BOM).
_ASCII_LINE = re.compile("[\x20-\x7e]*\\Z")
_ASCII_LINES = re.compile("[\n\x20-\x7e]*\\Z")
_PRINTABLE_BMP = "\x20-\x7e\u00a0-\ud7ff\ue000-\ufefe\uff00-\ufffd"


@cache
def _unicode_pattern(lines: bool) -> re.Pattern[str]:
    """Compiled on first use: a class of the whole BMP takes longer to compile than most
    renders spend on YAML, and ASCII text (nearly all of it) never needs it."""
    return re.compile("[" + ("\n" if lines else "") + _PRINTABLE_BMP + "]*\\Z")


def _printable(value: str, allow_unicode: bool, lines: bool) -> bool:
    if value.isascii():
        return (_ASCII_LINES if lines else _ASCII_LINE).match(value) is not None
    return allow_unicode and _unicode_pattern(lines).match(value) is not None


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
    if "\n" not in value:
        return _printable(value, allow_unicode, lines=False)
    if not literal_blocks:
        return False  # double-quoted with escapes: folded differently when long
    # A literal block with no chomping or indentation indicator, and no trailing spaces (which
    # would force double quotes).
    if value.endswith("\n\n") or value.startswith((" ", "\n")) or " \n" in value:
        return False
    return _printable(value, allow_unicode, lines=True)


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


# -- events ------------------------------------------------------------------------------------

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
# What the serializer gives every block collection of a safe dump with default_flow_style=False.
_MAPPING_START = MappingStartEvent(None, "tag:yaml.org,2002:map", True, flow_style=False)
_SEQUENCE_START = SequenceStartEvent(None, "tag:yaml.org,2002:seq", True, flow_style=False)
_MAPPING_END, _SEQUENCE_END = MappingEndEvent(), SequenceEndEvent()
_OPEN = (StreamStartEvent(), DocumentStartEvent(explicit=None))
_CLOSE = (DocumentEndEvent(explicit=None), StreamEndEvent())
_IMPLICIT = yaml.SafeDumper.yaml_implicit_resolvers


@lru_cache(maxsize=1 << 16)
def _resolved(value: str) -> str:
    """The tag a plain scalar ``value`` reads back as: what the resolver's implicit check says."""
    resolvers = _IMPLICIT.get(value[0] if value else "", []) + _IMPLICIT.get(None, [])
    for tag, pattern in resolvers:
        if pattern.match(value):
            return str(tag)
    return _STR


class _Unplain(Exception):
    """The document is not plain data: the reference representer must handle it."""


@lru_cache(maxsize=1 << 16)
def _text_event(value: str, literal_blocks: bool, allow_unicode: bool) -> tuple[ScalarEvent, bool]:
    """A string's scalar event, and whether libyaml writes it as the reference does."""
    style = "|" if literal_blocks and "\n" in value else None
    event = ScalarEvent(None, _STR, (_resolved(value) == _STR, True), value, style=style)
    return event, _string_agrees(value, literal_blocks, allow_unicode)


@lru_cache(maxsize=1 << 12)
def _key_event(key: str) -> ScalarEvent:
    return ScalarEvent(None, _STR, (_resolved(key) == _STR, True), key)


def _events(
    doc: Mapping[str, Any], literal_blocks: bool, allow_unicode: bool, sort_keys: bool
) -> tuple[list[Event], bool]:
    """The events the safe representer and serializer would emit for ``doc``, and whether libyaml
    agrees with the pure-Python emitter on all of them. Raises _Unplain for anything else."""
    out: list[Event] = list(_OPEN)
    emit = out.append
    seen: set[int] = set()  # containers met so far: one met twice would be an anchor and alias
    agrees = True

    def walk(node: Any) -> None:
        nonlocal agrees
        kind = type(node)
        if kind is str:
            event, fits = _text_event(node, literal_blocks, allow_unicode)
            emit(event)
            agrees = agrees and fits
        elif kind is dict:
            if id(node) in seen:
                raise _Unplain
            seen.add(id(node))
            emit(_MAPPING_START)
            items = sorted(node.items(), key=lambda kv: kv[0]) if sort_keys else node.items()
            for key, value in items:
                if type(key) is not str or _KEY.match(key) is None:
                    raise _Unplain
                emit(_key_event(key))
                walk(value)
            emit(_MAPPING_END)
        elif kind is list or kind is tuple:
            if node or kind is list:  # the empty tuple is the one container never aliased
                if id(node) in seen:
                    raise _Unplain
                seen.add(id(node))
            emit(_SEQUENCE_START)
            for item in node:
                walk(item)
            emit(_SEQUENCE_END)
        elif kind is bool:
            emit(ScalarEvent(None, _BOOL, (True, False), "true" if node else "false"))
        elif kind is int:
            text = str(node)
            emit(ScalarEvent(None, _INT, (_resolved(text) == _INT, False), text))
        elif node is None:
            emit(ScalarEvent(None, _NULL, (True, False), "null"))
        else:
            raise _Unplain

    walk(doc)
    out += _CLOSE
    return out, agrees and bool(doc)


def dump(
    doc: Mapping[str, Any],
    *,
    literal_blocks: bool = False,
    allow_unicode: bool = False,
    width: int = 80,
    sort_keys: bool = False,
) -> str:
    """``doc`` as block-style YAML; multi-line strings as literal blocks when ``literal_blocks``."""
    try:
        if type(doc) is not dict:
            raise _Unplain
        events, agrees = _events(doc, literal_blocks, allow_unicode, sort_keys)
    except _Unplain:
        return _represented(doc, literal_blocks, allow_unicode, width, sort_keys)
    emitter: type[Any] = yaml.SafeDumper
    if USE_LIBYAML and agrees and _C_PLAIN is not None:
        emitter = _C_PLAIN
    text: str = yaml.emit(events, Dumper=emitter, width=width, allow_unicode=allow_unicode)
    return text


def _represented(
    doc: Mapping[str, Any], literal_blocks: bool, allow_unicode: bool, width: int, sort_keys: bool
) -> str:
    """``doc`` through PyYAML's representer: the reference, for documents not of plain data."""
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
