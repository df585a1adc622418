"""Validation: JSON Schema, schema defaults, and the semantic checks a schema cannot express.

Input is a parsed Source; output is diagnostics located at file:line:col, plus the Fleet model
when there is no error. Every check runs, so one pass lists every problem.
"""

from __future__ import annotations

import datetime
import difflib
import json
from collections.abc import Callable, Iterator
from functools import cache
from importlib import resources
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from . import qdrant_access
from .diagnostics import Diagnostic, JsonPath, error, has_errors, warning
from .model import Fleet
from .plan import (
    ALERTMANAGER_PORT,
    BLACKBOX_PORT,
    MONITOR_REDIS_USER,
    MONITOR_ROLE,
    NODE_EXPORTER_PORT,
    OLLAMA_PORT,
    POSTGRES_EXPORTER_PORT,
    POSTGRES_PORT,
    PROMETHEUS_PORT,
    QDRANT_P2P_PORT,
    QDRANT_PORT,
    REDIS_EXPORTER_PORT,
    RESERVED_CONNECTIONS,
    SSH_PORT,
    SUBNET_PREFIX,
    connections_used,
    database_pools,
    estimated_memory_mb,
    identifier,
)
from .release import DEFAULT_DISTRO, DOCKER_ARCHIVE, NEW_FLEET_DISTRO, RELEASES
from .source import Source

# Ports monitoring takes (on every host, or on the hosts of its services); no instance may.
MONITORING_PORTS = {
    PROMETHEUS_PORT: "Prometheus",
    ALERTMANAGER_PORT: "Alertmanager",
    NODE_EXPORTER_PORT: "the node exporter",
    BLACKBOX_PORT: "the blackbox exporter",
    REDIS_EXPORTER_PORT: "the Redis exporter",
    POSTGRES_EXPORTER_PORT: "the PostgreSQL exporter",
}

# Variables the generator owns: an instance's `env` may not override them.
OWNED_ENV = frozenset(
    {
        "DATABASE_URL",
        "DATABASE_POOL_SIZE",
        "DATABASE_POOL_MAX_OVERFLOW",
        "REDIS_URL",
        "REDIS_KEY_PREFIX",
        "REDIS_SOCKET_CONNECT_TIMEOUT",
        "REDIS_SOCKET_KEEPALIVE",
        "REDIS_HEALTH_CHECK_INTERVAL",
        "WEBSOCKET_MANAGER",
        "WEBSOCKET_REDIS_URL",
        "WEBSOCKET_REDIS_OPTIONS",
        "VECTOR_DB",
        "ENABLE_QDRANT_MULTITENANCY_MODE",
        "QDRANT_URI",
        "QDRANT_API_KEY",
        "QDRANT_COLLECTION_PREFIX",
        "OLLAMA_BASE_URL",
        "OLLAMA_BASE_URLS",
        "RAG_EMBEDDING_ENGINE",
        "RAG_EMBEDDING_MODEL",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "WEBUI_SECRET_KEY",
        "WEBUI_ADMIN_EMAIL",
        "WEBUI_ADMIN_PASSWORD",
        "WEBUI_ADMIN_NAME",
        "ENABLE_SIGNUP",
        "DEFAULT_USER_ROLE",
        "WEBUI_URL",
        "ENABLE_PERSISTENT_CONFIG",
        "DATA_DIR",
        "UVICORN_WORKERS",
        "PORT",
        "HOST",
        "CORS_ALLOW_ORIGIN",
        "WEBUI_SESSION_COOKIE_SECURE",
        "WEBUI_AUTH_COOKIE_SECURE",
        "FORWARDED_ALLOW_IPS",
    }
)

Located = tuple[Diagnostic, bool]  # the diagnostic, and whether it points at a key


@cache
def schema() -> dict[str, Any]:
    text = resources.files("owuibuild").joinpath("blueprint.schema.json").read_text("utf-8")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


def schema_text() -> str:
    return resources.files("owuibuild").joinpath("blueprint.schema.json").read_text("utf-8")


# -- JSON Schema -------------------------------------------------------------------------------------


def _schema_diagnostics(data: Any) -> Iterator[Located]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema())
    for err in validator.iter_errors(data):
        yield from _explain(err)


