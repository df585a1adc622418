"""Validation: every semantic check with its exact location, JSON path, message and hint.

Expected locations are computed from the blueprint text each test writes (fleetdoc.where).
"""

from __future__ import annotations

import pytest
from fleetdoc import BASE, at, diagnose, edit, instances_text, one, where
from owuibuild.diagnostics import Severity
from owuibuild.plan import (
    MEMORY_MB_OLLAMA_IDLE,
    MEMORY_MB_OPENWEBUI,
    MEMORY_MB_OS,
    MEMORY_MB_POSTGRES,
    MEMORY_MB_QDRANT,
    RESERVED_CONNECTIONS,
)
from owuibuild.source import parse
from owuibuild.validate import ENV_SETTINGS, OWNED_ENV, validate

pytestmark = pytest.mark.unit

DNS_HINT = (
    "use 1-63 lowercase letters, digits and '-', starting with a letter and not ending with '-'"
)


def assert_at(text: str, d, needle: str, at_: str | None = None, nth: int = 0) -> None:
    assert (d.line, d.column) == where(text, needle, at_, nth), d.as_dict()
    assert d.file == "bp.yml"


def test_base_blueprint_is_clean_and_gives_a_fleet() -> None:
    source, problems = parse(BASE, "bp.yml")
    assert source is not None and problems == []
    fleet, diagnostics = validate(source)
    assert diagnostics == []
    assert fleet is not None
    assert [i.name for i in fleet.instances] == ["one", "two"]


# -- names ------------------------------------------------------------------------------------------


def test_duplicate_host_name() -> None:
    text = edit(BASE, "{name: web-b, address: 10.0.5.21", "{name: web-a, address: 10.0.5.21")
    d = one(diagnose(text), "hosts[1].name")
    assert d.severity is Severity.ERROR
    assert d.message == "duplicate host name 'web-a'"
    assert d.hint == "already used at hosts[0].name; host names must be unique"
    assert_at(text, d, "{name: web-a, address: 10.0.5.21", "web-a")


def test_docker_host_named_like_the_shared_host() -> None:
    text = edit(BASE, "{name: web-a, address", "{name: shared, address")
    d = one(diagnose(text), "hosts[0].name")
    assert d.message == "duplicate host name 'shared'"
    assert d.hint == "already used at shared.host.name; host names must be unique"
    assert_at(text, d, "{name: shared, address: 10.0.5.20", "shared")


def test_duplicate_instance_name() -> None:
    text = edit(BASE, "{name: two, host: web-b", "{name: one, host: web-b")
    d = one(diagnose(text), "instances[1].name")
    assert d.message == "duplicate instance name 'one'"
    assert d.hint == "already used at instances[0].name; instance names must be unique"
    assert_at(text, d, "{name: one, host: web-b", "one")
    assert at(diagnose(text), "instances[0].name") == []


@pytest.mark.parametrize(
    ("old", "new", "path", "value"),
    [
        ("name: fleet", "name: Fleet", "name", "Fleet"),
        ("name: fleet", "name: fleet_1", "name", "fleet_1"),
        ("{name: web-a, address", "{name: web-a-, address", "hosts[0].name", "web-a-"),
        ("{name: shared, address", "{name: 1shared, address", "shared.host.name", "1shared"),
        ("{name: one, host", "{name: -one, host", "instances[0].name", "-one"),
        ("{name: one, host", "{name: " + "a" * 64 + ", host", "instances[0].name", "a" * 64),
        ("host: web-a, port", "host: Web-A, port", "instances[0].host", "Web-A"),
    ],
)
def test_names_must_be_dns_labels(old: str, new: str, path: str, value: str) -> None:
    text = edit(BASE, old, new)
    # an instance's host may also be unknown; the DNS-label error is the one asserted here
    (d,) = [d for d in at(diagnose(text), path) if "DNS label" in d.message]
    assert d.message == f'"{value}" is not a DNS label'
    assert d.hint == DNS_HINT
    assert_at(text, d, new, value)


