"""The secret store: `<blueprint>.secrets.yml`, mode 0600.

The only room with randomness. Secrets are generated once, on the first render, and reused on
every later render so output stays byte-identical. Values never leave this module except as
the `Secrets` mapping handed to the pure targets.

The file also keeps two things that are not secret, each under its own top-level key: the
record of each host's latest seed (SEEDS_KEY, owuibuild.seed_manifest.SeedRecord) and what each
instance holds of the fleet's shared ranges (ALLOCATIONS_KEY, owuibuild.allocation.Allocation).
They live here because this is the one file users must keep: a host refuses a seed older than
the one it applied, and an instance whose allocation is lost may be given another Redis port and
Docker network, which restarts it. Every write keeps both; neither is among the secret values.
"""

from __future__ import annotations

import os
import re
import secrets as random_source
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Network
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from . import scram
from .allocation import SUBNET_PREFIX, Allocation
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
    # Not secret: what each instance holds of the shared ranges, by name (see ALLOCATIONS_KEY).
    allocations: Mapping[str, Allocation] = field(default_factory=dict)

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


# The top-level key of the allocation records: no secret's name either.
ALLOCATIONS_KEY = "instance_allocations"
ALLOCATIONS_HEADER = (
    "# Not secret: what each instance holds of the fleet's shared ranges (its Docker network,\n"
    "# its Redis server's port, its share of PostgreSQL's connections), kept so that adding or\n"
    "# removing an instance moves no other. Keep it; a removed instance's entry keeps its slot\n"
    "# from newcomers until you delete the entry (after its data is gone).\n"
)
ALLOCATIONS_HINT = (
    "restore the file from backup; deleting the entry gives the instance its values anew at the "
    "next render, which may move its Redis server and Docker network and restart it"
)
_INSTANCE_NAME = re.compile(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$")
_NUMBER = re.compile(r"^[0-9]{1,5}$")
_ALLOCATION_FIELDS = frozenset({"docker_subnet", "redis_port", "connections"})


def _allocation(node: yaml.Node) -> Allocation | None:
    """One instance's record, or None when it is not one owuibuild writes."""
    if not isinstance(node, yaml.MappingNode):
        return None
    fields: dict[str, str] = {}
    for key, value in node.value:
        if not (
            isinstance(key, yaml.ScalarNode)
            and key.value in _ALLOCATION_FIELDS
            and key.value not in fields
            and isinstance(value, yaml.ScalarNode)
        ):
            return None
        fields[key.value] = value.value
    subnet_text, port, connections = (
        fields.get("docker_subnet", ""),
        fields.get("redis_port"),
        fields.get("connections"),
    )
    try:
        subnet = IPv4Network(subnet_text)  # strict: no host bits
    except ValueError:
        return None
    if subnet.prefixlen != SUBNET_PREFIX:
        return None
    for number in (port, connections):
        if number is not None and not (_NUMBER.match(number) and 1 <= int(number) <= 65535):
            return None
    return Allocation(
        subnet,
        int(port) if port is not None else None,
        int(connections) if connections is not None else None,
    )


def _allocation_records(
    node: yaml.Node, name: str
) -> tuple[dict[str, Allocation], list[Diagnostic]]:
    """The allocation records under ALLOCATIONS_KEY, with a located diagnostic for each
    unreadable one and for each that holds what another holds."""
    if not isinstance(node, yaml.MappingNode):
        return {}, [
            error((ALLOCATIONS_KEY,), "must be a mapping", ALLOCATIONS_HINT).located(
                name, *_mark(node)
            )
        ]
    records: dict[str, Allocation] = {}
    problems: list[Diagnostic] = []
    subnets: dict[IPv4Network, str] = {}
    ports: dict[int, str] = {}
    for key_node, record_node in node.value:
        instance = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
        record = _allocation(record_node)
        if instance is None or not _INSTANCE_NAME.match(instance) or record is None:
            shown = (
                instance if isinstance(instance, str) and _INSTANCE_NAME.match(instance) else "?"
            )
            problems.append(
                error(
                    (ALLOCATIONS_KEY, shown),
                    "the allocation record is unreadable: an instance name with docker_subnet "
                    f"(a /{SUBNET_PREFIX}), and redis_port and connections as numbers, if any",
                    ALLOCATIONS_HINT,
                ).located(name, *_mark(key_node))
            )
            continue
        clash = (
            "is recorded twice"
            if instance in records
            else f"holds Docker network {record.docker_subnet}, as '{subnets[record.docker_subnet]}' does"
            if record.docker_subnet in subnets
            else f"holds Redis port {record.redis_port}, as '{ports[record.redis_port]}' does"
            if record.redis_port is not None and record.redis_port in ports
            else None
        )
        if clash is not None:
            problems.append(
                error(
                    (ALLOCATIONS_KEY, instance), f"instance '{instance}' {clash}", ALLOCATIONS_HINT
                ).located(name, *_mark(key_node))
            )
            continue
        records[instance] = record
        subnets[record.docker_subnet] = instance
        if record.redis_port is not None:
            ports[record.redis_port] = instance
    return records, problems


@dataclass(frozen=True)
class Stored:
    """A secrets file as read: its secrets (None when there is no file, or it is unreadable),
    its records, and what is wrong with it."""

    values: dict[str, str] | None
    seeds: dict[str, SeedRecord] = field(default_factory=dict)
    allocations: dict[str, Allocation] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)


def read(path: Path) -> tuple[dict[str, str] | None, list[Diagnostic]]:
    """Read an existing secrets file; None when there is none. Nothing is written."""
    stored = open_store(path)
    return stored.values, stored.diagnostics


