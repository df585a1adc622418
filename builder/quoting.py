"""Quoting: how a value is written into each native configuration language, and the Jinja2
environment that renders the native config templates under ``templates/shared``.

Every ``{{ ... }}`` in those templates must go through one of the filters here: the
environment's ``finalize`` refuses any other string, so a template cannot paste a raw value.
A value that a language cannot represent (a newline in a systemd directive, say) raises
``QuotingError`` instead of being mangled. Pure functions; templates are read from the package
(and their compiled form cached beside them, as Python caches bytecode).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import jinja2.bccache


class QuotingError(ValueError):
    """A value cannot be written safely into the target language."""


class Quoted(str):
    """A string that already went through a quoting filter."""

    __slots__ = ()


def _no_controls(value: str, language: str, *, allow: str = "") -> str:
    for ch in value:
        if (ord(ch) < 0x20 or ord(ch) == 0x7F) and ch not in allow:
            raise QuotingError(f"{language}: control character {ch!r} in {value!r}")
    return value


def shell(value: object) -> Quoted:
    """One POSIX shell word."""
    text = _no_controls(str(value), "shell", allow="\t")
    return Quoted(shlex.quote(text))


def shell_command(argv: tuple[str, ...] | list[str]) -> Quoted:
    """A whole command line, each word quoted."""
    return Quoted(" ".join(shell(a) for a in argv))


_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./:@=+-]+")


def plain_words(*argv: str) -> Quoted:
    """A command line whose every word is plain (no quoting needed in a systemd unit or in a
    shell's word splitting, no glob character). Every word of such a line comes from the plan;
    anything else is a bug, so it is refused rather than quoted wrong."""
    for word in argv:
        if not _PLAIN_WORD.fullmatch(word):
            raise QuotingError(f"unexpected character in command word {word!r}")
    return Quoted(" ".join(argv))


def sql_literal(value: object) -> Quoted:
    """A SQL string literal (standard_conforming_strings = on, the default since 9.1)."""
    text = str(value)
    if "\0" in text:
        raise QuotingError(f"SQL: NUL in {text!r}")
    return Quoted("'" + text.replace("'", "''") + "'")


def sql_ident(value: object) -> Quoted:
    """A SQL identifier, always double-quoted (so it is never folded or taken as a keyword)."""
    text = str(value)
    if "\0" in text or not text:
        raise QuotingError(f"SQL identifier {text!r} is empty or holds NUL")
    if len(text.encode()) > 63:
        raise QuotingError(f"SQL identifier {text!r} is longer than 63 bytes")
    return Quoted('"' + text.replace('"', '""') + '"')


def pg_conf(value: object) -> Quoted:
    """A postgresql.conf string value."""
    text = _no_controls(str(value), "postgresql.conf")
    return Quoted("'" + text.replace("\\", "\\\\").replace("'", "''") + "'")


def pgpass_field(value: object) -> Quoted:
    """One field of a libpq password file (pgpass): ':' and '\\' are escaped with '\\'. A
    line ends the entry, so a field cannot hold a control character."""
    text = _no_controls(str(value), "pgpass")
    return Quoted(text.replace("\\", "\\\\").replace(":", "\\:"))


_HBA_TOKEN = re.compile(r"^[A-Za-z0-9_.:/-]+$")


def hba(value: object) -> Quoted:
    """A pg_hba.conf database or user name, quoted so it never means a keyword like 'all'.

    pg_hba.conf has no escape for '"', so names holding one are refused.
    """
    text = _no_controls(str(value), "pg_hba.conf")
    if not text or '"' in text or " " in text:
        raise QuotingError(f"pg_hba.conf cannot hold the name {text!r}")
    return Quoted(f'"{text}"')


def hba_address(value: object) -> Quoted:
    """A pg_hba.conf address (CIDR)."""
    text = str(value)
    if not _HBA_TOKEN.match(text):
        raise QuotingError(f"pg_hba.conf: {text!r} is not an address")
    return Quoted(text)


def systemd(value: object) -> Quoted:
    """A double-quoted systemd word (Environment=, or one argument of an Exec line).

    '%' starts a specifier and '$' a variable in Exec lines, so both are doubled.
    """
    text = _no_controls(str(value), "systemd")
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return Quoted(f'"{text}"')


def environment_file(value: object) -> Quoted:
    """A double-quoted value in a systemd EnvironmentFile= (no specifiers or variables there:
    only backslash and the double quote are special)."""
    text = _no_controls(str(value), "systemd")
    return Quoted('"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"')


_SYSTEMD_WORD = re.compile(r"[A-Za-z0-9:_.@-]+")


def systemd_word(value: str) -> Quoted:
    """A unit or credential name: plain characters only, so it needs no quoting."""
    if not _SYSTEMD_WORD.fullmatch(value):
        raise QuotingError(f"systemd: {value!r} is not a plain unit or credential name")
    return Quoted(value)


def systemd_path(value: object) -> Quoted:
    """A path in a systemd directive that takes paths (no quoting there: refuse odd ones)."""
    text = str(value)
    if not re.match(r"^/[A-Za-z0-9_./@-]*$", text):
        raise QuotingError(f"systemd: {text!r} is not a plain absolute path")
    return Quoted(text)


# Characters that stand for themselves inside a double-quoted redis.conf argument.
_REDIS_PLAIN = re.compile(r'[^\\"\x00-\x1f\x7f]*')


def redis(value: object) -> Quoted:
    """A redis.conf argument: double-quoted, with the escapes redis's sdssplitargs knows."""
    text = str(value)
    if _REDIS_PLAIN.fullmatch(text):  # the common case, without a loop over the characters
        return Quoted(f'"{text}"')
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return Quoted('"' + "".join(out) + '"')


_NFT_WORD = re.compile(r"^[A-Za-z0-9_./:-]+$")


def nft(value: object) -> Quoted:
    """An nftables word: an address, a network or a name. nft strings have no escapes."""
    text = str(value)
    if not _NFT_WORD.match(text):
        raise QuotingError(f"nftables cannot hold {text!r}")
    return Quoted(text)


def nft_comment(value: object) -> Quoted:
    text = str(value)
    if not re.match(r"^[A-Za-z0-9 _./:-]{0,128}$", text):
        raise QuotingError(f"nftables comment cannot hold {text!r}")
    return Quoted(f'"{text}"')


FILTERS = {
    "sh": shell,
    "sql_literal": sql_literal,
    "sql_ident": sql_ident,
    "pg_conf": pg_conf,
    "hba": hba,
    "hba_address": hba_address,
    "systemd": systemd,
    "systemd_path": systemd_path,
    "redis": redis,
    "nft": nft,
    "nft_comment": nft_comment,
}


def _finalize(value: Any) -> Any:
    if isinstance(value, Quoted | int):  # numbers need no quoting in any of these languages
        return value
    raise QuotingError(f"template printed {value!r} without a quoting filter")


def _load(name: str) -> str:
    return resources.files("owuibuild").joinpath("templates", "shared", name).read_text("utf-8")


class _CompiledTemplates(jinja2.BytecodeCache):
    """Compiled templates kept beside their sources, as Python keeps bytecode in __pycache__.

    Compiling the templates took a sixth of rendering a small fleet, every time. Each entry
    is keyed by a checksum of its template's source together with everything that shapes the
    compiled code (Jinja's version, the environment's options, the filters and how they are
    called), and Jinja's own header names the Python version, so an entry is used only for
    exactly what it was compiled from. Writing is best effort and atomic, and skipped where
    Python writes no bytecode either (PYTHONDONTWRITEBYTECODE, or a read-only install).
    """

    def __init__(self, directory: Path, shape: str) -> None:
        self.directory = directory
        self.shape = shape

    def get_source_checksum(self, source: str) -> str:
        return hashlib.sha256(f"{self.shape}\0{source}".encode()).hexdigest()

    def _path(self, bucket: jinja2.bccache.Bucket) -> Path:
        return self.directory / f"{bucket.key}.jinja"

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            with self._path(bucket).open("rb") as fh:
                bucket.load_bytecode(fh)  # resets the bucket on a mismatch
        except FileNotFoundError:
            pass
        except Exception:  # a damaged entry: compile again
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        if sys.dont_write_bytecode:
            return
        path = self._path(bucket)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            self.directory.mkdir(exist_ok=True)
            with tmp.open("wb") as fh:
                bucket.write_bytecode(fh)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def _shape(env: jinja2.Environment) -> str:
    """What besides a template's source decides its compiled code."""
    syntax = (
        env.block_start_string,
        env.block_end_string,
        env.variable_start_string,
        env.variable_end_string,
        env.comment_start_string,
        env.comment_end_string,
        env.line_statement_prefix,
        env.line_comment_prefix,
        env.trim_blocks,
        env.lstrip_blocks,
        env.newline_sequence,
        env.keep_trailing_newline,
        env.autoescape,
        env.optimized,
    )
    # what pass_context and its kin mark a callable with: it changes how the code calls it
    calls = {n: str(getattr(f, "jinja_pass_arg", None)) for n, f in sorted(env.filters.items())}
    finalize = str(getattr(env.finalize, "jinja_pass_arg", None)) if env.finalize else None
    return repr((jinja2.__version__, syntax, finalize, calls))


def make_environment(compiled: Path | None) -> jinja2.Environment:
    """The templates' environment; compiled templates cached in ``compiled`` when given."""
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_load),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.filters.update(FILTERS)
    if compiled is not None:
        env.bytecode_cache = _CompiledTemplates(compiled, _shape(env))
    return env


@cache
def environment() -> jinja2.Environment:
    templates = resources.files("owuibuild").joinpath("templates", "shared")
    return make_environment(templates / "__pycache__" if isinstance(templates, Path) else None)


def render_template(template: str, /, **context: Any) -> str:
    """Render ``templates/shared/<name>`` with the quoting filters."""
    return environment().get_template(template).render(**context)