def test_a_63_character_name_is_a_dns_label() -> None:
    text = edit(BASE, "{name: one, host", "{name: " + "a" * 63 + ", host")
    assert diagnose(text) == []


# -- instances and ports ----------------------------------------------------------------------------


def test_two_instances_on_one_host_with_one_port() -> None:
    text = edit(
        BASE, "{name: two, host: web-b, port: 3001}", "{name: two, host: web-a, port: 3001}"
    )
    d = one(diagnose(text), "instances[1].port")
    assert d.message == "port 3001 on host 'web-a' is already used by instance 'one'"
    assert d.hint == "give each instance on a host its own port"
    assert_at(text, d, "{name: two, host: web-a, port: 3001}", "3001")
    assert len(diagnose(text)) == 1


def test_same_port_on_different_hosts_is_fine() -> None:
    # the base blueprint runs one and two on port 3001 of web-a and web-b
    assert "host: web-a, port: 3001" in BASE and "host: web-b, port: 3001" in BASE
    assert diagnose(BASE) == []


@pytest.mark.parametrize(
    ("port", "service"),
    [
        (22, "SSH"),
        (5432, "PostgreSQL"),
        (6333, "Qdrant"),
        (11434, "Ollama"),
        (6379, "Redis"),  # the first instance's redis-server
        (6380, "Redis"),  # the second instance's redis-server (two instances, per-instance mode)
    ],
)
def test_instance_port_clashing_with_a_shared_service(port: int, service: str) -> None:
    new = f"{{name: two, host: shared, port: {port}}}"
    text = edit(BASE, "{name: two, host: web-b, port: 3001}", new)
    d = one(diagnose(text), "instances[1].port")
    assert d.message == f"port {port} is taken by {service} on host 'shared'"
    expected_hint = (
        "pick another port; sshd listens on port 22 of every host"
        if port == 22
        else "pick a port that no shared service uses"
    )
    assert d.hint == expected_hint
    assert_at(text, d, new, str(port))


def test_redis_ports_follow_the_instance_count() -> None:
    # two instances use 6379 and 6380; 6381 is free
    text = edit(
        BASE, "{name: two, host: web-b, port: 3001}", "{name: two, host: shared, port: 6381}"
    )
    assert diagnose(text) == []


def test_redis_ports_follow_base_port() -> None:
    base = edit(
        BASE,
        "  postgres: {max_connections: 200}\n",
        "  postgres: {max_connections: 200}\n  redis: {base_port: 7000}\n",
    )
    free = edit(
        base, "{name: two, host: web-b, port: 3001}", "{name: two, host: shared, port: 6379}"
    )
    assert diagnose(free) == []
    taken = edit(
        base, "{name: two, host: web-b, port: 3001}", "{name: two, host: shared, port: 7001}"
    )
    assert one(diagnose(taken), "instances[1].port").message == (
        "port 7001 is taken by Redis on host 'shared'"
    )


def test_shared_redis_takes_one_port_and_warns() -> None:
    text = edit(
        BASE,
        "  postgres: {max_connections: 200}\n",
        "  postgres: {max_connections: 200}\n  redis: {mode: shared}\n",
    )
    text = edit(
        text, "{name: two, host: web-b, port: 3001}", "{name: two, host: shared, port: 6380}"
    )
    diagnostics = diagnose(text)
    assert at(diagnostics, "instances[1].port") == []
    d = one(diagnostics, "shared.redis.mode")
    assert d.severity is Severity.WARNING
    assert "every instance receives the others' events" in d.message
    assert d.hint == "use mode: per-instance to isolate instances"
    assert_at(text, d, "redis: {mode: shared}", "shared}")


def test_shared_service_ports_are_free_on_docker_hosts() -> None:
    text = edit(
        BASE, "{name: two, host: web-b, port: 3001}", "{name: two, host: web-b, port: 5432}"
    )
    assert diagnose(text) == []


