"""Section: Prometheus, the blackbox exporter and Alertmanager on the monitoring host
(blueprint: monitoring; placement.monitoring, by default the shared host).

Prometheus scrapes what the plan says runs: the node exporter of every host, the PostgreSQL
exporter, every Redis server through the Redis exporter, Qdrant's own /metrics (with a
read-only token), and through the blackbox exporter every instance's /health (through its
front door when there is one), Ollama's /api/version and each host's certificate. Every scrape
is HTTPS verified against the fleet CA. Its samples live on the data volume for the blueprint's
retention. Its rules come from owuibuild.alerts; Alertmanager runs when the blueprint names a
receiver. Prometheus serves HTTPS on the host's private address (the firewall admits the
admins' networks, and with openwebui_otel the instances, whose OpenTelemetry metrics its OTLP
receiver takes); the blackbox exporter and Alertmanager listen on loopback only.
"""

from __future__ import annotations

from typing import Any

from .. import qdrant_access, yamldump
from ..alerts import rules_document
from ..plan import (
    ALERTMANAGER_PORT,
    BLACKBOX_PORT,
    DATA_MOUNT,
    FLEET_CA,
    HTTPS_PORT,
    LOOPBACK,
    NODE_EXPORTER_PORT,
    OLLAMA_PORT,
    POSTGRES_EXPORTER_PORT,
    PROMETHEUS_PORT,
    QDRANT_PORT,
    REDIS_EXPORTER_PORT,
    HostPlan,
    InstancePlan,
    Plan,
)
from ..secrets import Secrets
from . import Command, File, Part, start_units
from .datavolume import state_dir_command
from .exporters import CONFIG_DIR, KEY_DIR, WEB_CONFIG, Exporter, listen, unit

ORDER = 265

PROMETHEUS = Exporter("prometheus", "Prometheus")
BLACKBOX = Exporter("prometheus-blackbox-exporter", "Prometheus blackbox exporter")
ALERTMANAGER = Exporter("prometheus-alertmanager", "Prometheus Alertmanager")

CONFIG = f"{CONFIG_DIR}/prometheus.yml"
RULES = f"{CONFIG_DIR}/rules.yml"
BLACKBOX_CONFIG = f"{CONFIG_DIR}/blackbox.yml"
ALERTMANAGER_CONFIG = f"{CONFIG_DIR}/alertmanager.yml"
# Qdrant's read-only token, for Prometheus alone.
QDRANT_TOKEN = f"{KEY_DIR}/qdrant-token"
PROMETHEUS_DATA = f"{DATA_MOUNT}/prometheus"
ALERTMANAGER_DATA = f"{DATA_MOUNT}/alertmanager"
SCRAPE_INTERVAL = "30s"
HEALTH_PATH = "/health"


def qdrant_token(plan: Plan, secrets: Secrets) -> str:
    """A JWT granting read access to everything, nothing more: enough for /metrics."""
    key = secrets[plan.qdrant_api_key.name]
    return qdrant_access.signed(key, {"access": "r", "exp": qdrant_access.EXPIRY}) + "\n"


def _https(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"scheme": "https", "tls_config": {"ca_file": FLEET_CA, **(extra or {})}}


def _static(targets: list[str], **labels: str) -> dict[str, Any]:
    return {"targets": targets, "labels": labels} if labels else {"targets": targets}


def instance_module(inst: InstancePlan) -> str:
    return f"instance-{inst.name}"


def health_target(plan: Plan, inst: InstancePlan) -> str:
    if plan.front_door is not None:
        return f"https://{inst.host.address}:{HTTPS_PORT}{HEALTH_PATH}"
    return f"http://{inst.host.address}:{inst.port}{HEALTH_PATH}"