def _explain(err: Any) -> Iterator[Located]:
    path: JsonPath = tuple(err.absolute_path)
    sub = err.schema if isinstance(err.schema, dict) else {}
    kind = err.validator
    if kind == "additionalProperties" and isinstance(err.instance, dict):
        known = set(sub.get("properties", {}))
        for key in sorted((k for k in err.instance if k not in known), key=str):
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else _allowed(known)
            yield error((*path, key), f"unknown key '{key}'", hint), True
        return
    if kind == "propertyNames":
        # jsonschema reports the offending key as the instance of a nested error
        for child in err.context or []:
            message = _pattern_message(child.instance, child.schema)
            yield error((*path, child.instance), message[0], message[1]), True
        return
    if kind == "required":
        missing = str(err.message).split("'")[1] if "'" in err.message else err.message
        desc = sub.get("properties", {}).get(missing, {}).get("description")
        yield error(path, f"missing required key '{missing}'", desc), False
        return
    if kind == "pattern":
        msg, pattern_hint = _pattern_message(err.instance, sub)
        yield error(path, msg, pattern_hint), False
        return
    if kind == "enum":
        options = ", ".join(_show(v) for v in err.validator_value)
        yield (
            error(path, f"{_show(err.instance)} is not allowed", f"use one of: {options}"),
            False,
        )
        return
    if kind == "const":
        yield error(path, f"must be {_show(err.validator_value)}", None), False
        return
    if kind == "type":
        yield (
            error(
                path, f"expected {_type_name(err.validator_value)}, got {_json_type(err.instance)}"
            ),
            False,
        )
        return
    yield error(path, _short(err.message), sub.get("description")), False