def test_port_22_clashes_with_ssh_on_a_docker_host() -> None:
    new = "{name: two, host: web-b, port: 22}"
    text = edit(BASE, "{name: two, host: web-b, port: 3001}", new)
    d = one(diagnose(text), "instances[1].port")
    assert d.message == "port 22 is taken by SSH on host 'web-b'"
    assert d.hint == "pick another port; sshd listens on port 22 of every host"
    assert_at(text, d, new, "22")


def test_unknown_host_with_a_suggestion() -> None:
    new = "{name: two, host: web-aa, port: 3001}"
    text = edit(BASE, "{name: two, host: web-b, port: 3001}", new)
    d = one(diagnose(text), "instances[1].host")
    assert d.message == "unknown host 'web-aa'"
    assert d.hint == "did you mean 'web-a'?"
    assert_at(text, d, new, "web-aa")


def test_unknown_host_lists_the_known_hosts() -> None:
    text = edit(BASE, "{name: two, host: web-b, port: 3001}", "{name: two, host: zzz, port: 3001}")
    d = one(diagnose(text), "instances[1].host")
    assert d.message == "unknown host 'zzz'"
    assert d.hint == "known hosts: shared, web-a, web-b"


def test_an_instance_may_run_on_the_shared_host() -> None:
    text = edit(
        BASE, "{name: two, host: web-b, port: 3001}", "{name: two, host: shared, port: 3001}"
    )
    assert diagnose(text) == []


# -- network ----------------------------------------------------------------------------------------


def test_address_outside_the_network() -> None:
    text = edit(BASE, "address: 10.0.5.10", "address: 10.0.6.10")
    d = one(diagnose(text), "shared.host.address")
    assert d.message == "address 10.0.6.10 is outside network.cidr 10.0.5.0/24"
    assert d.hint == "give the host an address inside the fleet's network"
    assert_at(text, d, "address: 10.0.6.10", "10.0.6.10")


def test_duplicate_address() -> None:
    text = edit(BASE, "address: 10.0.5.21", "address: 10.0.5.20")
    d = one(diagnose(text), "hosts[1].address")
    assert d.message == "address 10.0.5.20 is already used by hosts[0].address"
    assert d.hint == "each host needs its own address"
    assert_at(text, d, "address: 10.0.5.20", "10.0.5.20", nth=1)
    assert at(diagnose(text), "hosts[0].address") == []


def test_duplicate_address_with_the_shared_host() -> None:
    text = edit(BASE, "address: 10.0.5.21", "address: 10.0.5.10")
    d = one(diagnose(text), "hosts[1].address")
    assert d.message == "address 10.0.5.10 is already used by shared.host.address"


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("10.0.5.0", "address 10.0.5.0 is the network or broadcast address of 10.0.5.0/24"),
        ("10.0.5.255", "address 10.0.5.255 is the network or broadcast address of 10.0.5.0/24"),
        ("10.0.5.1", "address 10.0.5.1 is the gateway's address"),
    ],
)
def test_addresses_that_are_not_host_addresses(address: str, message: str) -> None:
    text = edit(BASE, "address: 10.0.5.21", f"address: {address}")
    d = one(diagnose(text), "hosts[1].address")
    assert d.message == message
    assert_at(text, d, f"address: {address},", address)


def test_gateway_outside_the_network() -> None:
    text = edit(BASE, "gateway: 10.0.5.1", "gateway: 10.0.9.1")
    d = one(diagnose(text), "network.gateway")
    assert d.message == "gateway 10.0.9.1 is outside network.cidr 10.0.5.0/24"
    assert_at(text, d, "gateway: 10.0.9.1", "10.0.9.1")


def test_cidr_with_host_bits() -> None:
    text = edit(BASE, "cidr: 10.0.5.0/24", "cidr: 10.0.5.7/24")
    d = one(diagnose(text), "network.cidr")
    assert d.message == "'10.0.5.7/24' has host bits set"
    assert d.hint == "write the network address: 10.0.5.0/24"
    assert_at(text, d, "cidr: 10.0.5.7/24", "10.0.5.7/24")


