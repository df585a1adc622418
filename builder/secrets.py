"""The secret store: `<blueprint>.secrets.yml`, mode 0600.

The only room with randomness. Secrets are generated once, on the first render, and reused on
every later render so output stays byte-identical. Values never leave this module except as
the `Secrets` mapping handed to the pure targets.

The file also keeps one thing that is not secret, under its own top-level key (SEEDS_KEY): the
record of each host's latest seed (owuibuild.seed_manifest.SeedRecord). It lives here because
this is the one file users must keep: a host refuses a seed older than the one it applied, so
losing the records would make the next seeds unusable on running hosts. Every write keeps them.
"""

from __future__ import annotations

import os
import re
import secrets as random_source
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import scram
from .diagnostics import Diagnostic, error
from .seed_manifest import SeedRecord

if TYPE_CHECKING:
    from .pki import FleetPKI

# URL-, shell-, SQL- and YAML-safe, so a secret never needs quoting anywhere it goes.
SECRET_PATTERN = re.compile(r"^[A-Za-z0-9_-]{24,256}$")
HEADER = (
    "# owuibuild secrets for {blueprint}. Generated once; keep this file private (mode 0600)\n"
    "# and back it up: the hosts' passwords and keys come from it.\n"
)


# A password PostgreSQL keeps as a SCRAM verifier has the verifier sealed next to it, under its
# name with this suffix (see owuibuild.scram): derived, so deleting the entry only costs time.
SEALED_SUFFIX = "_scram"


def sealed_name(name: str) -> str:
    return f"{name}{SEALED_SUFFIX}"


# Runs of the characters a secret is made of: a secret can only occur inside one of these.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{24,}")


def occurs_in(text: str, values: frozenset[str], lengths: frozenset[int]) -> bool:
    """Whether any of ``values`` (secrets of SECRET_PATTERN's form, ``lengths`` their lengths)
    occurs in ``text``: one set lookup per window of each length inside each token, instead of
    a scan of the text for every secret."""
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in values:
            return True
        for size in lengths:
            for start in range(len(token) - size + 1):
                if token[start : start + size] in values:
                    return True
    return False


@dataclass(frozen=True)
class Secrets:
    values: Mapping[str, str]
    # The fleet CA and host certificates (owuibuild.pki), kept in a file of their own.
    pki: FleetPKI | None = None
    # Not secret: the stored record of each host's latest seed, by host name (see SEEDS_KEY).
    seeds: Mapping[str, SeedRecord] = field(default_factory=dict)

    @property
    def tls(self) -> FleetPKI:
        """The fleet's PKI; every render has one (a test that builds Secrets by hand may not)."""
        if self.pki is None:
            raise LookupError("these secrets carry no fleet CA")
        return self.pki

    def __getitem__(self, name: str) -> str:
        return self.values[name]

    def scram_verifier(self, name: str, role: str) -> str:
        """The SCRAM verifier of password ``name`` for ``role``: the store's sealed copy when it
        was made for exactly this password and role, else computed (the same bytes, slowly)."""
        password = self.values[name]
        sealed = self.values.get(sealed_name(name))
        found = scram.unseal(sealed, password, role) if sealed is not None else None
        return found if found is not None else scram.verifier(password, role)

    def all_values(self) -> frozenset[str]:
        """Every secret value (sealed verifiers are derived from them, not secrets of their own)."""
        return frozenset(v for k, v in self.values.items() if not k.endswith(SEALED_SUFFIX))

    @cached_property
    def _scan(self) -> tuple[frozenset[str], frozenset[int], bool]:
        values = self.all_values()
        tokens_only = all(SECRET_PATTERN.match(v) for v in values)
        return values, frozenset(len(v) for v in values), tokens_only

    def occur_in(self, text: str) -> bool:
        """Whether any secret value occurs in ``text``."""
        values, lengths, tokens_only = self._scan
        if not tokens_only:  # not a form owuibuild reads or writes: compare the slow way
            return any(v in text for v in values)
        return occurs_in(text, values, lengths)