def blackbox_config(plan: Plan) -> dict[str, Any]:
    """The probe modules: one for the fleet's own HTTPS, one per instance behind a front door
    (its host name as SNI and Host), a TLS handshake for certificates."""
    fleet_tls = {"ca_file": FLEET_CA}
    modules: dict[str, Any] = {
        "fleet_https": {
            "prober": "http",
            "timeout": "10s",
            "http": {"preferred_ip_protocol": "ip4", "tls_config": fleet_tls},
        },
        "fleet_tls": {
            "prober": "tcp",
            "timeout": "10s",
            # a copy: one dict in two places would be written as a YAML anchor and alias
            "tcp": {"preferred_ip_protocol": "ip4", "tls": True, "tls_config": dict(fleet_tls)},
        },
    }
    door = plan.front_door
    for inst in plan.instances:
        http: dict[str, Any] = {"preferred_ip_protocol": "ip4"}
        if door is not None:
            assert inst.server_name is not None
            tls: dict[str, Any] = {"server_name": inst.server_name}
            if door.tls == "internal":
                tls["ca_file"] = FLEET_CA
            http.update(headers={"Host": inst.server_name}, tls_config=tls, fail_if_not_ssl=True)
        modules[instance_module(inst)] = {"prober": "http", "timeout": "10s", "http": http}
    return {"modules": modules}


def scrape_configs(plan: Plan) -> list[dict[str, Any]]:
    watch = plan.monitoring
    assert watch is not None
    blackbox = f"{LOOPBACK}:{BLACKBOX_PORT}"
    probe_relabel = [
        {"source_labels": ["__address__"], "target_label": "__param_target"},
        {"source_labels": ["__param_target"], "target_label": "instance"},
        {"target_label": "__address__", "replacement": blackbox},
    ]
    redis = plan.redis_host
    jobs: list[dict[str, Any]] = [
        {
            "job_name": "prometheus",
            **_https(),
            "static_configs": [
                _static([f"{watch.host.address}:{PROMETHEUS_PORT}"], host=watch.host.name)
            ],
        },
        {
            "job_name": "node",
            **_https(),
            "static_configs": [
                _static([f"{h.host.address}:{NODE_EXPORTER_PORT}"], host=h.name) for h in plan.hosts
            ],
        },
        {
            "job_name": "postgres",
            **_https(),
            "static_configs": [
                _static(
                    [f"{plan.postgres_host.address}:{POSTGRES_EXPORTER_PORT}"],
                    host=plan.postgres_host.name,
                )
            ],
        },
    ]
    if plan.redis_servers:
        jobs.append(
            {
                "job_name": "redis",
                **_https(),
                "metrics_path": "/scrape",
                "static_configs": [
                    _static([f"rediss://{redis.address}:{s.port}"], host=redis.name, server=s.name)
                    for s in plan.redis_servers
                ],
                "relabel_configs": [
                    {"source_labels": ["__address__"], "target_label": "__param_target"},
                    {"source_labels": ["__param_target"], "target_label": "instance"},
                    {
                        "target_label": "__address__",
                        "replacement": f"{redis.address}:{REDIS_EXPORTER_PORT}",
                    },
                ],
            }
        )
    jobs.append(
        {
            "job_name": "qdrant",
            **_https(),
            "authorization": {"type": "Bearer", "credentials_file": QDRANT_TOKEN},
            "static_configs": [
                _static([f"{h.address}:{QDRANT_PORT}"], host=h.name) for h in plan.qdrant_hosts
            ],
        }
    )
    probes = [
        _static(
            [health_target(plan, i)],
            __param_module=instance_module(i),
            host=i.host.name,
            openwebui=i.name,
            probe="openwebui",
        )
        for i in plan.instances
    ]
    probes += [
        _static(
            [f"https://{h.address}:{OLLAMA_PORT}/api/version"],
            __param_module="fleet_https",
            host=h.name,
            probe="ollama",
        )
        for h in plan.ollama_hosts
    ]
    probes += [
        _static(
            [f"{h.host.address}:{NODE_EXPORTER_PORT}"],
            __param_module="fleet_tls",
            host=h.name,
            probe="certificate",
        )
        for h in plan.hosts
    ]
    jobs.append(
        {
            "job_name": "blackbox",
            "metrics_path": "/probe",
            "static_configs": probes,
            "relabel_configs": probe_relabel,
        }
    )
    return jobs


def config(plan: Plan) -> dict[str, Any]:
    watch = plan.monitoring
    assert watch is not None
    doc: dict[str, Any] = {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
            "external_labels": {"fleet": plan.fleet.name},
        },
        "rule_files": [RULES],
    }
    if watch.alertmanager:
        doc["alerting"] = {
            "alertmanagers": [
                {"static_configs": [{"targets": [f"{LOOPBACK}:{ALERTMANAGER_PORT}"]}]}
            ]
        }
    doc["scrape_configs"] = scrape_configs(plan)
    return doc


