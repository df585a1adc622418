"""Verify: re-parse what the targets produced before anything is written.

A compiler checks its own output. Each artifact is parsed back by its format, and secrets are
traced: a file holding any secret value must be a secret (0600) file, and files that must
never hold secrets (Packer templates, the manifest, READMEs) hold none.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

import yaml

from .diagnostics import Diagnostic, error
from .secrets import occurs_in
from .targets import Artifact

# libyaml's parser when present: re-parsing every file is most of a large render's time. The
# files are parsed into YAML's node graph, which checks all of their syntax; turning the nodes
# into Python objects would add nothing to that and cost a third more.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml(data: bytes) -> None:
    yaml.compose(data, Loader=_Loader)


def _user_data(data: bytes) -> None:
    if data[:2] == b"\x1f\x8b":  # gzip-compressed user-data
        import gzip

        data = gzip.decompress(data)
    if not data.startswith(b"#cloud-config\n"):
        raise ValueError("user-data must start with '#cloud-config'")
    if not isinstance(yaml.compose(data, Loader=_Loader), yaml.MappingNode):
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


def verify(artifacts: Iterable[Artifact], secrets: Iterable[str]) -> list[Diagnostic]:
    values = frozenset(secrets)
    lengths = frozenset(len(v) for v in values)
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
        if never_secret(a.path) and a.secret:
            problems.append(error(where, f"{a.path} must never hold secrets but is marked secret"))
        if not a.secret and values and leaked_secrets(a.data, values, lengths):
            problems.append(
                error(
                    where,
                    f"a secret value would be written to non-secret file {a.path}",
                    "this is a bug in owuibuild; please report it",
                )
            )
    return problems