def secrets_path(blueprint: Path) -> Path:
    name = blueprint.name
    stem = name[: -len(blueprint.suffix)] if blueprint.suffix in (".yml", ".yaml") else name
    return blueprint.with_name(f"{stem}.secrets.yml")


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _nest(flat: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name in sorted(flat):
        node = tree
        *parents, leaf = name.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = flat[name]
    return tree


def new_secret() -> str:
    return random_source.token_urlsafe(32)


# Every scalar is read as the text it is written as: a hand-edited secret of digits stays a
# string ("000123..." keeps its zeros), and no value is ever a number, a date or a null. libyaml
# parses when present (a large fleet's file has thousands of entries).
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
FORM_HINT = "secrets are 24-256 characters of A-Z a-z 0-9 _ -; delete it to generate a new one"


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _values(
    node: yaml.MappingNode, prefix: tuple[str, ...], name: str
) -> tuple[dict[str, str], list[Diagnostic]]:
    """The file's secrets by dotted name, with a located diagnostic for each bad entry."""
    found: dict[str, str] = {}
    problems: list[Diagnostic] = []
    seen: set[str] = set()
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            problems.append(
                error(prefix, "a key of the secrets file is not text").located(
                    name, *_mark(key_node)
                )
            )
            continue
        path = (*prefix, key_node.value)
        if key_node.value in seen:
            problems.append(
                error(path, "the secret is defined twice", "keep one of them").located(
                    name, *_mark(key_node)
                )
            )
            continue
        seen.add(key_node.value)
        if isinstance(value_node, yaml.MappingNode):
            inner, inner_problems = _values(value_node, path, name)
            found.update(inner)
            problems += inner_problems
        elif isinstance(value_node, yaml.ScalarNode) and SECRET_PATTERN.match(value_node.value):
            found[".".join(path)] = value_node.value
        else:
            # An empty value's own mark is wherever the next token starts: point at its key.
            at = value_node if getattr(value_node, "value", "") else key_node
            problems.append(
                error(path, "secret has an invalid form", FORM_HINT).located(name, *_mark(at))
            )
    return found, problems


# The top-level key of the seed records: no secret's name (the plan's names begin with fleet.,
# instances., monitoring. or qdrant.).
SEEDS_KEY = "seed_generations"
SEEDS_HEADER = (
    "# Not secret: the generation of each host's latest seed and digests of its content. Keep it:\n"
    "# a host refuses a seed older than the one it applied.\n"
)
SEEDS_HINT = (
    "restore the file from backup; deleting this entry starts the host's seeds at generation 1 "
    "again, which a running host refuses as older"
)
_HEX = re.compile(r"^[0-9a-f]{16,64}$")


def _seed_records(node: yaml.Node, name: str) -> tuple[dict[str, SeedRecord], list[Diagnostic]]:
    """The seed records under SEEDS_KEY, with a located diagnostic for each unreadable one."""
    records: dict[str, SeedRecord] = {}
    problems: list[Diagnostic] = []
    if not isinstance(node, yaml.MappingNode):
        return {}, [
            error((SEEDS_KEY,), "must be a mapping", SEEDS_HINT).located(name, *_mark(node))
        ]
    for host_node, record_node in node.value:
        host = str(host_node.value)
        path = (SEEDS_KEY, host)
        fields = (
            {k.value: v for k, v in record_node.value if isinstance(k, yaml.ScalarNode)}
            if isinstance(record_node, yaml.MappingNode)
            else {}
        )
        generation, content = fields.get("generation"), fields.get("content")
        replacement = fields.get("replacement", yaml.MappingNode("", []))
        ok = (
            isinstance(generation, yaml.ScalarNode)
            and generation.value.isdigit()
            and int(generation.value) >= 1
            and isinstance(content, yaml.ScalarNode)
            and len(content.value) == 64
            and bool(_HEX.match(content.value))
            and isinstance(replacement, yaml.MappingNode)
            and all(
                isinstance(k, yaml.ScalarNode)
                and isinstance(v, yaml.ScalarNode)
                and _HEX.match(v.value)
                for k, v in replacement.value
            )
        )
        if not ok or not isinstance(host_node, yaml.ScalarNode):
            problems.append(
                error(path, "the seed record is unreadable", SEEDS_HINT).located(
                    name, *_mark(host_node)
                )
            )
            continue
        assert isinstance(generation, yaml.ScalarNode) and isinstance(content, yaml.ScalarNode)
        assert isinstance(replacement, yaml.MappingNode)
        records[host] = SeedRecord(
            int(generation.value),
            content.value,
            {str(k.value): str(v.value) for k, v in replacement.value},
        )
    return records, problems


def read(path: Path) -> tuple[dict[str, str] | None, list[Diagnostic]]:
    """Read an existing secrets file; None when there is none. Nothing is written."""
    values, _, diagnostics = read_store(path)
    return values, diagnostics


def read_store(
    path: Path,
) -> tuple[dict[str, str] | None, dict[str, SeedRecord], list[Diagnostic]]:
    """An existing secrets file's secrets and seed records (None when there is no file)."""
    name = str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return None, {}, []
    if not stat.S_ISREG(st.st_mode):
        return (
            None,
            {},
            [error((), "the secrets file is not a regular file").located(name, None, None)],
        )
    if st.st_mode & 0o077:
        return (
            None,
            {},
            [
                error(
                    (),
                    f"the secrets file is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                    f"run: chmod 600 {name}",
                ).located(name, None, None)
            ],
        )
    unparsable = error((), "the secrets file cannot be parsed", "restore it from backup")
    try:
        root = yaml.compose(path.read_text("utf-8"), Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if mark is None:
            return None, {}, [unparsable.located(name, None, None)]
        return None, {}, [unparsable.located(name, mark.line + 1, mark.column + 1)]
    except (yaml.YAMLError, UnicodeDecodeError, OSError):
        return None, {}, [unparsable.located(name, None, None)]
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value == ""):
        return {}, {}, []
    if not isinstance(root, yaml.MappingNode):
        return (
            None,
            {},
            [error((), "the secrets file must be a mapping").located(name, *_mark(root))],
        )
    seed_nodes = [v for k, v in root.value if getattr(k, "value", None) == SEEDS_KEY]
    secret_nodes = [(k, v) for k, v in root.value if getattr(k, "value", None) != SEEDS_KEY]
    values, diagnostics = _values(yaml.MappingNode(root.tag, secret_nodes), (), name)
    seeds: dict[str, SeedRecord] = {}
    if seed_nodes:
        seeds, problems = _seed_records(seed_nodes[0], name)
        diagnostics += problems
    for node in seed_nodes[1:]:
        diagnostics.append(
            error((SEEDS_KEY,), "the seed records are defined twice", SEEDS_HINT).located(
                name, *_mark(node)
            )
        )
    if diagnostics:
        return None, {}, diagnostics
    return values, seeds, []


def complete(
    existing: Mapping[str, str] | None, needed: Iterable[str]
) -> tuple[dict[str, str], bool]:
    """Existing secrets plus new ones for every needed name; and whether anything was added."""
    values = dict(existing or {})
    added = False
    for name in needed:
        if name not in values:
            values[name] = new_secret()
            added = True
    return values, added


def seal_verifiers(values: dict[str, str], logins: Iterable[tuple[str, str]]) -> bool:
    """Seal the SCRAM verifier of each (password name, role) in ``logins`` into ``values``
    where no entry holds one made for that password and role; whether anything changed."""
    missing = []
    for name, role in logins:
        sealed = values.get(sealed_name(name))
        if sealed is None or scram.unseal(sealed, values[name], role) is None:
            missing.append((name, role))
    for (name, _), sealed in zip(missing, _seal_all(values, missing), strict=True):
        values[sealed_name(name)] = sealed
    return bool(missing)


# hashlib's PBKDF2 lets go of the GIL: a new fleet's verifiers are made on every core at once.
_SEAL_IN_THREADS = 16


def _seal_all(values: Mapping[str, str], logins: list[tuple[str, str]]) -> list[str]:
    """The seals of ``logins``, in their order."""
    if len(logins) < _SEAL_IN_THREADS:
        return [scram.seal(values[name], role) for name, role in logins]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda login: scram.seal(values[login[0]], login[1]), logins))