def alertmanager_config(plan: Plan) -> dict[str, Any]:
    watch = plan.monitoring
    assert watch is not None
    settings = watch.settings
    receiver: dict[str, Any] = {"name": "fleet"}
    if settings.webhook is not None:
        receiver["webhook_configs"] = [{"url": settings.webhook, "send_resolved": True}]
    elif settings.email is not None:
        receiver["email_configs"] = [
            {
                "to": settings.email.to,
                "from": settings.email.sender,
                "smarthost": settings.email.smarthost,
                "require_tls": True,
                "send_resolved": True,
            }
        ]
    return {
        "route": {
            "receiver": "fleet",
            "group_by": ["alertname", "host"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
        },
        "receivers": [receiver],
    }


def yaml_file(doc: dict[str, Any]) -> str:
    return "# Generated by owuibuild; do not edit, render again.\n" + yamldump.dump(doc)


def prometheus_unit(plan: Plan, host: HostPlan) -> str:
    watch = plan.monitoring
    assert watch is not None
    argv = [
        f"--config.file={CONFIG}",
        f"--storage.tsdb.path={PROMETHEUS_DATA}",
        f"--storage.tsdb.retention.time={watch.settings.retention}",
        listen(host, PROMETHEUS_PORT),
        f"--web.config.file={WEB_CONFIG}",
        f"--web.external-url={watch.prometheus_url}/",
    ]
    if watch.settings.openwebui_otel:
        argv.append("--enable-feature=otlp-write-receiver")
    return unit(PROMETHEUS, tuple(argv), state=PROMETHEUS_DATA)


def blackbox_unit() -> str:
    return unit(
        BLACKBOX,
        (f"--config.file={BLACKBOX_CONFIG}", f"--web.listen-address={LOOPBACK}:{BLACKBOX_PORT}"),
    )


def alertmanager_unit() -> str:
    return unit(
        ALERTMANAGER,
        (
            f"--config.file={ALERTMANAGER_CONFIG}",
            f"--storage.path={ALERTMANAGER_DATA}",
            f"--web.listen-address={LOOPBACK}:{ALERTMANAGER_PORT}",
            "--cluster.listen-address=",  # one Alertmanager: no gossip port
        ),
        state=ALERTMANAGER_DATA,
    )


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part | None:
    watch = plan.monitoring
    if watch is None or watch.host != host.host:
        return None
    daemons = [PROMETHEUS, BLACKBOX]
    files = [
        File(PROMETHEUS.unit_path, prometheus_unit(plan, host)),
        # Targets and rules follow the instances; Prometheus reloads them.
        File(CONFIG, yaml_file(config(plan)), live=True, reader=PROMETHEUS.unit_name),
        File(RULES, yaml_file(rules_document(plan)), live=True, reader=PROMETHEUS.unit_name),
        File(BLACKBOX.unit_path, blackbox_unit()),
        File(
            BLACKBOX_CONFIG, yaml_file(blackbox_config(plan)), live=True, reader=BLACKBOX.unit_name
        ),
        File(
            QDRANT_TOKEN,
            qdrant_token(plan, secrets),
            "0600",
            owner="prometheus:prometheus",
            defer=True,
        ),
    ]
    dirs: list[str] = [PROMETHEUS_DATA]
    if watch.alertmanager:
        daemons.append(ALERTMANAGER)
        dirs.append(ALERTMANAGER_DATA)
        files += [
            File(ALERTMANAGER.unit_path, alertmanager_unit()),
            File(ALERTMANAGER_CONFIG, yaml_file(alertmanager_config(plan))),
        ]
    units = tuple(d.unit_name for d in daemons)
    state: Command = state_dir_command("prometheus", "0750", *dirs)
    return Part(
        name="prometheus",
        packages=tuple(d.package for d in daemons),
        files=(*(File(d.packaged_unit, "", install=True) for d in daemons), *files),
        configure=(state, start_units(*units, wait=False)),
        awaited=units,
    )