def _show(value: Any) -> str:
    """A value as the user wrote it, in JSON notation (YAML dates and the like as text)."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _pattern_message(value: Any, sub: dict[str, Any]) -> tuple[str, str | None]:
    shown = _show(value)
    if "x-error" in sub:
        return f"{shown} {sub['x-error']}", sub.get("x-hint")
    return f"{shown} does not have the expected form", f"expected to match {sub.get('pattern')}"


def _allowed(known: set[str]) -> str:
    return "allowed keys: " + ", ".join(sorted(known)) if known else "no keys are allowed here"


def _type_name(expected: Any) -> str:
    names = {
        "object": "a mapping",
        "array": "a list",
        "string": "a string",
        "integer": "an integer",
        "boolean": "true or false",
        "number": "a number",
        "null": "null",
    }
    if isinstance(expected, list):
        return " or ".join(names.get(str(e), str(e)) for e in expected)
    return names.get(expected, str(expected))


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return f"the string {_show(value)[:60]}"
    if isinstance(value, datetime.date):
        return "a date (quote it to make it text)"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _short(message: str) -> str:
    return message if len(message) <= 200 else message[:197] + "..."


def fill_defaults(data: Any, node: dict[str, Any] | None = None) -> None:
    """Apply the schema's `default`s in place, wherever the document has the right shape."""
    root = schema()
    node = root if node is None else node
    if "$ref" in node:
        node = root["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    if isinstance(data, dict) and node.get("type") == "object":
        for key, prop in node.get("properties", {}).items():
            resolved = root["$defs"][prop["$ref"].rsplit("/", 1)[-1]] if "$ref" in prop else prop
            if key not in data and "default" in prop:
                data[key] = json.loads(json.dumps(prop["default"]))
            elif key not in data and "default" in resolved:
                data[key] = json.loads(json.dumps(resolved["default"]))
            if key in data:
                fill_defaults(data[key], prop)
    elif isinstance(data, list) and isinstance(node.get("items"), dict):
        for item in data:
            fill_defaults(item, node["items"])


# -- semantic checks ---------------------------------------------------------------------------------


def _dicts(value: Any) -> list[tuple[int, dict[str, Any]]]:
    return (
        [(i, v) for i, v in enumerate(value) if isinstance(v, dict)]
        if isinstance(value, list)
        else []
    )


def _addr(value: Any) -> IPv4Address | None:
    try:
        return IPv4Address(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _net(value: Any) -> IPv4Network | None:
    try:
        return IPv4Network(value, strict=True) if isinstance(value, str) else None
    except ValueError:
        return None


def _host_entries(data: dict[str, Any]) -> list[tuple[JsonPath, dict[str, Any]]]:
    out: list[tuple[JsonPath, dict[str, Any]]] = []
    shared = data.get("shared")
    if isinstance(shared, dict) and isinstance(shared.get("host"), dict):
        out.append((("shared", "host"), shared["host"]))
    out += [(("hosts", i), h) for i, h in _dicts(data.get("hosts"))]
    return out


def check_names(data: dict[str, Any]) -> Iterator[Located]:
    seen: dict[str, JsonPath] = {}
    for path, host in _host_entries(data):
        name = host.get("name")
        if isinstance(name, str):
            if name in seen:
                yield (
                    error(
                        (*path, "name"),
                        f"duplicate host name '{name}'",
                        f"already used at {_fmt(seen[name])}; host names must be unique",
                    ),
                    False,
                )
            else:
                seen[name] = (*path, "name")
    seen_inst: dict[str, JsonPath] = {}
    for i, inst in _dicts(data.get("instances")):
        name = inst.get("name")
        if isinstance(name, str):
            if name in seen_inst:
                yield (
                    error(
                        ("instances", i, "name"),
                        f"duplicate instance name '{name}'",
                        f"already used at {_fmt(seen_inst[name])}; instance names must be unique",
                    ),
                    False,
                )
            else:
                seen_inst[name] = ("instances", i, "name")


def check_network(data: dict[str, Any]) -> Iterator[Located]:
    network = data.get("network") if isinstance(data.get("network"), dict) else {}
    assert isinstance(network, dict)
    cidr_text = network.get("cidr")
    cidr = None
    if isinstance(cidr_text, str):
        try:
            cidr = IPv4Network(cidr_text, strict=True)
        except ValueError:
            if _net_loose(cidr_text) is not None:
                yield (
                    error(
                        ("network", "cidr"),
                        f"'{cidr_text}' has host bits set",
                        f"write the network address: {_net_loose(cidr_text)}",
                    ),
                    False,
                )
    for i, entry in (
        enumerate(network.get("dns") or []) if isinstance(network.get("dns"), list) else []
    ):
        del i, entry  # dns servers may live outside the fleet's network
    if cidr is None:
        return
    gateway = _addr(network.get("gateway"))
    if gateway is not None and gateway not in cidr:
        yield (
            error(
                ("network", "gateway"),
                f"gateway {gateway} is outside network.cidr {cidr}",
                "the gateway must be on the fleet's network",
            ),
            False,
        )
    seen: dict[IPv4Address, JsonPath] = {}
    for path, host in _host_entries(data):
        addr = _addr(host.get("address"))
        if addr is None:
            continue
        apath = (*path, "address")
        if addr not in cidr:
            yield (
                error(
                    apath,
                    f"address {addr} is outside network.cidr {cidr}",
                    "give the host an address inside the fleet's network",
                ),
                False,
            )
        elif addr in (cidr.network_address, cidr.broadcast_address) and cidr.prefixlen < 31:
            yield (
                error(
                    apath,
                    f"address {addr} is the network or broadcast address of {cidr}",
                    "use a host address",
                ),
                False,
            )
        elif gateway is not None and addr == gateway:
            yield (
                error(
                    apath,
                    f"address {addr} is the gateway's address",
                    "give the host an address of its own",
                ),
                False,
            )
        if addr in seen:
            yield (
                error(
                    apath,
                    f"address {addr} is already used by {_fmt(seen[addr])}",
                    "each host needs its own address",
                ),
                False,
            )
        else:
            seen[addr] = apath


def _net_loose(text: str) -> IPv4Network | None:
    try:
        return IPv4Network(text, strict=False)
    except ValueError:
        return None


def check_container_pool(data: dict[str, Any]) -> Iterator[Located]:
    network = _mapping(data, "network")
    pool, cidr = _net(network.get("container_pool")), _net(network.get("cidr"))
    if pool is None:
        return
    if cidr is not None and pool.overlaps(cidr):
        yield (
            error(
                ("network", "container_pool"),
                f"container_pool {pool} overlaps network.cidr {cidr}",
                "set network.container_pool to a private range no host uses (default 172.31.0.0/16)",
            ),
            False,
        )
    count = len(_dicts(data.get("instances")))
    room = 2 ** max(SUBNET_PREFIX - pool.prefixlen, 0) if pool.prefixlen <= SUBNET_PREFIX else 0
    if count > room:
        yield (
            error(
                ("network", "container_pool"),
                f"container_pool {pool} has room for {room} instance networks (/{SUBNET_PREFIX}), "
                f"not {count}",
                "use a larger range",
            ),
            False,
        )


def check_ssh_keys(data: dict[str, Any]) -> Iterator[Located]:
    """Each key decodes to a key of its named type (sshd would skip any other)."""
    from . import sshkey

    admin = data.get("admin")
    keys = admin.get("ssh_authorized_keys") if isinstance(admin, dict) else None
    for i, line in enumerate(keys if isinstance(keys, list) else []):
        if not isinstance(line, str):
            continue
        path = ("admin", "ssh_authorized_keys", i)
        if sshkey.EXAMPLE_KEY in line.split(" "):
            yield (
                warning(
                    path,
                    "is the example key of the starter blueprint, not a real key: nobody could "
                    "log in to the hosts with it",
                    "replace it with your own public key, e.g. the line in ~/.ssh/id_ed25519.pub",
                ),
                False,
            )
            continue
        problem = sshkey.problem(line)
        if problem is not None:
            yield (
                error(
                    path,
                    f"the SSH key {problem}",
                    "paste the whole line of your ~/.ssh/id_*.pub file, unchanged",
                ),
                False,
            )


def check_admin(data: dict[str, Any]) -> Iterator[Located]:
    admin = data.get("admin")
    if not isinstance(admin, dict) or not isinstance(admin.get("allow_from"), list):
        return
    for i, text in enumerate(admin["allow_from"]):
        if isinstance(text, str) and _net(text) is None and _net_loose(text) is not None:
            yield (
                error(
                    ("admin", "allow_from", i),
                    f"'{text}' has host bits set",
                    f"write the network address: {_net_loose(text)}",
                ),
                False,
            )


SERVICE_LABELS = {
    "postgres": "PostgreSQL",
    "redis": "Redis",
    "qdrant": "Qdrant",
    "ollama": "Ollama",
}


def _mapping(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    node: Any = data
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


def _placed(data: dict[str, Any]) -> dict[str, set[str]]:
    """Host name -> the shared services placed on it (everything on the shared host by default)."""
    shared_name = _mapping(data, "shared", "host").get("name")
    placement = _mapping(data, "placement")
    out: dict[str, set[str]] = {}
    for service in SERVICE_LABELS:
        chosen = placement.get(service, shared_name)
        for name in chosen if isinstance(chosen, list) else [chosen]:
            if isinstance(name, str):
                out.setdefault(name, set()).add(service)
    return out


def _service_ports(data: dict[str, Any], services: set[str]) -> dict[int, str]:
    """Ports the given shared services take on a host."""
    ports = {SSH_PORT: "SSH"}
    if "postgres" in services:
        ports[POSTGRES_PORT] = "PostgreSQL"
    if "qdrant" in services:
        ports[QDRANT_PORT] = "Qdrant"
        ports[QDRANT_PORT + 1] = "Qdrant (gRPC)"
        if len(_mapping(data, "placement").get("qdrant") or []) > 1:
            ports[QDRANT_P2P_PORT] = "Qdrant (cluster)"
    if "ollama" in services:
        ports[OLLAMA_PORT] = "Ollama"
    redis = _mapping(data, "shared", "redis")
    base = redis.get("base_port", 6379)
    if "redis" in services and isinstance(base, int):
        per_instance = redis.get("mode", "per-instance") == "per-instance"
        count = len(_dicts(data.get("instances"))) if per_instance else 1
        for n in range(max(count, 1)):
            ports.setdefault(base + n, "Redis")
    return ports


def check_placement(data: dict[str, Any]) -> Iterator[Located]:
    hosts = {h.get("name") for _, h in _host_entries(data)}
    names = sorted(str(n) for n in hosts if isinstance(n, str))
    placement = _mapping(data, "placement")
    for service in SERVICE_LABELS:
        chosen = placement.get(service)
        entries = (
            [((service, i), n) for i, n in enumerate(chosen)]
            if isinstance(chosen, list)
            else [((service,), chosen)]
            if chosen is not None
            else []
        )
        for sub, name in entries:
            if isinstance(name, str) and name not in hosts:
                close = difflib.get_close_matches(name, names, n=1)
                hint = (
                    f"did you mean '{close[0]}'?" if close else "known hosts: " + ", ".join(names)
                )
                yield (
                    error(
                        ("placement", *sub),
                        f"{SERVICE_LABELS[service]} is placed on unknown host '{name}'",
                        hint,
                    ),
                    False,
                )
    monitor = placement.get("monitoring")
    if isinstance(monitor, str) and monitor not in hosts:
        close = difflib.get_close_matches(monitor, names, n=1)
        yield (
            error(
                ("placement", "monitoring"),
                f"Prometheus is placed on unknown host '{monitor}'",
                f"did you mean '{close[0]}'?" if close else "known hosts: " + ", ".join(names),
            ),
            False,
        )
    nodes = placement.get("qdrant")
    count = len(nodes) if isinstance(nodes, list) else 1
    qdrant = _mapping(data, "shared", "qdrant")
    if count == 2:
        yield (
            error(
                ("placement", "qdrant"),
                "a Qdrant cluster of 2 nodes cannot keep a Raft majority when one fails",
                "use one node, or three or more",
            ),
            False,
        )
    factor = qdrant.get("replication_factor")
    if count >= 3 and isinstance(factor, int) and factor > count:
        yield (
            error(
                ("shared", "qdrant", "replication_factor"),
                f"replication_factor {factor} is more than the {count} Qdrant nodes",
                f"use at most {count}",
            ),
            False,
        )
    if "tls" in qdrant:
        yield (
            warning(
                ("shared", "qdrant", "tls"),
                "is no longer used: every Qdrant host serves clients and cluster peers over "
                "TLS with its certificate from the fleet CA",
                "remove tls",
            ),
            True,
        )


def check_instances(data: dict[str, Any]) -> Iterator[Located]:
    hosts = {h.get("name"): path for path, h in _host_entries(data)}
    placed = _placed(data)
    used: dict[tuple[str, int], str] = {}
    env_owned_hint = "owuibuild sets this variable from the plan; remove it from env"
    for i, inst in _dicts(data.get("instances")):
        host = inst.get("host")
        port = inst.get("port")
        if isinstance(host, str) and host not in hosts:
            names = sorted(str(n) for n in hosts if isinstance(n, str))
            close = difflib.get_close_matches(host, names, n=1)
            hint = f"did you mean '{close[0]}'?" if close else "known hosts: " + ", ".join(names)
            yield error(("instances", i, "host"), f"unknown host '{host}'", hint), False
        if isinstance(host, str) and isinstance(port, int):
            if (host, port) in used:
                yield (
                    error(
                        ("instances", i, "port"),
                        f"port {port} on host '{host}' is already used by instance '{used[(host, port)]}'",
                        "give each instance on a host its own port",
                    ),
                    False,
                )
            else:
                used[(host, port)] = str(inst.get("name"))
            taken = _service_ports(data, placed.get(host, set()))
            if port == SSH_PORT:
                yield (
                    error(
                        ("instances", i, "port"),
                        f"port {port} is taken by SSH on host '{host}'",
                        "pick another port; sshd listens on port 22 of every host",
                    ),
                    False,
                )
            elif port in taken:
                yield (
                    error(
                        ("instances", i, "port"),
                        f"port {port} is taken by {taken[port]} on host '{host}'",
                        "pick a port that no shared service uses",
                    ),
                    False,
                )
        env = inst.get("env")
        if isinstance(env, dict):
            for key in env:
                if key in OWNED_ENV:
                    yield (
                        error(
                            ("instances", i, "env", key),
                            f"{key} is owned by owuibuild",
                            ENV_SETTINGS.get(key, env_owned_hint),
                        ),
                        True,
                    )


# Owned variables the blueprint sets in a setting of its own: the hint names it.
ENV_SETTINGS = {
    "WEBUI_URL": "set the instance's url instead of env",
    "CORS_ALLOW_ORIGIN": "owuibuild sets it to the origin of the instance's url; set url instead",
    "WEBUI_SESSION_COOKIE_SECURE": "owuibuild marks cookies Secure when the url is https; set url",
    "WEBUI_AUTH_COOKIE_SECURE": "owuibuild marks cookies Secure when the url is https; set url",
    "FORWARDED_ALLOW_IPS": "owuibuild trusts the front door's address only; see front_door",
    "WEBUI_ADMIN_EMAIL": "set admin: {email: ...} on the instance or under openwebui instead",
    "WEBUI_ADMIN_NAME": "set admin: {name: ...} on the instance or under openwebui instead",
    "WEBUI_ADMIN_PASSWORD": "owuibuild generates it into the secrets file; remove it from env",
    "ENABLE_SIGNUP": "set signup: {enabled: true} on the instance or under openwebui instead",
    "DEFAULT_USER_ROLE": "set signup: {default_role: user} on the instance or under openwebui",
}


def check_versions(data: dict[str, Any]) -> Iterator[Located]:
    os_ = data.get("os") if isinstance(data.get("os"), dict) else {}
    assert isinstance(os_, dict)
    named = os_.get("distro", DEFAULT_DISTRO)
    release = RELEASES.get(named) if isinstance(named, str) else None
    if release is None:
        return  # the schema reports an unknown distro
    distro = release.distro
    if os_.get("docker_source") == DOCKER_ARCHIVE and release.docker_archive_packages is None:
        yield (
            error(
                ("os", "docker_source"),
                f"{distro}'s archive has no compose v2 (only docker-compose 1.29)",
                "leave docker_source out (Docker's own repository on this release), "
                f"or move the fleet to {NEW_FLEET_DISTRO}",
            ),
            False,
        )
    shared = data.get("shared") if isinstance(data.get("shared"), dict) else {}
    assert isinstance(shared, dict)
    pg = shared.get("postgres") if isinstance(shared.get("postgres"), dict) else {}
    assert isinstance(pg, dict)
    expected = release.postgres_major
    if "version" in pg and pg["version"] != expected:
        yield (
            error(
                ("shared", "postgres", "version"),
                f"PostgreSQL {pg['version']} is not the version {distro} ships ({expected})",
                f"use {expected}, or leave the version out",
            ),
            False,
        )
    ollama = shared.get("ollama") if isinstance(shared.get("ollama"), dict) else {}
    assert isinstance(ollama, dict)
    models = ollama.get("models")
    if (
        isinstance(models, list)
        and "embedding_model" in ollama
        and ollama["embedding_model"] not in models
    ):
        yield (
            warning(
                ("shared", "ollama", "embedding_model"),
                f"embedding model '{ollama['embedding_model']}' is not in shared.ollama.models; it is pulled as well",
                "list it under models to make that explicit",
            ),
            False,
        )
    model = ollama.get("embedding_model")
    if (
        isinstance(model, str)
        and "embedding_dimensions" not in ollama
        and qdrant_access.known_dimensions(model) is None
    ):
        yield (
            error(
                ("shared", "ollama", "embedding_model"),
                f"owuibuild does not know the vector length of embedding model '{model}'; "
                "the Qdrant host makes each instance's collections with it",
                "set shared.ollama.embedding_dimensions to the length of its vectors "
                "(the embedding array's length in the answer of Ollama's /api/embed)",
            ),
            False,
        )


def check_capacity(data: dict[str, Any]) -> Iterator[Located]:
    shared = data.get("shared") if isinstance(data.get("shared"), dict) else {}
    assert isinstance(shared, dict)
    pg = shared.get("postgres") if isinstance(shared.get("postgres"), dict) else {}
    assert isinstance(pg, dict)
    max_conn = pg.get("max_connections", 200)
    instances = _dicts(data.get("instances"))
    if isinstance(max_conn, int) and instances:
        requested = []
        for _, inst in instances:
            db = inst.get("database") if isinstance(inst.get("database"), dict) else {}
            assert isinstance(db, dict)
            p, o = db.get("pool_size"), db.get("max_overflow")
            requested.append((p if isinstance(p, int) else None, o if isinstance(o, int) else None))
        pools = database_pools(max_conn, requested)
        budget = max_conn - RESERVED_CONNECTIONS
        if pools is None or connections_used(pools) > budget:
            # with no pools to show, the minimum: explicit pools plus one connection per
            # auto-sized instance
            used = (
                connections_used(pools)
                if pools
                else sum((p or 0) + (o or 0) if p is not None else 1 for p, o in requested)
            )
            need = used + RESERVED_CONNECTIONS
            yield (
                error(
                    ("shared", "postgres", "max_connections"),
                    f"the instances' database pools need {used} connections, but max_connections {max_conn} "
                    f"leaves {budget} after a reserve of {RESERVED_CONNECTIONS}",
                    f"raise max_connections to at least {need}, or lower instances' database.pool_size",
                ),
                False,
            )
    redis = shared.get("redis") if isinstance(shared.get("redis"), dict) else {}
    assert isinstance(redis, dict)
    if redis.get("mode") == "shared":
        yield (
            warning(
                ("shared", "redis", "mode"),
                "all instances share one Redis, and its key prefixes do not isolate them: "
                "Open WebUI's Socket.IO channel 'socketio' has no prefix, so every instance "
                "receives the others' events (chat content included); SCAN, RANDOMKEY and "
                "DBSIZE show every instance the others' key names; FUNCTION and SCRIPT act "
                "across instances; and one instance can fill the memory all of them share",
                "use mode: per-instance to isolate instances",
            ),
            False,
        )
    base = redis.get("base_port", 6379)
    if (
        isinstance(base, int)
        and redis.get("mode", "per-instance") == "per-instance"
        and base + len(instances) > 65536
    ):
        yield (
            error(
                ("shared", "redis", "base_port"),
                "not enough ports for one Redis per instance",
                "lower base_port",
            ),
            False,
        )
    # memory
    placed = _placed(data)
    redis_count = len(instances) if redis.get("mode", "per-instance") == "per-instance" else 1
    for path, host in _host_entries(data):
        mem = host.get("memory_gb")
        if not isinstance(mem, int):
            continue
        count = sum(1 for _, inst in instances if inst.get("host") == host.get("name"))
        services = placed.get(str(host.get("name")), set())
        need = estimated_memory_mb(
            count, services=services, redis_servers=redis_count if "redis" in services else 0
        )
        if need > mem * 1024:
            yield (
                warning(
                    (*path, "memory_gb"),
                    f"host '{host.get('name')}' has {mem} GB but its services and {count} instance(s) "
                    f"need about {need / 1024:.1f} GB",
                    "add memory or move instances to another host",
                ),
                False,
            )


def check_data_volumes(data: dict[str, Any]) -> Iterator[Located]:
    placed = _placed(data)
    instances = _dicts(data.get("instances"))
    state = {
        "postgres": "PostgreSQL databases",
        "qdrant": "Qdrant vectors",
        "redis": "Redis data",
        "ollama": "Ollama models",
    }
    for path, host in _host_entries(data):
        if "data_volume" in host:
            continue
        name = host.get("name")
        lost = [state[s] for s in state if s in placed.get(str(name), set())]
        backups = _mapping(data, "shared", "backups")
        on_host = "postgres" in placed.get(str(name), set())
        if on_host and backups.get("enabled", True) and "directory" not in backups:
            lost.append("the backups")
        names = [str(inst.get("name")) for _, inst in instances if inst.get("host") == name]
        if names:
            lost.append("Open WebUI data of " + ", ".join(names))
        door = data.get("front_door")
        if names and isinstance(door, dict) and door.get("tls") == "acme":
            # A new ACME account and certificates at every replacement run into the CA's
            # rate limits (Let's Encrypt: 5 certificates per set of names a week).
            lost.append("the front door's ACME account and certificates")
        if lost:
            yield (
                warning(
                    (*path, "name"),
                    f"host '{name}' has no data_volume: replacing it loses " + "; ".join(lost),
                    "add data_volume: {label: owui-data} and attach a disk with that label",
                ),
                False,
            )


def check_pins(data: dict[str, Any]) -> Iterator[Located]:
    from . import artifacts

    shared = data.get("shared") if isinstance(data.get("shared"), dict) else {}
    assert isinstance(shared, dict)
    known = {"ollama": artifacts.OLLAMA_SHA256, "qdrant": artifacts.QDRANT_SHA256}
    for name, table in known.items():
        section = shared.get(name)
        if not isinstance(section, dict):
            continue
        version = section.get("version")
        if isinstance(version, str) and version not in table and "sha256" not in section:
            yield (
                error(
                    ("shared", name, "version"),
                    f"{name} {version} has no known published checksum",
                    f"add shared.{name}.sha256 with the release file's sha256, or use one of: "
                    + ", ".join(sorted(table)),
                ),
                False,
            )
    openwebui = data.get("openwebui")
    if isinstance(openwebui, dict) and "archive_sha256" in openwebui and not data.get("mirror"):
        yield (
            error(
                ("openwebui", "archive_sha256"),
                "an image archive needs a mirror to be loaded from",
                "set mirror: to the server that holds openwebui-v<version>.docker.tar, "
                "or leave archive_sha256 out to pull the image from its registry",
            ),
            True,
        )


# Top-level domains and names no public ACME CA issues certificates for (RFC 2606, RFC 6761,
# RFC 8375, and names people use on their own networks).
PRIVATE_SUFFIXES = (
    "test", "example", "invalid", "localhost", "local", "internal", "lan", "home", "corp",
    "intranet", "private", "home.arpa", "example.com", "example.net", "example.org",
)  # fmt: skip
FRONT_DOOR_PORTS = {80: "HTTP", 443: "HTTPS"}


def _url_host(url: str) -> tuple[str | None, int | None, str, str]:
    """(host name in lower case, port, path, scheme) of a url that passed the schema."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return parts.hostname, port, parts.path, parts.scheme


def _is_public_name(name: str) -> bool:
    if "." not in name or _addr(name) is not None:
        return False
    return not any(name == s or name.endswith("." + s) for s in PRIVATE_SUFFIXES)


def check_monitoring(data: dict[str, Any]) -> Iterator[Located]:
    watch = data.get("monitoring")
    chosen = _mapping(data, "placement").get("monitoring")
    if not isinstance(watch, dict):
        if chosen is not None:
            yield (
                warning(
                    ("placement", "monitoring"),
                    "has no effect without a monitoring section",
                    "add monitoring: {} to run Prometheus there, or remove placement.monitoring",
                ),
                True,
            )
        return
    named = _mapping(data, "os").get("distro", DEFAULT_DISTRO)
    release = RELEASES.get(named) if isinstance(named, str) else None
    if watch.get("openwebui_otel") is True and release is not None and not release.otlp_receiver:
        having = [r.distro for r in RELEASES.values() if r.otlp_receiver]
        yield (
            error(
                ("monitoring", "openwebui_otel"),
                f"{release.distro}'s Prometheus package has no OTLP receiver, which Open "
                "WebUI's OpenTelemetry metrics need (Debian builds Prometheus without it)",
                ("use os.distro: " + ", ".join(having) + ", or " if having else "")
                + "set openwebui_otel: false; Prometheus still probes every instance's /health",
            ),
            False,
        )
    for i, inst in _dicts(data.get("instances")):
        env = inst.get("env")
        if watch.get("openwebui_otel") is True and isinstance(env, dict):
            for key in sorted(k for k in env if str(k).startswith(("OTEL_", "ENABLE_OTEL"))):
                yield (
                    error(
                        ("instances", i, "env", key),
                        f"{key} is set by owuibuild when monitoring.openwebui_otel is on",
                        "remove it from env, or set monitoring.openwebui_otel: false to send "
                        "OpenTelemetry elsewhere",
                    ),
                    True,
                )
        port = inst.get("port")
        if isinstance(port, int) and port in MONITORING_PORTS:
            yield (
                error(
                    ("instances", i, "port"),
                    f"port {port} is taken by {MONITORING_PORTS[port]} (monitoring)",
                    "pick another port",
                ),
                False,
            )
        name = inst.get("name")
        if isinstance(name, str) and (
            name == MONITOR_REDIS_USER or identifier(name) == MONITOR_ROLE
        ):
            yield (
                error(
                    ("instances", i, "name"),
                    f"instance name '{name}' is the monitoring exporters' own login",
                    "rename the instance",
                ),
                False,
            )
    host_name = chosen if isinstance(chosen, str) else _mapping(data, "shared", "host").get("name")
    for path, host in _host_entries(data):
        if host.get("name") == host_name and host.get("data_volume") is None:
            yield (
                warning(
                    path,
                    f"host '{host_name}' runs Prometheus but has no data volume: its history "
                    "is lost when the host is replaced",
                    "add a data_volume to the host",
                ),
                True,
            )


def check_front_door(data: dict[str, Any]) -> Iterator[Located]:
    door = data.get("front_door")
    if not isinstance(door, dict):
        return
    mode = door.get("tls")
    acme = door.get("acme")
    if mode == "acme" and not isinstance(acme, dict):
        yield (
            error(
                ("front_door", "tls"),
                "tls: acme needs an ACME account",
                "add acme: {email: ops@example.com} under front_door",
            ),
            False,
        )
    if mode == "internal" and isinstance(acme, dict):
        yield (
            warning(
                ("front_door", "acme"),
                "is not used with tls: internal (the fleet CA issues the certificates)",
                "remove acme, or set tls: acme",
            ),
            True,
        )
    allow = door.get("allow_from", [])
    if mode == "acme" and allow != "public":
        yield (
            warning(
                ("front_door", "allow_from"),
                "only these networks reach ports 80 and 443, but an ACME CA must reach them to "
                "issue a certificate",
                "use allow_from: public, or a private ACME CA inside these networks",
            ),
            False,
        )
    seen: dict[str, str] = {}
    for i, inst in _dicts(data.get("instances")):
        name = str(inst.get("name"))
        url = inst.get("url")
        if not isinstance(url, str):
            yield (
                error(
                    ("instances", i),
                    f"instance '{name}' has no url, and the front door serves instances by "
                    "host name",
                    f"add url: https://{name}.example.com (a name that resolves to host "
                    f"'{inst.get('host')}')",
                ),
                False,
            )
        else:
            host, port, path, scheme = _url_host(url)
            where = ("instances", i, "url")
            if scheme != "https":
                yield (
                    error(where, "is not https, and the front door serves HTTPS", "use https://"),
                    False,
                )
            if port not in (None, 443):
                yield (
                    error(
                        where,
                        f"names port {port}, and the front door serves port 443",
                        "remove the port",
                    ),
                    False,
                )
            if path not in ("", "/"):
                yield (
                    error(
                        where,
                        f"has the path {path}, and the front door serves each instance at the "
                        "root of its own host name",
                        "remove the path; give the instance a host name of its own",
                    ),
                    False,
                )
            if host is not None and _addr(host) is not None:
                yield (
                    error(
                        where,
                        "names an address, and the front door routes by host name",
                        "use a DNS name that resolves to the instance's host",
                    ),
                    False,
                )
            elif host is not None:
                if host in seen:
                    yield (
                        error(
                            where,
                            f"host name {host} is already the url of instance '{seen[host]}'",
                            "give each instance a host name of its own",
                        ),
                        False,
                    )
                else:
                    seen[host] = name
                if mode == "acme" and not _is_public_name(host):
                    yield (
                        warning(
                            where,
                            f"{host} is not a public DNS name, and a public ACME CA issues "
                            "certificates only for those",
                            "use a public name, tls: internal, or a private ACME directory",
                        ),
                        False,
                    )
        port = inst.get("port")
        if port in FRONT_DOOR_PORTS:
            yield (
                error(
                    ("instances", i, "port"),
                    f"port {port} is the front door's {FRONT_DOOR_PORTS[port]} port on host "
                    f"'{inst.get('host')}'",
                    "pick another port; Caddy serves ports 80 and 443 of every Docker host",
                ),
                False,
            )
        if inst.get("public") is True:
            yield (
                error(
                    ("instances", i, "public"),
                    "cannot be true with a front door: instances are reached through it only",
                    "remove public; front_door.allow_from: public opens the front door to everyone",
                ),
                True,
            )


SEMANTIC_CHECKS: tuple[Callable[[dict[str, Any]], Iterator[Located]], ...] = (
    check_names,
    check_network,
    check_admin,
    check_ssh_keys,
    check_instances,
    check_versions,
    check_capacity,
    check_data_volumes,
    check_pins,
    check_placement,
    check_container_pool,
    check_front_door,
    check_monitoring,
)


def _fmt(path: JsonPath) -> str:
    from .diagnostics import format_path

    return format_path(path)


def validate(source: Source) -> tuple[Fleet | None, list[Diagnostic]]:
    """Check a parsed blueprint; return the model when it has no error, and all diagnostics."""
    located: list[Located] = list(_schema_diagnostics(source.data))
    schema_ok = not located
    fill_defaults(source.data)
    for check in SEMANTIC_CHECKS:
        try:
            located.extend(check(source.data))
        except (TypeError, KeyError, AttributeError, ValueError, AssertionError):
            # A document with schema errors can break a check's assumptions; the schema
            # diagnostics already explain the problem.
            if schema_ok:
                raise
    diagnostics = [source.locate(d, key=key) for d, key in located]
    diagnostics = _dedupe(diagnostics)
    if has_errors(diagnostics):
        return None, diagnostics
    return Fleet.from_data(source.data), diagnostics


def _dedupe(diagnostics: list[Diagnostic]) -> list[Diagnostic]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for d in diagnostics:
        key = (d.severity, d.path, d.message)
        if key not in seen:
            seen.add(key)
            out.append(d)
    return sorted(out, key=lambda d: (d.line or 0, d.column or 0, d.message))