def write(
    path: Path,
    values: Mapping[str, str],
    blueprint_name: str,
    seeds: Mapping[str, SeedRecord] | None = None,
) -> None:
    """Write the secrets file atomically with mode 0600 from the start; the seed records after
    the secrets, under a comment that says they are none."""
    text = HEADER.format(blueprint=blueprint_name) + yaml.safe_dump(
        _nest(values), sort_keys=True, default_flow_style=False
    )
    if seeds:
        records = {SEEDS_KEY: {host: seeds[host].to_data() for host in sorted(seeds)}}
        text += SEEDS_HEADER + yaml.safe_dump(records, sort_keys=True, default_flow_style=False)
    write_private(path, text)


def save_seed_records(
    blueprint: Path, secrets: Secrets, records: Mapping[str, SeedRecord]
) -> list[Diagnostic]:
    """Keep ``records`` in the secrets file beside the stored ones (a host no longer in the
    blueprint keeps its record: were it added again, its seeds go on from there)."""
    path = secrets_path(blueprint)
    try:
        write(path, secrets.values, blueprint.name, {**secrets.seeds, **records})
    except OSError as exc:
        return [
            error(
                (),
                f"cannot write the seed generations to the secrets file: {exc.strerror or exc}",
            ).located(str(path), None, None)
        ]
    return []


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically, mode 0600 from its first byte."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a stale file from a crashed run may have another mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the umask must not matter either
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_or_create(
    blueprint: Path,
    needed: Iterable[str],
    *,
    create: bool = True,
    scram_logins: Iterable[tuple[str, str]] = (),
) -> tuple[Secrets | None, bool, list[Diagnostic]]:
    """The secrets for a blueprint: read, completed, and written back when new ones were needed.

    The SCRAM verifiers of ``scram_logins`` (password name, role) are sealed into the file too,
    so later renders need not compute them; a file that lacks only those is still written,
    but failing to write it then is no error (the next render computes them again).

    Returns (secrets, changed, diagnostics). With ``create`` False nothing is written, and
    ``changed`` tells whether the file would gain secrets.
    """
    path = secrets_path(blueprint)
    existing, seeds, diagnostics = read_store(path)
    if diagnostics:
        return None, False, diagnostics
    values, added = complete(existing, needed)
    sealed = seal_verifiers(values, scram_logins)
    if (added or sealed) and create:
        try:
            write(path, values, blueprint.name, seeds)
        except OSError as exc:
            if added:
                return (
                    None,
                    True,
                    [
                        error((), f"cannot write the secrets file: {exc.strerror or exc}").located(
                            str(path), None, None
                        )
                    ],
                )
    return Secrets(values, seeds=seeds), added, []
