"""Verify: re-parse what the targets produced before anything is written.

A compiler checks its own output. Each artifact is parsed back by its format, and secrets are
traced: a file holding any secret value must be a secret (0600) file, and files that must
never hold secrets (Packer templates, the manifest, READMEs) hold none.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from .diagnostics import Diagnostic, error
from .pki import key_fingerprint
from .secrets import occurs_in
from .targets import Artifact

# libyaml's parser when present: re-parsing every file is most of a large render's time. The
# files are parsed into YAML's node graph, which checks all of their syntax; turning the nodes
# into Python objects would add nothing to that and cost a third more.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_CParser: Any = getattr(getattr(yaml, "cyaml", None), "CParser", None)


def _compose(data: bytes) -> type[yaml.Node] | None:
    """Parse the YAML stream ``data`` as ``yaml.compose`` does; the kind of its root node
    (None for an empty stream). Raises on anything yaml.compose refuses.

    Composing checks that the stream is valid YAML, holds at most one document, and that each
    alias names an anchor defined before it, and anchors are defined once. A stream without
    '*', '&' or '---' in its bytes has no aliases and no anchors, and at most one document
    (every document after the first starts with '---'): for such a stream libyaml's parser
    alone decides all of that, without building the node graph in Python, which took ten
    times as long (most of verifying a large render). Any other stream is composed."""
    utf16 = data[:2] in (b"\xff\xfe", b"\xfe\xff")  # where '---' is not those three bytes
    if _CParser is None or utf16 or b"*" in data or b"&" in data or b"---" in data:
        node = yaml.compose(data, Loader=_Loader)
        return None if node is None else type(node)
    parser = _CParser(data)
    parser.get_event()  # the stream start
    if isinstance(parser.get_event(), yaml.StreamEndEvent):
        return None
    root = parser.get_event()
    parser.raw_parse()  # every further event, through libyaml's parser, to the stream's end
    kinds = {
        yaml.MappingStartEvent: yaml.MappingNode,
        yaml.SequenceStartEvent: yaml.SequenceNode,
        yaml.ScalarEvent: yaml.ScalarNode,
    }
    return kinds[type(root)]


def _yaml(data: bytes) -> None:
    _compose(data)


def _user_data(data: bytes) -> None:
    from .targets.hosts import unpack_user_data

    data = unpack_user_data(data)  # gzipped where the platform's limit asked for it
    if not data.startswith(b"#cloud-config\n"):
        raise ValueError("user-data must start with '#cloud-config'")
    if _compose(data) is not yaml.MappingNode:
        raise ValueError("user-data is not a mapping")


def _json(data: bytes) -> None:
    json.loads(data)


def _hcl(data: bytes) -> None:
    # HashiCorp's own HCL parser (the one Packer uses), compiled into pygohcl: nothing to build
    # per render, where python-hcl2's Lark tables took longer to load than the files to parse.
    import pygohcl

    pygohcl.loads(data.decode("utf-8"))


def _env(data: bytes) -> None:
    # only "\n" ends a line in an env file (str.splitlines would also split at U+2028 etc.)
    for n, line in enumerate(data.decode("utf-8").split("\n"), 1):
        if line and not line.startswith("#") and "=" not in line:
            raise ValueError(f"line {n} is not KEY=VALUE")


def parser_for(path: str) -> Callable[[bytes], None] | None:
    name = path.rsplit("/", 1)[-1]
    if name == "user-data":
        return _user_data
    if name in ("meta-data", "network-config") or name.endswith((".yaml", ".yml")):
        return _yaml
    if name.endswith(".json"):
        return _json
    if name.endswith(".hcl"):
        return _hcl
    if name.endswith(".env"):
        return _env
    return None


def never_secret(path: str) -> bool:
    return path.startswith("packer/") or path.endswith((".md", ".json", ".hcl"))


def leaked_secrets(data: bytes, secrets: frozenset[str], lengths: frozenset[int]) -> bool:
    """Whether any secret value occurs in ``data`` (latin-1 maps each byte to one character, so
    an ASCII secret is found wherever its bytes are)."""
    return occurs_in(data.decode("latin-1"), secrets, lengths)


def verify(
    artifacts: Iterable[Artifact],
    secrets: Iterable[str],
    private_keys: Iterable[str] = (),
    nowhere: Iterable[str] = (),
) -> list[Diagnostic]:
    """Problems of the artifacts: a file that does not parse, a secret in a non-secret file, a
    private key (each of ``private_keys``, PEM) in a non-secret file, or any of ``nowhere``
    (the fleet's seed-signing secret and key, which no host may hold) in any file at all."""
    values = frozenset(secrets)
    kept_back = [n.encode() for n in nowhere]
    lengths = frozenset(len(v) for v in values)
    # A line of each private key's PEM body (base64 has '+' and '/', so not a secret token).
    key_lines = [key_fingerprint(k).encode() for k in private_keys]
    problems: list[Diagnostic] = []
    for a in artifacts:
        where = ("output", a.path)
        parse = parser_for(a.path)
        if parse is not None:
            try:
                parse(a.data)
            except Exception as exc:  # any parser failure is a generator bug to report
                problems.append(
                    error(
                        where,
                        f"generated {a.path} does not parse: {exc}",
                        "this is a bug in owuibuild; please report it",
                    )
                )
        if any(n in a.data for n in kept_back):
            problems.append(
                error(
                    where,
                    f"the fleet's seed-signing key would be written to {a.path}",
                    "this is a bug in owuibuild; please report it",
                )
            )
        if never_secret(a.path) and a.secret:
            problems.append(error(where, f"{a.path} must never hold secrets but is marked secret"))
        if not a.secret and (
            (values and leaked_secrets(a.data, values, lengths))
            or any(line in a.data for line in key_lines)
        ):
            problems.append(
                error(
                    where,
                    f"a secret value would be written to non-secret file {a.path}",
                    "this is a bug in owuibuild; please report it",
                )
            )
    return problems
