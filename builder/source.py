"""Loading a blueprint: bytes -> data plus a map from JSON paths to line:col.

This room reads one file and parses YAML (with libyaml where it reads the text as PyYAML's own
parser does, the reference). It refuses what is not a sane blueprint (binary, huge, alias
bombs, duplicate keys, non-mapping documents) with diagnostics, never exceptions.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import ScalarEvent
from yaml.resolver import Resolver

from .diagnostics import Diagnostic, JsonPath, error

MAX_BYTES = 4 * 1024 * 1024
# A blueprint of 500 instances has a few thousand nodes; aliases that expand past this are a bomb.
MAX_NODES = 200_000
# Blueprints are a few levels deep; anything deeper is hostile or a mistake (and would
# exhaust Python's recursion limit in the YAML composer).
MAX_DEPTH = 64


@dataclass(frozen=True)
class Mark:
    line: int  # 1-based
    column: int  # 1-based


@dataclass
class Source:
    """A parsed blueprint and where each of its values came from."""

    name: str
    text: str
    data: Any
    sha256: str
    values: dict[JsonPath, Mark] = field(default_factory=dict)
    keys: dict[JsonPath, Mark] = field(default_factory=dict)

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()

    def mark_of(self, path: JsonPath, *, key: bool = False) -> Mark | None:
        """The closest known location of a path (its key when ``key``), walking up if needed."""
        if key and path in self.keys:
            return self.keys[path]
        probe = path
        while True:
            if probe in self.values:
                return self.values[probe]
            if not probe:
                return None
            probe = probe[:-1]

    def locate(self, d: Diagnostic, *, key: bool = False) -> Diagnostic:
        mark = self.mark_of(d.path, key=key)
        if mark is None:
            return d.located(self.name, None, None)
        return d.located(self.name, mark.line, mark.column)


class _TooBig(Exception):
    pass


class _TooDeep(Exception):
    def __init__(self, mark: Mark) -> None:
        self.mark = mark


class _KeyNotText(Exception):
    def __init__(self, key: object, mark: Mark, path: JsonPath) -> None:
        self.key, self.mark, self.path = key, mark, path


class _DuplicateKey(Exception):
    def __init__(self, key: object, mark: Mark, first: Mark) -> None:
        self.key, self.mark, self.first = key, mark, first


def _mark(node: yaml.Node) -> Mark:
    return Mark(node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    """Turns a composed YAML node graph into plain data, recording locations and a node budget."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.budget = MAX_NODES
        self.values: dict[JsonPath, Mark] = {}
        self.keys: dict[JsonPath, Mark] = {}

    def build(self, node: yaml.Node, path: JsonPath) -> Any:
        self.budget -= 1
        if self.budget < 0:
            raise _TooBig
        if len(path) > MAX_DEPTH:
            raise _TooDeep(_mark(node))
        self.values.setdefault(path, _mark(node))
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            seen: dict[Any, Mark] = {}
            for key_node, value_node in node.value:
                key = self.build_scalar_key(key_node, path)
                if key in seen:
                    raise _DuplicateKey(key, _mark(key_node), seen[key])
                seen[key] = _mark(key_node)
                self.keys.setdefault((*path, key), _mark(key_node))
                out[key] = self.build(value_node, (*path, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        return self._construct(node)

    def _construct(self, node: yaml.Node) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:
            # A value its explicit tag cannot hold (`!!int x`, `!!bool x`): bad input, not a bug.
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"the value cannot be read as {node.tag.replace('tag:yaml.org,2002:', '!!')}",
                node.start_mark,
            ) from exc

    def build_scalar_key(self, node: yaml.Node, parent: JsonPath) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            # Complex keys cannot come from a blueprint; keep them visible to the schema check.
            return f"<{node.tag.rsplit(':', 1)[-1]} key>"
        key = self._construct(node)
        if not isinstance(key, str):
            raise _KeyNotText(key, _mark(node), (*parent, str(key)))
        return key


class _Reference(Exception):
    """Input where libyaml and PyYAML's pure-Python parser are known to part: parse it again
    with the pure-Python parser, the reference."""


# Where the two parsers part, found by fuzzing them against each other (tests/unit/test_source):
# tabs and byte order marks inside the text, tags, block scalar headers, '?' in a plain scalar
# of a flow collection and the location of an empty value. Blueprints seldom hold any of them.
def _parts_at_sight(text: str) -> bool:
    return "\t" in text or "\ufeff" in text[1:]


_CParser: type[Any] | None = getattr(getattr(yaml, "cyaml", None), "CParser", None)
_FastLoader: type[Any] | None = None
if _CParser is not None:

    class _LibyamlLoader(Composer, _CParser, SafeConstructor, Resolver):  # type: ignore[misc, valid-type]
        """libyaml's scanner and parser (C) under PyYAML's own composer, constructor and
        resolver (Python): the same nodes, marks and values as yaml.SafeLoader, in a tenth of
        the time. The composer stays in Python so that hostile nesting ends in a
        RecursionError, not in a C stack overflow."""

        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)  # type: ignore[misc]
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            Composer.__init__(self)

        def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
            event = self.peek_event()
            if getattr(event, "tag", None) is not None:
                raise _Reference
            if isinstance(event, ScalarEvent) and (
                event.style in ("|", ">")
                or not (event.value or event.style)
                # PyYAML ends a plain scalar in a flow collection at '?'; libyaml does not
                or (not event.style and "?" in event.value and getattr(parent, "flow_style", False))
            ):
                raise _Reference
            node: yaml.Node | None = super().compose_node(parent, index)
            return node

    _FastLoader = _LibyamlLoader


