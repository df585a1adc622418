"""Monitoring (blueprint monitoring, placement.monitoring): validation, the plan (certificates,
credentials, firewall), what the services are given (pg_hba.conf, init.sql, redis.conf, the
instances' OpenTelemetry settings), the Prometheus targets and Alertmanager, and that none of
it exists without a monitoring section.

The real tools check these files in the validators tier
(tests/validators/test_monitoring_validators.py): promtool, amtool, the blackbox exporter, and
promtool's unit tests of every alert.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Callable
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from conftest import Rendered
from fleetdoc import BASE, diagnose, edit, one, where
from owuibuild import validate
from owuibuild.cli import cli
from owuibuild.diagnostics import Severity, format_path
from owuibuild.hostconfig import exporters, postgres, prometheus, redis
from owuibuild.model import backup_max_age
from owuibuild.plan import FLEET_CA, MONITOR_REDIS_USER, MONITOR_ROLE
from owuibuild.secrets import secrets_path

pytestmark = pytest.mark.unit

MONITORED = BASE + "monitoring: {}\n"
TRIXIE = edit(BASE, "name: fleet\n", "name: fleet\nos: {distro: debian-13}\n")
OTEL = TRIXIE + "monitoring: {openwebui_otel: true}\n"
SHARED, WEB_A, WEB_B = "10.0.5.10/32", "10.0.5.20/32", "10.0.5.21/32"
HOSTS = {"shared": "10.0.5.10", "web-a": "10.0.5.20", "web-b": "10.0.5.21"}


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> None:
    """A release table in which debian-13's Prometheus has the OTLP receiver. None has today
    (Debian builds it without; tests/containers/test_otel_live.py checks the package), so the
    OpenTelemetry path is tested as it will run once one does."""
    table = dict(validate.RELEASES)
    table["debian-13"] = dataclasses.replace(table["debian-13"], otlp_receiver=True)
    monkeypatch.setattr(validate, "RELEASES", table)


# -- validation ----------------------------------------------------------------------------------


def test_a_monitoring_section_is_clean(receiver: None) -> None:
    assert diagnose(MONITORED) == []
    assert diagnose(OTEL) == []


@pytest.mark.parametrize("distro", ["debian-12", "debian-13"])
def test_openwebui_otel_is_refused_where_prometheus_has_no_otlp_receiver(distro: str) -> None:
    text = edit(BASE, "name: fleet\n", f"name: fleet\nos: {{distro: {distro}}}\n")
    text += "monitoring: {openwebui_otel: true}\n"
    d = one(diagnose(text), "monitoring.openwebui_otel")
    assert d.severity is Severity.ERROR
    assert d.message.startswith(f"{distro}'s Prometheus package has no OTLP receiver")
    assert d.hint is not None and d.hint.startswith("set openwebui_otel: false"), d.hint
    assert (d.line, d.column) == where(text, "openwebui_otel: true", "true")


def test_a_release_with_the_receiver_is_named_in_the_hint(receiver: None) -> None:
    text = BASE + "monitoring: {openwebui_otel: true}\n"
    d = one(diagnose(text), "monitoring.openwebui_otel")
    assert d.hint is not None and d.hint.startswith("use os.distro: debian-13, or set"), d.hint


@pytest.mark.parametrize("key", ["OTEL_SERVICE_NAME", "ENABLE_OTEL", "OTEL_EXPORTER_OTLP_ENDPOINT"])
def test_otel_env_with_openwebui_otel_is_an_error_at_the_key(key: str, receiver: None) -> None:
    line = "{name: one, host: web-a, port: 3001}"
    text = edit(OTEL, line, line[:-1] + f", env: {{{key}: x}}}}")
    d = one(diagnose(text), f"instances[0].env.{key}")
    assert d.severity is Severity.ERROR
    assert d.message == f"{key} is set by owuibuild when monitoring.openwebui_otel is on"
    assert d.hint and "openwebui_otel: false" in d.hint
    assert (d.line, d.column) == where(text, f"{key}: x", key)
    # Without openwebui_otel the instance may send its OpenTelemetry elsewhere.
    assert diagnose(edit(text, "openwebui_otel: true", "openwebui_otel: false")) == []


def test_an_instance_named_as_the_exporters_login_is_an_error() -> None:
    text = edit(MONITORED, "name: two,", f"name: {MONITOR_REDIS_USER},")
    d = one(diagnose(text), "instances[1].name")
    assert d.severity is Severity.ERROR
    assert (
        d.message == f"instance name '{MONITOR_REDIS_USER}' is the monitoring exporters' own login"
    )
    assert d.hint == "rename the instance"
    assert (d.line, d.column) == where(text, MONITOR_REDIS_USER)
    # Without monitoring there is no such login.
    assert diagnose(edit(BASE, "name: two,", f"name: {MONITOR_REDIS_USER},")) == []


@pytest.mark.parametrize(
    ("port", "owner"),
    [(9100, "the node exporter"), (9090, "Prometheus"), (9187, "the PostgreSQL exporter")],
)
def test_an_instance_on_a_monitoring_port_is_an_error(port: int, owner: str) -> None:
    text = edit(MONITORED, "host: web-a, port: 3001", f"host: web-a, port: {port}")
    d = one(diagnose(text), "instances[0].port")
    assert d.severity is Severity.ERROR
    assert d.message == f"port {port} is taken by {owner} (monitoring)"
    assert d.hint == "pick another port"
    assert (d.line, d.column) == where(text, f"port: {port}", str(port))


def test_an_unknown_monitoring_host_has_a_did_you_mean_hint() -> None:
    text = MONITORED + "placement: {monitoring: web-bb}\n"
    d = one(diagnose(text), "placement.monitoring")
    assert d.severity is Severity.ERROR
    assert d.message == "Prometheus is placed on unknown host 'web-bb'"
    assert d.hint == "did you mean 'web-b'?"
    assert (d.line, d.column) == where(text, "web-bb")


def test_placement_monitoring_without_monitoring_is_a_warning() -> None:
    text = BASE + "placement: {monitoring: web-a}\n"
    d = one(diagnose(text), "placement.monitoring")
    assert d.severity is Severity.WARNING
    assert d.message == "has no effect without a monitoring section"
    assert d.hint and "monitoring: {}" in d.hint
    assert (d.line, d.column) == where(text, "monitoring: web-a", "monitoring")


@pytest.mark.parametrize(("placed", "path"), [(None, "shared.host"), ("web-b", "hosts[1]")])
def test_a_monitoring_host_without_a_data_volume_warns(placed: str | None, path: str) -> None:
    name = placed or "shared"
    volume = (
        f"name: {name}, address: {HOSTS[name]}, memory_gb: 64, data_volume: {{label: owui-data}}"
    )
    text = edit(MONITORED, volume, f"name: {name}, address: {HOSTS[name]}, memory_gb: 64")
    if placed:
        text += f"placement: {{monitoring: {placed}}}\n"
    found = [d for d in diagnose(text) if "runs Prometheus" in d.message]
    assert len(found) == 1, [d.as_dict() for d in diagnose(text)]
    (d,) = found
    assert d.severity is Severity.WARNING and format_path(d.path) == path
    assert d.message.startswith(f"host '{name}' runs Prometheus but has no data volume")
    assert d.hint == "add a data_volume to the host"


def test_two_receivers_is_a_schema_error() -> None:
    email = "{to: ops@fleet.org, from: alerts@fleet.org, smarthost: 'smtp.fleet.org:587'}"
    text = (
        BASE + f"monitoring: {{alerts: {{webhook: 'https://hooks.fleet.org/a', email: {email}}}}}\n"
    )
    d = one(diagnose(text), "monitoring.alerts")
    assert d.severity is Severity.ERROR and "too many properties" in d.message
    assert (d.line, d.column) == where(text, "{webhook:")


def test_a_retention_without_a_unit_is_a_schema_error() -> None:
    text = BASE + "monitoring: {retention: 15x}\n"
    d = one(diagnose(text), "monitoring.retention")
    assert d.severity is Severity.ERROR
    assert d.message == '"15x" is not a duration owuibuild accepts'
    assert d.hint and "26h or 15d" in d.hint
    assert (d.line, d.column) == where(text, "15x")


# -- the plan ------------------------------------------------------------------------------------


def user_files(r: Rendered, host: str) -> dict[str, str]:
    return {f["path"]: f["content"] for f in r.user_data(host)["write_files"]}


def firewall(r: Rendered, host: str) -> dict[str, tuple[str, ...]]:
    plan: Any = r.plan
    (h,) = [h for h in plan.hosts if h.name == host]
    return {rule.service: tuple(str(n) for n in rule.sources) for rule in h.firewall}


def env(r: Rendered, name: str) -> dict[str, str]:
    lines = r.text(f"instances/{name}/{name}.env").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


@pytest.fixture
def watched(render_text: Callable[[str], Rendered]) -> Rendered:
    return render_text(MONITORED)


@pytest.fixture
def bare(render_text: Callable[[str], Rendered]) -> Rendered:
    return render_text(BASE)


def test_every_host_gets_a_certificate_for_its_exporters(watched: Rendered, bare: Rendered) -> None:
    plan: Any = watched.plan
    assert plan.certificate_hosts == HOSTS
    assert set(bare.plan.certificate_hosts) == {"shared"}  # type: ignore[attr-defined]
    for host in HOSTS:
        files = user_files(watched, host)
        assert exporters.WEB_CONFIG in files
        assert "/etc/owuibuild/tls/server.crt" in files


def test_the_exporters_logins_are_secrets_kept_out_of_the_output(tmp_path: Path) -> None:
    blueprint = tmp_path / "bp.yml"
    blueprint.write_text(MONITORED)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["render", str(blueprint), "-o", str(out)])
    assert result.exit_code == 0, result.output
    stored = yaml.safe_load(secrets_path(blueprint).read_text())
    values = [stored["monitoring"]["postgres_password"], stored["monitoring"]["redis_password"]]
    assert all(len(v) >= 32 for v in values)
    for value in values:
        assert value not in result.output
        assert value not in (out / "manifest.json").read_text()
        assert value not in (out / "README.md").read_text()
    # Only files the manifest marks secret carry them (the exporters' environment files).
    manifest = (out / "manifest.json").read_text()
    for path in out.rglob("*"):
        if path.is_file() and not path.name.endswith(".iso"):
            text = path.read_bytes().decode(errors="replace")
            if any(v in text for v in values):
                assert path.stat().st_mode & 0o077 == 0, path
                assert str(path.relative_to(out)) in manifest


def test_the_monitor_role_logs_in_with_scram(watched: Rendered, tmp_path: Path) -> None:
    plan: Any = watched.plan
    logins = {role: ref.name for ref, role in plan.scram_logins}
    assert logins[MONITOR_ROLE] == "monitoring.postgres_password"
    sql = user_files(watched, "shared")[postgres.INIT_SQL]
    (line,) = [x for x in sql.splitlines() if x.startswith(f'ALTER ROLE "{MONITOR_ROLE}" ')]
    assert "PASSWORD 'SCRAM-SHA-256$4096:" in line and "NOSUPERUSER" in line
    password = watched.secrets[plan.monitoring.postgres_password.name]  # type: ignore[index]
    assert password not in sql


def with_urls(text: str) -> str:
    for name, host in (("one", "web-a"), ("two", "web-b")):
        line = f"{{name: {name}, host: {host}, port: 3001}}"
        text = edit(text, line, line[:-1] + f", url: https://{name}.fleet.test}}")
    return text


# -- the firewall --------------------------------------------------------------------------------


def test_every_host_admits_the_monitoring_host_to_its_exporters(watched: Rendered) -> None:
    for host in HOSTS:
        rules = firewall(watched, host)
        assert rules["monitoring-node"] == (SHARED,)
        assert ("monitoring-postgres" in rules) is (host == "shared")
        assert ("monitoring-redis" in rules) is (host == "shared")
        # Prometheus itself: on the monitoring host, for the admins.
        assert rules.get("prometheus") == (("10.0.5.0/24",) if host == "shared" else None)
    shared = firewall(watched, "shared")
    assert shared["monitoring-postgres"] == shared["monitoring-redis"] == (SHARED,)


def test_with_otel_the_instances_reach_prometheus(
    render_text: Callable[[str], Rendered], receiver: None
) -> None:
    r = render_text(OTEL + "placement: {monitoring: web-a}\n")
    plan: Any = r.plan
    (web_a,) = [h.host for h in plan.hosts if h.name == "web-a"]
    # The admins, and each instance from where it reaches web-a: its own Docker network for
    # the instance on web-a, web-b's address for the other.
    pushers = {str(i.source_network(web_a)) for i in plan.instances}
    assert WEB_B in pushers and len(pushers) == 2
    assert set(firewall(r, "web-a")["prometheus"]) == {"10.0.5.0/24", *pushers}
    assert "prometheus" not in firewall(r, "shared")
    unwatched = render_text(TRIXIE + "monitoring: {}\nplacement: {monitoring: web-a}\n")
    assert firewall(unwatched, "web-a")["prometheus"] == ("10.0.5.0/24",)


def test_the_services_and_instances_admit_the_monitoring_host(
    render_text: Callable[[str], Rendered],
) -> None:
    """Compared with the same fleet unwatched: each probed service admits exactly the
    monitoring host more (web-b here, so that it is a host of its own)."""
    text = edit(BASE, "allow_from: [10.0.5.0/24]", "allow_from: [10.0.9.0/24]")
    bare = render_text(text)
    watched = render_text(text + "monitoring: {}\nplacement: {monitoring: web-b}\n")
    for host, service in [("shared", "qdrant"), ("shared", "ollama"), ("web-a", "openwebui-one")]:
        before, after = firewall(bare, host)[service], firewall(watched, host)[service]
        assert set(after) == {*before, WEB_B}, (host, service)
    urls = with_urls(text)
    door = urls + "front_door: {tls: internal, allow_from: [192.168.7.0/24]}\n"
    bare, watched = render_text(door), render_text(door + "monitoring: {}\n")
    for service in ("front-door-http", "front-door-https"):
        assert firewall(bare, "web-a")[service] == ("192.168.7.0/24",)
        assert set(firewall(watched, "web-a")[service]) == {"192.168.7.0/24", SHARED}


# -- what the services are given -----------------------------------------------------------------


def test_pg_hba_admits_the_monitor_role_to_postgres_from_its_own_host(
    watched: Rendered, bare: Rendered
) -> None:
    hba = user_files(watched, "shared")[f"{postgres.SOURCE_DIR}/pg_hba.conf"]
    rows = [shlex.split(line) for line in hba.splitlines() if MONITOR_ROLE in line]
    assert rows == [["hostssl", "postgres", MONITOR_ROLE, SHARED, "scram-sha-256"]]
    assert MONITOR_ROLE not in user_files(bare, "shared")[f"{postgres.SOURCE_DIR}/pg_hba.conf"]


def test_init_sql_gives_the_monitor_role_pg_monitor_and_connect_on_postgres_only(
    watched: Rendered, bare: Rendered
) -> None:
    sql = user_files(watched, "shared")[postgres.INIT_SQL]
    grants = [
        line for line in sql.splitlines() if line.startswith("GRANT") and MONITOR_ROLE in line
    ]
    assert grants == [
        f'GRANT pg_monitor TO "{MONITOR_ROLE}";',
        f'GRANT CONNECT ON DATABASE postgres TO "{MONITOR_ROLE}";',
    ]  # the maintenance database only: no instance database
    assert [line for line in sql.splitlines() if MONITOR_ROLE in line and "DATABASE" in line] == [
        f'GRANT CONNECT ON DATABASE postgres TO "{MONITOR_ROLE}";',
    ]
    (alter,) = [
        line for line in sql.splitlines() if line.startswith(f'ALTER ROLE "{MONITOR_ROLE}"')
    ]
    for word in (
        "LOGIN",
        "NOSUPERUSER",
        "NOCREATEDB",
        "NOCREATEROLE",
        "NOREPLICATION",
        "NOBYPASSRLS",
    ):
        assert f" {word} " in alter
    assert MONITOR_ROLE not in user_files(bare, "shared")[postgres.INIT_SQL]


def test_every_redis_server_has_the_monitor_user_with_read_only_commands(
    watched: Rendered, bare: Rendered
) -> None:
    plan: Any = watched.plan
    password = watched.secrets[plan.monitoring.redis_password.name]  # type: ignore[index]
    files = user_files(watched, "shared")
    assert plan.redis_servers
    for server in plan.redis_servers:
        conf = files[redis.conf_path(server)]
        (line,) = [x for x in conf.splitlines() if MONITOR_REDIS_USER in x]
        words = shlex.split(line)
        assert words[:7] == [
            "user", MONITOR_REDIS_USER, "on", redis.acl_password(password),
            "resetkeys", "resetchannels", "-@all",
        ]  # fmt: skip
        assert tuple(words[7:]) == redis.MONITOR_COMMANDS
        assert password not in conf
        assert MONITOR_REDIS_USER not in user_files(bare, "shared")[redis.conf_path(server)]


def test_with_otel_each_instance_pushes_its_metrics_to_prometheus(
    render_text: Callable[[str], Rendered], receiver: None
) -> None:
    r = render_text(OTEL)
    for name in ("one", "two"):
        e = env(r, name)
        assert e["ENABLE_OTEL"] == "true" and e["ENABLE_OTEL_METRICS"] == "true"
        assert e["ENABLE_OTEL_TRACES"] == e["ENABLE_OTEL_LOGS"] == "false"
        assert e["OTEL_METRICS_EXPORTER_OTLP_ENDPOINT"] == (
            "https://10.0.5.10:9090/api/v1/otlp/v1/metrics"
        )
        assert e["OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE"] == FLEET_CA
        assert e["OTEL_RESOURCE_ATTRIBUTES"] == f"service.instance.id={name},owuibuild.fleet=fleet"
    unit = user_files(r, "shared")[prometheus.PROMETHEUS.unit_path]
    assert "--enable-feature=otlp-write-receiver" in unit
    plain = render_text(TRIXIE + "monitoring: {}\n")
    assert not [k for k in env(plain, "one") if "OTEL" in k]
    assert "otlp" not in user_files(plain, "shared")[prometheus.PROMETHEUS.unit_path]


@pytest.mark.parametrize(
    ("on_calendar", "age"),
    [
        ("daily", "26h"),
        ("hourly", "2h"),
        ("weekly", "8d"),
        ("monthly", "32d"),
        (" Hourly ", "2h"),
        ("*-*-* 03:30:00", "26h"),
        ("Mon..Fri 02:00", "26h"),
    ],
)
def test_backup_max_age_follows_the_schedule(on_calendar: str, age: str) -> None:
    assert backup_max_age(on_calendar) == age


def test_an_explicit_backup_max_age_wins(render_text: Callable[[str], Rendered]) -> None:
    text = edit(
        BASE,
        "  postgres: {max_connections: 200}\n",
        "  postgres: {max_connections: 200}\n  backups: {on_calendar: hourly}\n",
    )
    derived = render_text(text + "monitoring: {}\n")
    explicit = render_text(text + "monitoring: {backup_max_age: 3d}\n")
    assert derived.plan.monitoring.settings.backup_max_age == "2h"  # type: ignore[attr-defined]
    assert explicit.plan.monitoring.settings.backup_max_age == "3d"  # type: ignore[attr-defined]
    rules = yaml.safe_load(user_files(explicit, "shared")[prometheus.RULES])
    by_name = {r["alert"]: r for r in rules["groups"][0]["rules"]}
    assert by_name["BackupTooOld"]["expr"].endswith(f"> {3 * 86400}")
    assert by_name["BackupMissing"]["for"] == "3d"


# -- Prometheus's targets and Alertmanager -------------------------------------------------------


def jobs(r: Rendered, host: str = "shared") -> dict[str, dict[str, Any]]:
    config = yaml.safe_load(user_files(r, host)[prometheus.CONFIG])
    return {job["job_name"]: job for job in config["scrape_configs"]}


def targets(job: dict[str, Any], **labels: str) -> dict[str, dict[str, str]]:
    found = {}
    for group in job["static_configs"]:
        if all(group.get("labels", {}).get(k) == v for k, v in labels.items()):
            (target,) = group["targets"]
            found[target] = group.get("labels", {})
    return found


def test_prometheus_scrapes_every_host_server_and_service(watched: Rendered) -> None:
    plan: Any = watched.plan
    by_name = jobs(watched)
    assert set(by_name) == {"prometheus", "node", "postgres", "redis", "qdrant", "blackbox"}
    node = targets(by_name["node"])
    assert {t: labels["host"] for t, labels in node.items()} == {
        f"{a}:9100": h for h, a in HOSTS.items()
    }
    assert list(targets(by_name["postgres"])) == ["10.0.5.10:9187"]
    redis_targets = targets(by_name["redis"])
    assert {t: labels["server"] for t, labels in redis_targets.items()} == {
        f"rediss://10.0.5.10:{s.port}": s.name for s in plan.redis_servers
    }
    assert by_name["redis"]["relabel_configs"][-1]["replacement"] == "10.0.5.10:9121"
    assert list(targets(by_name["qdrant"])) == [f"{h.address}:6333" for h in plan.qdrant_hosts]
    assert by_name["qdrant"]["authorization"]["credentials_file"] == prometheus.QDRANT_TOKEN
    health = targets(by_name["blackbox"], probe="openwebui")
    assert {t: labels["openwebui"] for t, labels in health.items()} == {
        "http://10.0.5.20:3001/health": "one",
        "http://10.0.5.21:3001/health": "two",
    }
    certificates = targets(by_name["blackbox"], probe="certificate")
    assert set(certificates) == {f"{a}:9100" for a in HOSTS.values()}
    for job in by_name.values():
        if job["job_name"] != "blackbox":
            assert job["scheme"] == "https" and job["tls_config"] == {"ca_file": FLEET_CA}


def test_behind_a_front_door_the_probes_ask_each_instance_by_its_name(
    render_text: Callable[[str], Rendered],
) -> None:
    r = render_text(with_urls(MONITORED) + "front_door: {tls: internal}\n")
    health = targets(jobs(r)["blackbox"], probe="openwebui")
    assert {t: labels["__param_module"] for t, labels in health.items()} == {
        "https://10.0.5.20:443/health": "instance-one",
        "https://10.0.5.21:443/health": "instance-two",
    }
    modules = yaml.safe_load(user_files(r, "shared")[prometheus.BLACKBOX_CONFIG])["modules"]
    http = modules["instance-one"]["http"]
    assert http["headers"] == {"Host": "one.fleet.test"}
    assert http["tls_config"] == {"server_name": "one.fleet.test", "ca_file": FLEET_CA}
    assert http["fail_if_not_ssl"] is True


RECEIVERS = {
    "none": ("{}", None),
    "webhook": ("{alerts: {webhook: 'https://hooks.fleet.org/a'}}", "webhook_configs"),
    "email": (
        "{alerts: {email: {to: ops@fleet.org, from: alerts@fleet.org, smarthost: 'smtp.fleet.org:587'}}}",
        "email_configs",
    ),
}


@pytest.mark.parametrize("receiver", sorted(RECEIVERS))
def test_alertmanager_runs_only_with_a_receiver(
    render_text: Callable[[str], Rendered], receiver: str
) -> None:
    section, kind = RECEIVERS[receiver]
    r = render_text(BASE + f"monitoring: {section}\n")
    files = user_files(r, "shared")
    config = yaml.safe_load(files[prometheus.CONFIG])
    assert (prometheus.ALERTMANAGER_CONFIG in files) is (kind is not None)
    assert (prometheus.ALERTMANAGER.unit_path in files) is (kind is not None)
    assert ("alerting" in config) is (kind is not None)
    if kind is None:
        return
    manager = yaml.safe_load(files[prometheus.ALERTMANAGER_CONFIG])
    (fleet,) = manager["receivers"]
    assert manager["route"]["receiver"] == fleet["name"]
    (only,) = fleet[kind]
    assert set(fleet) == {"name", kind} and only["send_resolved"] is True
    if kind == "email_configs":
        assert (only["to"], only["from"], only["smarthost"]) == (
            "ops@fleet.org", "alerts@fleet.org", "smtp.fleet.org:587",
        )  # fmt: skip
        assert only["require_tls"] is True
    targets_ = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert targets_ == ["127.0.0.1:9093"]


def test_prometheus_runs_where_it_is_placed(render_text: Callable[[str], Rendered]) -> None:
    r = render_text(MONITORED + "placement: {monitoring: web-a}\n")
    for host in HOSTS:
        assert (prometheus.CONFIG in user_files(r, host)) is (host == "web-a")
    assert targets(jobs(r, "web-a")["prometheus"]) == {"10.0.5.20:9090": {"host": "web-a"}}


# -- without monitoring --------------------------------------------------------------------------


def test_without_monitoring_none_of_it_exists(bare: Rendered) -> None:
    plan: Any = bare.plan
    assert plan.monitoring is None
    assert not any(ref.name.startswith("monitoring.") for ref in plan.secrets)
    assert MONITOR_ROLE not in {role for _, role in plan.scram_logins}
    stored = yaml.safe_load(secrets_path(bare.blueprint).read_text())
    assert "monitoring" not in stored
    for host in HOSTS:
        files = user_files(bare, host)
        assert not [p for p in files if "monitoring" in p or "prometheus" in p], host
        services = set(firewall(bare, host))
        assert not {s for s in services if s.startswith(("monitoring", "prometheus"))}
        if host != "shared":
            assert set(
                firewall(bare, host)["openwebui-" + ("one" if host == "web-a" else "two")]
            ) == {"10.0.5.0/24"}
    assert not [k for k in env(bare, "one") if "OTEL" in k]
    assert (
        "owuibuild_backup" not in user_files(bare, "shared")["/usr/local/lib/owuibuild/backup.sh"]
    )
    assert IPv4Network(SHARED) not in {
        n
        for h in plan.hosts
        for rule in h.firewall
        for n in rule.sources
        if rule.service == "ollama"
    }