def read_store(
    path: Path,
) -> tuple[dict[str, str] | None, dict[str, SeedRecord], list[Diagnostic]]:
    """An existing secrets file's secrets and seed records (None when there is no file)."""
    stored = open_store(path)
    return stored.values, stored.seeds, stored.diagnostics


_RECORD_KEYS = (SEEDS_KEY, ALLOCATIONS_KEY)


def open_store(path: Path) -> Stored:
    """An existing secrets file's secrets and records; nothing is written."""
    name = str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return Stored(None)
    if not stat.S_ISREG(st.st_mode):
        return Stored(
            None,
            diagnostics=[
                error((), "the secrets file is not a regular file").located(name, None, None)
            ],
        )
    if st.st_mode & 0o077:
        return Stored(
            None,
            diagnostics=[
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
            return Stored(None, diagnostics=[unparsable.located(name, None, None)])
        return Stored(None, diagnostics=[unparsable.located(name, mark.line + 1, mark.column + 1)])
    except (yaml.YAMLError, UnicodeDecodeError, OSError, RecursionError):
        return Stored(None, diagnostics=[unparsable.located(name, None, None)])
    if root is None or (isinstance(root, yaml.ScalarNode) and root.value == ""):
        return Stored({})
    if not isinstance(root, yaml.MappingNode):
        return Stored(
            None,
            diagnostics=[
                error((), "the secrets file must be a mapping").located(name, *_mark(root))
            ],
        )
    sections: dict[str, list[yaml.Node]] = {key: [] for key in _RECORD_KEYS}
    secret_nodes = []
    for k, v in root.value:
        key = getattr(k, "value", None)
        if key in sections:
            sections[key].append(v)
        else:
            secret_nodes.append((k, v))
    values, diagnostics = _values(yaml.MappingNode(root.tag, secret_nodes), (), name)
    seeds: dict[str, SeedRecord] = {}
    allocations: dict[str, Allocation] = {}
    if sections[SEEDS_KEY]:
        seeds, problems = _seed_records(sections[SEEDS_KEY][0], name)
        diagnostics += problems
    if sections[ALLOCATIONS_KEY]:
        allocations, problems = _allocation_records(sections[ALLOCATIONS_KEY][0], name)
        diagnostics += problems
    for key, what, hint in (
        (SEEDS_KEY, "the seed records", SEEDS_HINT),
        (ALLOCATIONS_KEY, "the allocation records", ALLOCATIONS_HINT),
    ):
        for node in sections[key][1:]:
            diagnostics.append(
                error((key,), f"{what} are defined twice", hint).located(name, *_mark(node))
            )
    if diagnostics:
        return Stored(None, diagnostics=diagnostics)
    return Stored(values, seeds, allocations)


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
    allocations: Mapping[str, Allocation] | None = None,
) -> None:
    """Write the secrets file atomically with mode 0600 from the start; the records after the
    secrets, each section under a comment that says it is none."""
    text = HEADER.format(blueprint=blueprint_name) + yaml.safe_dump(
        _nest(values), sort_keys=True, default_flow_style=False
    )
    if seeds:
        records = {SEEDS_KEY: {host: seeds[host].to_data() for host in sorted(seeds)}}
        text += SEEDS_HEADER + yaml.safe_dump(records, sort_keys=True, default_flow_style=False)
    if allocations:
        held = {ALLOCATIONS_KEY: {n: allocations[n].to_data() for n in sorted(allocations)}}
        text += ALLOCATIONS_HEADER + yaml.safe_dump(held, sort_keys=True, default_flow_style=False)
    write_private(path, text)


def save_seed_records(
    blueprint: Path, secrets: Secrets, records: Mapping[str, SeedRecord]
) -> list[Diagnostic]:
    """Keep ``records`` in the secrets file beside the stored ones (a host no longer in the
    blueprint keeps its record: were it added again, its seeds go on from there)."""
    path = secrets_path(blueprint)
    try:
        write(
            path,
            secrets.values,
            blueprint.name,
            {**secrets.seeds, **records},
            secrets.allocations,
        )
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
    stored: Stored | None = None,
    allocations: Mapping[str, Allocation] | None = None,
) -> tuple[Secrets | None, bool, list[Diagnostic]]:
    """The secrets for a blueprint: read, completed, and written back when new ones were needed.

    The SCRAM verifiers of ``scram_logins`` (password name, role) are sealed into the file too,
    so later renders need not compute them; a file that lacks only those is still written,
    but failing to write it then is no error (the next render computes them again).
    ``stored`` is the file as the caller read it already (else it is read here), and
    ``allocations`` the allocation records to keep (else the stored ones); records that differ
    from the stored ones are written too, and failing to write them is an error.

    Returns (secrets, changed, diagnostics). With ``create`` False nothing is written, and
    ``changed`` tells whether the file would gain secrets.
    """
    path = secrets_path(blueprint)
    if stored is None:
        stored = open_store(path)
    if stored.diagnostics:
        return None, False, stored.diagnostics
    held = dict(stored.allocations if allocations is None else allocations)
    values, added = complete(stored.values, needed)
    sealed = seal_verifiers(values, scram_logins)
    moved = held != stored.allocations
    if (added or sealed or moved) and create:
        try:
            write(path, values, blueprint.name, stored.seeds, held)
        except OSError as exc:
            if added or moved:
                return (
                    None,
                    added,
                    [
                        error((), f"cannot write the secrets file: {exc.strerror or exc}").located(
                            str(path), None, None
                        )
                    ],
                )
    return Secrets(values, seeds=stored.seeds, allocations=held), added, []