def test_allow_from_with_host_bits() -> None:
    text = edit(BASE, "allow_from: [10.0.5.0/24]", "allow_from: [10.0.5.0/24, 192.168.1.1/16]")
    d = one(diagnose(text), "admin.allow_from[1]")
    assert d.message == "'192.168.1.1/16' has host bits set"
    assert d.hint == "write the network address: 192.168.0.0/16"
    assert_at(text, d, "192.168.1.1/16")


# -- capacity ---------------------------------------------------------------------------------------


def _pools(text: str, one_db: str, two_db: str, max_connections: int) -> str:
    text = edit(text, "{max_connections: 200}", f"{{max_connections: {max_connections}}}")
    text = edit(
        text,
        "{name: one, host: web-a, port: 3001}",
        f"{{name: one, host: web-a, port: 3001, database: {one_db}}}",
    )
    return edit(
        text,
        "{name: two, host: web-b, port: 3001}",
        f"{{name: two, host: web-b, port: 3001, database: {two_db}}}",
    )


def test_explicit_pools_exceeding_max_connections() -> None:
    budget = 20 - RESERVED_CONNECTIONS
    # 8 + 2 + 1 connections: one more than the budget of 10
    text = _pools(BASE, "{pool_size: 8, max_overflow: 2}", "{pool_size: 1}", 20)
    d = one(diagnose(text), "shared.postgres.max_connections")
    assert d.severity is Severity.ERROR
    assert d.message == (
        f"the instances' database pools need 11 connections, but max_connections 20 "
        f"leaves {budget} after a reserve of {RESERVED_CONNECTIONS}"
    )
    assert d.hint == (
        f"raise max_connections to at least {11 + RESERVED_CONNECTIONS}, "
        "or lower instances' database.pool_size"
    )
    assert_at(text, d, "max_connections: 20", "20")


def test_explicit_pools_that_fill_the_budget_exactly() -> None:
    text = _pools(BASE, "{pool_size: 8, max_overflow: 1}", "{pool_size: 1}", 20)
    assert diagnose(text) == []


def test_auto_sized_pools_with_too_many_instances() -> None:
    budget = 20 - RESERVED_CONNECTIONS  # every auto-sized instance needs at least one connection
    head = edit(BASE, "{max_connections: 200}", "{max_connections: 20}")
    head = head[: head.index("instances:\n")] + "instances:\n"
    fits = head + instances_text(budget, hosts=1).replace("web-0", "web-a")
    assert diagnose(fits) == []
    text = head + instances_text(budget + 1, hosts=1).replace("web-0", "web-a")
    d = one(diagnose(text), "shared.postgres.max_connections")
    assert d.message == (
        f"the instances' database pools need {budget + 1} connections, but max_connections 20 "
        f"leaves {budget} after a reserve of {RESERVED_CONNECTIONS}"
    )
    assert d.hint is not None and d.hint.startswith(f"raise max_connections to at least {21}")


def test_explicit_pool_leaving_nothing_for_auto_sized_instances() -> None:
    # 10 explicit connections fill the budget; the auto-sized instance needs at least one more
    text = _pools(BASE, "{pool_size: 10}", "{}", 20)
    d = one(diagnose(text), "shared.postgres.max_connections")
    assert d.message == (
        f"the instances' database pools need 11 connections, but max_connections 20 "
        f"leaves {20 - RESERVED_CONNECTIONS} after a reserve of {RESERVED_CONNECTIONS}"
    )
    assert d.hint is not None
    assert d.hint.startswith(f"raise max_connections to at least {11 + RESERVED_CONNECTIONS},")


