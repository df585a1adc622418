"""The fleet's alert rules, as Prometheus rule groups: data, from the plan.

Each rule names the condition an operator must hear about before users do. The thresholds are
here, once; the runbook and `owuibuild status` show what fires.
"""

from __future__ import annotations

from typing import Any

from .plan import DATA_MOUNT, Plan

DATA_VOLUME_FULL = 0.85  # of the data volume's size
POSTGRES_CONNECTIONS = 0.8  # of max_connections
REDIS_MEMORY = 0.9  # of maxmemory
CERTIFICATE_DAYS = 14


def rule(name: str, expr: str, wait: str, severity: str, summary: str) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": wait,
        "labels": {"severity": severity},
        "annotations": {"summary": summary},
    }


def rules(plan: Plan) -> list[dict[str, Any]]:
    watch = plan.monitoring
    assert watch is not None
    out = [
        rule(
            "TargetDown",
            # up: the scrape failed; redis_up, pg_up: the exporter answers, its server does not.
            "up == 0 or redis_up == 0 or pg_up == 0",
            "2m",
            "critical",
            "{{ $labels.job }} target {{ $labels.instance }} ({{ $labels.host }}) does not answer",
        ),
        rule(
            "ProbeFailed",
            "probe_success == 0",
            "2m",
            "critical",
            "{{ $labels.probe }} probe of {{ $labels.instance }} fails",
        ),
        rule(
            "DataVolumeFull",
            f'1 - node_filesystem_avail_bytes{{mountpoint="{DATA_MOUNT}"}}'
            f' / node_filesystem_size_bytes{{mountpoint="{DATA_MOUNT}"}} > {DATA_VOLUME_FULL}',
            "5m",
            "critical",
            f"the data volume of {{{{ $labels.host }}}} is over {DATA_VOLUME_FULL:.0%} full",
        ),
        rule(
            "CertificateExpiring",
            f"probe_ssl_earliest_cert_expiry - time() < {CERTIFICATE_DAYS} * 86400",
            "1h",
            "warning",
            f"a certificate served at {{{{ $labels.instance }}}} expires within "
            f"{CERTIFICATE_DAYS} days",
        ),
        rule(
            "PostgresConnections",
            "sum by (instance, host) (pg_stat_activity_count)"
            f" / on (instance, host) pg_settings_max_connections > {POSTGRES_CONNECTIONS}",
            "5m",
            "warning",
            f"PostgreSQL on {{{{ $labels.host }}}} uses over {POSTGRES_CONNECTIONS:.0%} of "
            "max_connections",
        ),
        rule(
            "RedisMemory",
            f"redis_memory_used_bytes / redis_memory_max_bytes > {REDIS_MEMORY}"
            " and redis_memory_max_bytes > 0",
            "5m",
            "warning",
            f"Redis server {{{{ $labels.server }}}} uses over {REDIS_MEMORY:.0%} of maxmemory",
        ),
    ]
    if plan.fleet.shared.backups.enabled:
        age = watch.settings.backup_max_age
        out += [
            rule(
                "BackupFailed",
                "owuibuild_backup_last_run_success == 0",
                "0m",
                "critical",
                "the last backup run on {{ $labels.host }} failed; see journalctl -u owui-backup",
            ),
            rule(
                "BackupTooOld",
                f"time() - owuibuild_backup_last_success_timestamp_seconds > {seconds(age)}",
                "0m",
                "critical",
                f"the newest complete backup on {{{{ $labels.host }}}} is older than {age}",
            ),
            rule(
                "BackupMissing",
                f'absent(owuibuild_backup_last_success_timestamp_seconds{{host="{plan.postgres_host.name}"}})',
                age,
                "critical",
                f"no complete backup on {plan.postgres_host.name} for {age}",
            ),
        ]
    return out


UNIT_SECONDS = {"h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def seconds(duration: str) -> int:
    """A blueprint duration (26h, 15d...) in seconds."""
    return int(duration[:-1]) * UNIT_SECONDS[duration[-1]]


def rules_document(plan: Plan) -> dict[str, Any]:
    return {"groups": [{"name": "owuibuild", "rules": rules(plan)}]}