def _compose(text: str) -> tuple[yaml.Node | None, Any]:
    """The document's node graph, and the loader that constructs its values.

    libyaml parses first; if it finds anything wrong, or the text holds what the two parsers
    read differently, PyYAML's pure-Python parser parses again, so the result, and a problem's
    wording and location, are always the reference's. Raises what the pure-Python parser
    raises."""
    if _FastLoader is not None and not _parts_at_sight(text):
        fast = _FastLoader(text)
        try:
            return fast.get_single_node(), fast
        except Exception:  # _Reference or a problem: the reference parser below reports it
            pass
        finally:
            fast.dispose()
    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_node(), loader
    finally:
        loader.dispose()


def parse(text: str, name: str, sha256: str = "") -> tuple[Source | None, list[Diagnostic]]:
    """Parse YAML text; return the source or diagnostics that explain why not."""
    try:
        node, loader = _compose(text)
    except RecursionError:
        return None, [_too_deep(name, None)]
    except yaml.reader.ReaderError as exc:
        line = text[: exc.position].count("\n") + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        return None, [
            error(
                (),
                f"the file holds a control character ({_codepoint(exc.character)}) "
                "that YAML does not allow",
                "remove it; blueprints are plain UTF-8 text",
            ).located(name, line, column)
        ]
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        d = error((), f"invalid YAML: {problem}", "check indentation, quoting and ':' after keys")
        if mark is None:
            return None, [d.located(name, None, None)]
        return None, [d.located(name, mark.line + 1, mark.column + 1)]
    except yaml.YAMLError as exc:
        return None, [error((), f"invalid YAML: {exc}").located(name, None, None)]
    if node is None:
        return None, [
            error((), "the blueprint is empty", "run 'owuibuild init' for a starter").located(
                name, 1, 1
            )
        ]
    builder = _Builder(loader)
    try:
        data = builder.build(node, ())
    except _TooBig:
        return None, [
            error(
                (),
                f"the document expands to more than {MAX_NODES} nodes",
                "YAML aliases that multiply (an 'alias bomb') are refused",
            ).located(name, 1, 1)
        ]
    except _TooDeep as deep:
        return None, [_too_deep(name, deep.mark)]
    except RecursionError:
        return None, [_too_deep(name, None)]
    except _KeyNotText as bad:
        return None, [
            error(
                bad.path,
                f"mapping key {bad.key!r} is not text",
                "quote the key, or check the indentation",
            ).located(name, bad.mark.line, bad.mark.column)
        ]
    except _DuplicateKey as dup:
        return None, [
            error(
                (),
                f"duplicate key {dup.key!r} (first defined on line {dup.first.line})",
                "each key may appear once in a mapping",
            ).located(name, dup.mark.line, dup.mark.column)
        ]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        d = error((), f"invalid YAML value: {getattr(exc, 'problem', None) or exc}")
        if mark is None:
            return None, [d.located(name, None, None)]
        return None, [d.located(name, mark.line + 1, mark.column + 1)]
    if not isinstance(data, dict):
        kind = type(data).__name__ if data is not None else "null"
        return None, [
            error(
                (),
                f"the blueprint must be a mapping, not {kind}",
                "start with 'apiVersion: owuibuild/v1'",
            ).located(name, _mark(node).line, _mark(node).column)
        ]
    return Source(name, text, data, sha256, builder.values, builder.keys), []


def _codepoint(character: object) -> str:
    code = character if isinstance(character, int) else ord(str(character)[:1] or "\0")
    return f"U+{code:04X}"


def _too_deep(name: str, mark: Mark | None) -> Diagnostic:
    d = error(
        (),
        f"the document is nested more than {MAX_DEPTH} levels deep",
        "a blueprint is only a few levels deep; check the brackets and indentation",
    )
    return d.located(name, mark.line if mark else None, mark.column if mark else None)


def load(path: Path) -> tuple[Source | None, list[Diagnostic]]:
    """Read and parse a blueprint file."""
    name = str(path)
    try:
        if path.is_dir():
            return None, [
                error((), "is a directory, not a blueprint file").located(name, None, None)
            ]
        with path.open("rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return None, [error((), "no such file").located(name, None, None)]
    except OSError as exc:
        return None, [error((), f"cannot read: {exc.strerror or exc}").located(name, None, None)]
    if len(raw) > MAX_BYTES:
        return None, [
            error((), f"the file is larger than {MAX_BYTES // (1024 * 1024)} MiB").located(
                name, None, None
            )
        ]
    if b"\x00" in raw:
        return None, [error((), "the file is binary, not YAML text").located(name, None, None)]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        return None, [
            error((), "the file is not UTF-8 text", "save the blueprint as UTF-8").located(
                name, line, None
            )
        ]
    return parse(text, name, hashlib.sha256(raw).hexdigest())