def test_memory_warning_on_a_docker_host() -> None:
    text = edit(
        BASE,
        "{name: web-a, address: 10.0.5.20, memory_gb: 64",
        "{name: web-a, address: 10.0.5.20, memory_gb: 1",
    )
    diagnostics = diagnose(text)
    d = one(diagnostics, "hosts[0].memory_gb")
    assert d.severity is Severity.WARNING
    need = (MEMORY_MB_OS + MEMORY_MB_OPENWEBUI) / 1024
    assert d.message == (
        f"host 'web-a' has 1 GB but its services and 1 instance(s) need about {need:.1f} GB"
    )
    assert d.hint == "add memory or move instances to another host"
    assert_at(text, d, "memory_gb: 1,", "1")
    # a warning does not stop validation
    source, _ = parse(text, "bp.yml")
    assert source is not None
    fleet, _ = validate(source)
    assert fleet is not None


def test_memory_warning_on_the_shared_host_counts_services() -> None:
    text = edit(BASE, "address: 10.0.5.10, memory_gb: 64", "address: 10.0.5.10, memory_gb: 2")
    d = one(diagnose(text), "shared.host.memory_gb")
    need = (
        MEMORY_MB_OS + MEMORY_MB_POSTGRES + MEMORY_MB_QDRANT + MEMORY_MB_OLLAMA_IDLE + 16 * 2
    ) / 1024  # two per-instance redis-servers
    assert need > 2
    assert d.message == (
        f"host 'shared' has 2 GB but its services and 0 instance(s) need about {need:.1f} GB"
    )


def test_enough_memory_gives_no_warning() -> None:
    text = edit(
        BASE,
        "{name: web-a, address: 10.0.5.20, memory_gb: 64",
        "{name: web-a, address: 10.0.5.20, memory_gb: 2",
    )
    assert (MEMORY_MB_OS + MEMORY_MB_OPENWEBUI) <= 2 * 1024
    assert diagnose(text) == []


def test_missing_data_volume_warns() -> None:
    text = edit(
        BASE,
        "{name: web-b, address: 10.0.5.21, memory_gb: 64, data_volume: {label: owui-data}}",
        "{name: web-b, address: 10.0.5.21, memory_gb: 64}",
    )
    d = one(diagnose(text), "hosts[1].name")
    assert d.severity is Severity.WARNING
    assert d.message == "host 'web-b' has no data_volume: replacing it loses Open WebUI data of two"


# -- env --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OWNED_ENV))
def test_env_may_not_override_owned_variables(name: str) -> None:
    new = f"{{name: one, host: web-a, port: 3001, env: {{WEBUI_NAME: x, {name}: y}}}}"
    text = edit(BASE, "{name: one, host: web-a, port: 3001}", new)
    diagnostics = diagnose(text)
    d = one(diagnostics, f"instances[0].env.{name}")
    assert d.message == f"{name} is owned by owuibuild"
    # A variable the blueprint sets in a setting of its own is pointed there.
    assert d.hint == ENV_SETTINGS.get(
        name, "owuibuild sets this variable from the plan; remove it from env"
    )
    assert_at(text, d, new, f"{name}:")  # at the key, not the value
    assert len(diagnostics) == 1


def test_owned_variables_include_connections_and_secrets() -> None:
    assert {"DATABASE_URL", "REDIS_URL", "WEBUI_SECRET_KEY", "QDRANT_API_KEY"} <= OWNED_ENV
    # The admin account and sign-up come from the blueprint's own settings, never from env.
    assert {"WEBUI_ADMIN_PASSWORD", "ENABLE_SIGNUP", "DEFAULT_USER_ROLE"} <= OWNED_ENV
    assert set(ENV_SETTINGS) <= OWNED_ENV
    assert "signup: {enabled: true}" in ENV_SETTINGS["ENABLE_SIGNUP"]


