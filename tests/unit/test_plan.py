"""The plan: every derived value, computed once from the fleet."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from fleetdoc import BASE, edit
from owuibuild.model import Fleet
from owuibuild.plan import (
    MAX_CONNECTIONS_PER_INSTANCE,
    OLLAMA_PORT,
    POSTGRES_PORT,
    QDRANT_PORT,
    RESERVED_CONNECTIONS,
    SSH_PORT,
    Plan,
    connections_used,
    database_pools,
    identifier,
    make_plan,
)
from owuibuild.source import parse
from owuibuild.validate import validate

pytestmark = pytest.mark.unit


def fleet_of(text: str) -> Fleet:
    source, _ = parse(text, "bp.yml")
    assert source is not None
    fleet, diagnostics = validate(source)
    assert fleet is not None, [d.as_dict() for d in diagnostics]
    return fleet


def plan_of(text: str) -> Plan:
    return make_plan(fleet_of(text))


# -- pools ------------------------------------------------------------------------------------------


def test_auto_pools_share_the_budget_up_to_the_cap() -> None:
    pools = database_pools(200, [(None, None)] * 5)
    assert pools is not None
    per = min(MAX_CONNECTIONS_PER_INSTANCE, (200 - RESERVED_CONNECTIONS) // 5)
    assert all(p + o == per for p, o in pools)
    assert all(p >= 1 and o >= 0 for p, o in pools)


def test_auto_pools_shrink_with_many_instances() -> None:
    n = 60
    pools = database_pools(100, [(None, None)] * n)
    assert pools is not None
    assert connections_used(pools) <= 100 - RESERVED_CONNECTIONS
    assert all(p >= 1 for p, _ in pools)


def test_explicit_pools_are_kept_and_autos_get_the_rest() -> None:
    pools = database_pools(50, [(30, 5), (None, None)])
    assert pools is not None
    assert pools[0] == (30, 5)
    assert sum(pools[1]) == min(MAX_CONNECTIONS_PER_INSTANCE, 50 - RESERVED_CONNECTIONS - 35)
    assert connections_used(pools) <= 50 - RESERVED_CONNECTIONS


def test_explicit_overflow_of_an_auto_pool_is_capped() -> None:
    pools = database_pools(200, [(None, 100)])
    assert pools is not None
    pool, overflow = pools[0]
    assert pool + overflow <= MAX_CONNECTIONS_PER_INSTANCE


def test_explicit_pool_without_overflow_has_none() -> None:
    assert database_pools(200, [(7, None)]) == [(7, 0)]


def test_pools_that_cannot_fit_are_none() -> None:
    budget = 20 - RESERVED_CONNECTIONS
    assert database_pools(20, [(None, None)] * budget) is not None
    assert database_pools(20, [(None, None)] * (budget + 1)) is None


def test_make_plan_refuses_pools_that_do_not_fit() -> None:
    fleet = fleet_of(BASE)
    from dataclasses import replace

    tight = replace(
        fleet,
        shared=replace(
            fleet.shared,
            postgres=replace(fleet.shared.postgres, max_connections=RESERVED_CONNECTIONS),
        ),
    )
    with pytest.raises(ValueError):
        make_plan(tight)


def test_identifier() -> None:
    assert identifier("admin-office") == "admin_office"
    assert identifier("math") == "math"


# -- the plan ---------------------------------------------------------------------------------------


def test_instances_get_their_own_names_ports_and_paths() -> None:
    plan = plan_of(edit(BASE, "{name: two, host: web-b", "{name: two-b, host: web-b"))
    one, two = plan.instances
    # Without allocation records, the first instance takes the first slot of each range.
    assert (one.redis_port, two.redis_port) == (6379, 6380)
    assert (str(one.docker_subnet), str(two.docker_subnet)) == ("172.31.0.0/28", "172.31.0.16/28")
    assert two.db_name == two.db_role == two.qdrant_collection_prefix == "two_b"
    assert two.redis_user == two.redis_key_prefix == "two-b"
    assert two.bundle_dir == "/opt/owuibuild/two-b"
    assert two.data_dir == "/var/lib/owuibuild/instances/two-b"
    assert two.unit_name == "owui-two-b.service"
    assert two.bind_address == "10.0.5.21"  # private by default
    assert two.redis_address == IPv4Address("10.0.5.10")
    assert [r.name for r in (two.db_password, two.redis_password, two.webui_secret_key)] == [
        "instances.two-b.db_password",
        "instances.two-b.redis_password",
        "instances.two-b.webui_secret_key",
    ]


def test_public_instances_bind_everywhere_and_open_the_firewall() -> None:
    plan = plan_of(
        edit(
            BASE,
            "{name: one, host: web-a, port: 3001}",
            "{name: one, host: web-a, port: 3001, public: true}",
        )
    )
    one = plan.instances[0]
    assert one.bind_address == "0.0.0.0"
    rule = next(r for r in plan.docker_hosts[0].firewall if r.service == "openwebui-one")
    assert rule.sources == (IPv4Network("0.0.0.0/0"),)
    private = next(r for r in plan.docker_hosts[1].firewall if r.service == "openwebui-two")
    assert private.sources == (IPv4Network("10.0.5.0/24"),)


def test_per_instance_redis_ports() -> None:
    plan = plan_of(BASE)
    assert [i.redis_port for i in plan.instances] == [6379, 6380]
    assert [(r.name, r.port) for r in plan.redis_servers] == [("one", 6379), ("two", 6380)]


def test_shared_redis() -> None:
    plan = plan_of(
        edit(
            BASE,
            "  postgres: {max_connections: 200}\n",
            "  postgres: {max_connections: 200}\n  redis: {mode: shared, base_port: 7000}\n",
        )
    )
    assert [i.redis_port for i in plan.instances] == [7000, 7000]
    assert len(plan.redis_servers) == 1 and plan.redis_servers[0].port == 7000
    assert plan.redis_servers[0].instances == plan.instances


def test_shared_host_firewall_admits_only_instance_hosts() -> None:
    plan = plan_of(BASE)
    rules = {r.service: r for r in plan.shared.firewall}
    assert rules["ssh"].port == SSH_PORT and rules["ssh"].sources == (IPv4Network("10.0.5.0/24"),)
    clients = (IPv4Network("10.0.5.20/32"), IPv4Network("10.0.5.21/32"))
    assert (rules["postgresql"].port, rules["postgresql"].sources) == (POSTGRES_PORT, clients)
    assert (rules["qdrant"].port, rules["qdrant"].sources) == (QDRANT_PORT, clients)
    assert (rules["ollama"].port, rules["ollama"].sources) == (OLLAMA_PORT, clients)
    # each redis-server admits only the host of its own instance
    assert rules["redis-one"].sources == (IPv4Network("10.0.5.20/32"),)
    assert rules["redis-two"].sources == (IPv4Network("10.0.5.21/32"),)


def test_docker_hosts_open_ssh_and_their_instances_only() -> None:
    plan = plan_of(BASE)
    web_a = plan.docker_hosts[0]
    assert [(r.service, r.port) for r in web_a.firewall] == [
        ("ssh", SSH_PORT),
        ("openwebui-one", 3001),
    ]
    assert web_a.role == "docker" and web_a.runs_docker
    assert plan.shared.role == "shared" and not plan.shared.runs_docker
    assert [h.name for h in plan.hosts] == ["shared", "web-a", "web-b"]
    assert plan.instances_on("web-b") == (plan.instances[1],)
    assert web_a.instance_id == "fleet-web-a"


def test_image_models_urls_and_secrets() -> None:
    text = (
        BASE.replace(
            "  postgres:", "  ollama: {models: [llama3.2:3b], embedding_model: bge-m3}\n  postgres:"
        )
        + "openwebui: {version: '0.6.5', digest: sha256:"
        + "a" * 64
        + "}\n"
    )
    plan = plan_of(text)
    assert plan.openwebui_image == f"ghcr.io/open-webui/open-webui:v0.6.5@sha256:{'a' * 64}"
    assert plan.ollama_models == ("llama3.2:3b", "bge-m3")
    assert plan.ollama_url == f"https://10.0.5.10:{OLLAMA_PORT}"
    assert plan.qdrant_url == f"https://10.0.5.10:{QDRANT_PORT}"
    names = [s.name for s in plan.secrets]
    assert names[0] == "qdrant.api_key"
    assert names[1] == "fleet.seed_signing_key"
    assert len(names) == len(set(names)) == 2 + 4 * len(plan.instances)


def test_embedding_model_is_not_pulled_twice() -> None:
    plan = plan_of(BASE)
    assert plan.ollama_models == ("qwen2.5:3b", "nomic-embed-text")


def test_plan_pools_fit_the_validated_budget() -> None:
    plan = plan_of(BASE)
    used = sum(i.db_pool_size + i.db_max_overflow for i in plan.instances)
    assert used <= 200 - RESERVED_CONNECTIONS
    assert all(i.db_pool_size >= 1 for i in plan.instances)
