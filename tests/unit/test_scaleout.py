"""Scale-out: services placed on their own hosts, several Ollama nodes, a Qdrant cluster.

The real validators (cloud-init schema, shellcheck, systemd-analyze, nft, compose config) run
on blueprints/scale-out.yml with every other example; these tests check what the plan makes
of the placement, and the validation of impossible layouts.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Network
from typing import Any

import pytest
import yaml
from conftest import Rendered
from fleetdoc import BASE, diagnose, edit, one, where
from owuibuild.hostconfig import qdrant
from owuibuild.plan import FLEET_CA, SERVER_CERT

pytestmark = pytest.mark.unit


@pytest.fixture
def scale(render_example: Callable[[str], Rendered]) -> Rendered:
    return render_example("scale-out.yml")


def cloud_config(r: Rendered, host: str) -> dict[str, Any]:
    doc = r.user_data(host)
    assert isinstance(doc, dict)
    return doc


def written(r: Rendered, host: str) -> dict[str, str]:
    return {f["path"]: f["content"] for f in cloud_config(r, host).get("write_files", [])}


def test_each_service_runs_only_where_it_is_placed(scale: Rendered) -> None:
    expected = {
        "ai-shared": {"redis"},
        "db-1": {"postgres"},
        "gpu-1": {"ollama"},
        "gpu-2": {"ollama"},
        "vec-1": {"qdrant"},
        "vec-2": {"qdrant"},
        "vec-3": {"qdrant"},
        "web-a": set(),
        "web-b": set(),
    }
    markers = {
        "postgres": "/etc/owuibuild/postgresql/init.sql",
        "redis": "/etc/redis/redis-sales.conf",
        "qdrant": "/etc/qdrant/config.yaml",
        "ollama": "/etc/systemd/system/ollama.service",
    }
    for host, services in expected.items():
        files = written(scale, host)
        present = {s for s, path in markers.items() if path in files}
        assert present == services, host


def firewall(r: Rendered, host: str) -> dict[str, tuple[int, tuple[IPv4Network, ...]]]:
    plan: Any = r.plan
    (h,) = [h for h in plan.hosts if h.name == host]
    return {rule.service: (rule.port, rule.sources) for rule in h.firewall}


def test_firewall_follows_the_placement(scale: Rendered) -> None:
    webs = (IPv4Network("10.30.0.50/32"), IPv4Network("10.30.0.51/32"))
    assert firewall(scale, "db-1")["postgresql"] == (5432, webs)
    assert "postgresql" not in firewall(scale, "ai-shared")
    for gpu in ("gpu-1", "gpu-2"):
        assert firewall(scale, gpu)["ollama"] == (11434, webs)
    peers = tuple(IPv4Network(f"10.30.0.4{n}/32") for n in (1, 2, 3))
    db = IPv4Network("10.30.0.20/32")  # the backup timer on db-1 takes Qdrant snapshots
    for vec in ("vec-1", "vec-2", "vec-3"):
        rules = firewall(scale, vec)
        assert rules["qdrant"] == (6333, (db, *webs))
        assert rules["qdrant-p2p"] == (6335, peers)  # the peer port only between peers
    assert set(firewall(scale, "ai-shared")) == {
        "ssh",
        "redis-sales",
        "redis-support",
        "redis-research",
    }


def test_pg_hba_on_the_database_host_admits_each_role_from_its_host(scale: Rendered) -> None:
    hba = written(scale, "db-1")["/etc/owuibuild/postgresql/pg_hba.conf"]
    lines = [line.split() for line in hba.splitlines() if line.startswith("host")]
    assert ["hostssl", '"sales"', '"sales"', "10.30.0.50/32", "scram-sha-256"] in lines
    assert ["hostssl", '"research"', '"research"', "10.30.0.51/32", "scram-sha-256"] in lines


def test_instances_balance_across_every_ollama_node(scale: Rendered) -> None:
    env = scale.text("instances/sales/sales.env")
    assert 'OLLAMA_BASE_URLS="https://10.30.0.31:11434;https://10.30.0.32:11434"' in env
    assert "@10.30.0.20:5432/sales" in env  # the database host
    assert "QDRANT_URI=https://10.30.0.41:6333" in env
    assert "@10.30.0.10:6379/0" in env  # Redis stays on ai-shared


# Every key owuibuild writes must be one Qdrant documents. Source: Qdrant's reference
# configuration, qdrant/qdrant config/config.yaml (commit 00bb9b74d5b91ab218bdd9eb5d4305a0e94af637),
# and https://qdrant.tech/documentation/guides/distributed_deployment/ for cluster mode.
QDRANT_DOCUMENTED_KEYS = {
    "log_level",
    "storage.storage_path",
    "storage.snapshots_path",
    "storage.collection.replication_factor",
    "service.host",
    "service.http_port",
    "service.grpc_port",
    "service.api_key",
    "service.enable_cors",
    "service.enable_tls",
    "service.jwt_rbac",
    "cluster.enabled",
    "cluster.p2p.port",
    "cluster.p2p.enable_tls",
    "cluster.consensus.tick_period_ms",
    "telemetry_disabled",
    "tls.cert",
    "tls.key",
    "tls.ca_cert",
}


def leaf_keys(doc: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in doc.items():
        path = f"{prefix}{key}"
        out |= leaf_keys(value, path + ".") if isinstance(value, dict) else {path}
    return out


def test_qdrant_cluster_config_uses_documented_keys(scale: Rendered) -> None:
    configs = {
        vec: yaml.safe_load(written(scale, vec)["/etc/qdrant/config.yaml"])
        for vec in ("vec-1", "vec-2", "vec-3")
    }
    for vec, config in configs.items():
        assert leaf_keys(config) <= QDRANT_DOCUMENTED_KEYS, vec
        assert config["cluster"]["enabled"] is True
        assert config["cluster"]["p2p"] == {"port": 6335, "enable_tls": True}
        assert config["storage"]["collection"]["replication_factor"] == 2
        assert config["tls"] == {
            "cert": SERVER_CERT,
            "key": qdrant.TLS_KEY,
            "ca_cert": FLEET_CA,
        }
        assert config["service"]["enable_tls"] is True
    # one API key for the whole cluster
    assert len({c["service"]["api_key"] for c in configs.values()}) == 1


def test_the_first_qdrant_node_bootstraps_the_others(scale: Rendered) -> None:
    def exec_start(host: str) -> str:
        unit = written(scale, host)["/etc/systemd/system/qdrant.service"]
        (line,) = [x for x in unit.splitlines() if x.startswith("ExecStart=")]
        return line

    assert exec_start("vec-1").endswith('"--uri" "https://10.30.0.41:6335"')
    assert (
        '"--bootstrap" "https://10.30.0.41:6335" "--uri" "https://10.30.0.42:6335"'
        in exec_start("vec-2")
    )
    assert (
        '"--bootstrap" "https://10.30.0.41:6335" "--uri" "https://10.30.0.43:6335"'
        in exec_start("vec-3")
    )


PLACED = BASE.replace(
    "instances:\n",
    "placement: {qdrant: [web-a, web-b], ollama: [gpu-9], postgres: web-a}\ninstances:\n",
)


def test_impossible_layouts_are_located_errors() -> None:
    diagnostics = diagnose(PLACED)
    cluster = one(diagnostics, "placement.qdrant")
    assert (
        cluster.message == "a Qdrant cluster of 2 nodes cannot keep a Raft majority when one fails"
    )
    assert (cluster.line, cluster.column) == where(PLACED, "qdrant: [web-a, web-b]", "[web-a")
    unknown = one(diagnostics, "placement.ollama[0]")
    assert unknown.message == "Ollama is placed on unknown host 'gpu-9'"
    assert (unknown.line, unknown.column) == where(PLACED, "[gpu-9]", "gpu-9")


def test_replication_factor_above_the_node_count() -> None:
    text = edit(
        BASE,
        "  postgres: {max_connections: 200}\n",
        "  postgres: {max_connections: 200}\n  qdrant: {replication_factor: 4}\n",
    )
    text = text.replace("instances:\n", "placement: {qdrant: [shared, web-a, web-b]}\ninstances:\n")
    d = one(diagnose(text), "shared.qdrant.replication_factor")
    assert d.message == "replication_factor 4 is more than the 3 Qdrant nodes"
    assert d.hint == "use at most 3"


def test_a_service_port_on_its_new_host_clashes_with_an_instance() -> None:
    text = BASE.replace("instances:\n", "placement: {postgres: web-a}\ninstances:\n")
    text = edit(
        text, "{name: one, host: web-a, port: 3001}", "{name: one, host: web-a, port: 5432}"
    )
    d = one(diagnose(text), "instances[0].port")
    assert d.message == "port 5432 is taken by PostgreSQL on host 'web-a'"


def test_runbook_names_every_host_instance_and_port(
    render_example: Callable[[str], Rendered],
) -> None:
    for example in ("seed-example.yml", "homelab.yml", "multi-host.yml", "scale-out.yml"):
        r = render_example(example)
        readme = r.text("README.md")
        plan: Any = r.plan
        for host in plan.hosts:
            assert f"| {host.name} | {host.host.address} |" in readme, (example, host.name)
            for rule in host.firewall:
                assert f"| {host.name} | {rule.port}/tcp | {rule.service} |" in readme
                assert f"|{rule.service} {rule.port}| h_{host.name.replace('-', '_')}" in readme
        for inst in plan.instances:
            assert f"| {inst.name} | {inst.host.name} | {inst.bind_address}:{inst.port} |" in readme
            assert f"Open WebUI {inst.name} :{inst.port}" in readme
        assert "```mermaid\nflowchart LR\n" in readme
        for secret in r.secrets.all_values():  # type: ignore[attr-defined]
            assert secret not in readme