@pytest.mark.parametrize(
    ("setting", "path", "message"),
    [
        ("admin: {email: 'a@b'}", "admin.email", "is not an e-mail address Open WebUI accepts"),
        (
            "admin: {email: 'x\"@a.org'}",
            "admin.email",
            "is not an e-mail address Open WebUI accepts",
        ),
        ("admin: {name: ''}", "admin.name", "should be non-empty"),
        ("admin: {mail: a@b.org}", "admin.mail", "unknown key 'mail'"),
        ("signup: {default_role: admin}", "signup.default_role", "admin"),
        ("signup: {enabled: 'yes'}", "signup.enabled", "expected true or false"),
    ],
)
def test_admin_and_signup_settings_are_checked(setting: str, path: str, message: str) -> None:
    new = f"{{name: one, host: web-a, port: 3001, {setting}}}"
    text = edit(BASE, "{name: one, host: web-a, port: 3001}", new)
    diagnostics = diagnose(text)
    d = one(diagnostics, f"instances[0].{path}")
    assert message in d.message
    assert len(diagnostics) == 1


def test_other_env_variables_are_allowed() -> None:
    text = edit(
        BASE,
        "{name: one, host: web-a, port: 3001}",
        "{name: one, host: web-a, port: 3001, env: {WEBUI_NAME: 'A: b', ENABLE_LDAP: 'false'}}",
    )
    assert diagnose(text) == []


@pytest.mark.parametrize(
    ("env", "key", "shown"),
    [("{1: x}", "1", "1"), ("{A: y, 1: x}", "1", "1"), ("{~: x}", "~", "None")],
)
def test_env_keys_must_be_text(env: str, key: str, shown: str) -> None:
    new = f"{{name: one, host: web-a, port: 3001, env: {env}}}"
    text = edit(BASE, "{name: one, host: web-a, port: 3001}", new)
    (d,) = diagnose(text)
    assert d.is_error and d.path == ("instances", 0, "env", shown)
    assert d.message == f"mapping key {shown} is not text"
    assert d.hint == "quote the key, or check the indentation"
    assert_at(text, d, new, f"{key}: x")


def test_a_date_where_an_enum_is_expected() -> None:
    text = edit(BASE, "name: fleet\n", "name: fleet\nos: {distro: 2024-01-01}\n")
    d = one(diagnose(text), "os.distro")
    assert d.message == '"2024-01-01" is not allowed'
    assert d.hint == 'use one of: "debian-13", "debian-12", "ubuntu-24.04"'
    assert_at(text, d, "distro: 2024-01-01", "2024")


def test_a_date_where_a_number_is_expected() -> None:
    text = edit(BASE, "port: 3001}\n  - {name: two", "port: 2024-01-01}\n  - {name: two")
    d = one(diagnose(text), "instances[0].port")
    assert d.message == "expected an integer, got a date (quote it to make it text)"


# -- unknown keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "path", "suggestion"),
    [
        ("instances:\n", "instancse:\n", "instancse", "instancse", "instances"),
        (
            "{max_connections: 200}",
            "{max_conections: 200}",
            "max_conections",
            "shared.postgres.max_conections",
            "max_connections",
        ),
        (
            "{name: one, host: web-a, port: 3001}",
            "{name: one, host: web-a, prot: 3001}",
            "prot",
            "instances[0].prot",
            "port",
        ),
        (
            "{name: web-b, address: 10.0.5.21, memory_gb: 64, data_volume: {label: owui-data}}",
            "{name: web-b, address: 10.0.5.21, memory_gb: 64, data_volume: {lable: owui-data}}",
            "lable",
            "hosts[1].data_volume.lable",
            "label",
        ),
        ("allow_from: [", "alow_from: [", "alow_from", "admin.alow_from", "allow_from"),
    ],
)
def test_unknown_keys_with_did_you_mean(
    old: str, new: str, key: str, path: str, suggestion: str
) -> None:
    text = edit(BASE, old, new)
    diagnostics = diagnose(text)
    d = one(diagnostics, path)
    assert d.message == f"unknown key '{key}'"
    assert d.hint == f"did you mean '{suggestion}'?"
    assert_at(text, d, new, key)  # at the key itself


def test_unknown_key_without_a_close_match_lists_allowed_keys() -> None:
    text = edit(BASE, "{max_connections: 200}", "{max_connections: 200, zzz: 1}")
    d = one(diagnose(text), "shared.postgres.zzz")
    assert d.message == "unknown key 'zzz'"
    assert d.hint == "allowed keys: max_connections, version"


def test_missing_required_key_is_located_at_its_mapping() -> None:
    text = edit(BASE, "{name: one, host: web-a, port: 3001}", "{name: one, host: web-a}")
    d = one(diagnose(text), "instances[0]")
    assert d.message == "missing required key 'port'"
    assert_at(text, d, "{name: one, host: web-a}")


def test_wrong_type_is_explained() -> None:
    text = edit(BASE, "port: 3001}\n  - {name: two", "port: '3001'}\n  - {name: two")
    d = one(diagnose(text), "instances[0].port")
    assert d.message == 'expected an integer, got the string "3001"'


# -- pinned artifacts -------------------------------------------------------------------------------


@pytest.mark.parametrize("service", ["ollama", "qdrant"])
def test_unpinned_version_without_sha256(service: str) -> None:
    text = edit(BASE, "  postgres:", f"  {service}: {{version: '0.99.0'}}\n  postgres:")
    d = one(diagnose(text), f"shared.{service}.version")
    assert d.message == f"{service} 0.99.0 has no known published checksum"
    assert d.hint is not None
    assert d.hint.startswith(f"add shared.{service}.sha256 with the release file's sha256")
    assert_at(text, d, f"{service}: {{version: '0.99.0'}}", "'0.99.0'")


@pytest.mark.parametrize("service", ["ollama", "qdrant"])
def test_unpinned_version_with_sha256_is_accepted(service: str) -> None:
    text = edit(
        BASE, "  postgres:", f"  {service}: {{version: '0.99.0', sha256: {'ab' * 32}}}\n  postgres:"
    )
    assert diagnose(text) == []


def test_known_versions_need_no_sha256() -> None:
    from owuibuild.artifacts import OLLAMA_SHA256, QDRANT_SHA256

    ollama, qdrant = sorted(OLLAMA_SHA256)[0], sorted(QDRANT_SHA256)[0]
    text = edit(
        BASE,
        "  postgres:",
        f"  ollama: {{version: '{ollama}'}}\n  qdrant: {{version: '{qdrant}'}}\n  postgres:",
    )
    assert diagnose(text) == []


def test_postgres_version_must_be_the_distributions() -> None:
    text = edit(BASE, "{max_connections: 200}", "{max_connections: 200, version: 16}")
    d = one(diagnose(text), "shared.postgres.version")
    assert d.message == "PostgreSQL 16 is not the version debian-12 ships (15)"
    ubuntu = edit(text, "name: fleet\n", "name: fleet\nos: {distro: ubuntu-24.04}\n")
    assert diagnose(ubuntu) == []


# -- all at once ------------------------------------------------------------------------------------


def test_every_error_is_reported_at_once() -> None:
    text = BASE
    text = edit(text, "name: fleet", "name: Fleet")
    text = edit(text, "{max_connections: 200}", "{max_conections: 200}")
    text = edit(text, "address: 10.0.5.21", "address: 10.0.5.20")
    text = edit(
        text, "{name: two, host: web-b, port: 3001}", "{name: one, host: nowhere, port: 3001}"
    )
    text += "  - {name: three, host: shared, port: 5432, env: {REDIS_URL: x}}\n"
    text += "  - {name: four, host: web-a, port: 3001}\n"
    diagnostics = diagnose(text)
    paths = {d.path for d in diagnostics if d.is_error}
    assert {
        ("name",),
        ("shared", "postgres", "max_conections"),
        ("hosts", 1, "address"),
        ("instances", 1, "name"),
        ("instances", 1, "host"),
        ("instances", 2, "port"),
        ("instances", 2, "env", "REDIS_URL"),
        ("instances", 3, "port"),
    } <= paths
    # sorted by position in the file
    positions = [(d.line or 0, d.column or 0) for d in diagnostics]
    assert positions == sorted(positions)
