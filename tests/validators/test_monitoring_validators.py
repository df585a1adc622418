"""Validators for monitoring: the distribution's own tools on what the monitoring host and the
exporters are given, for every example blueprint with a monitoring section and for variants
(Debian 12, an e-mail receiver, Prometheus on another host, an ACME front door, backups off).

- `promtool check config` on prometheus.yml, with the files it names (the fleet CA, Qdrant's
  token, the rules) written to a temp dir: exactly those path values are replaced, each must be
  found, and nothing else may differ (as test_caddy.py does). promtool loads the rules too.
- `promtool check rules` on rules.yml, `amtool check-config` on alertmanager.yml (written only
  with a receiver), `prometheus-blackbox-exporter --config.check` on blackbox.yml, and
  `promtool check web-config` on every host's web.yml with the host's real certificate and key.
- `promtool test rules` against the generated rules.yml: each alert fires when it should, after
  its `for`, and stays quiet just under its threshold or before its `for` has passed. The input
  series carry the names and labels the real exporters and the backup script produce.
- The backup script's `report` function, cut from the generated script and run with `sh`, writes
  exposition text that `promtool check metrics` accepts, and carries the last success over a
  failed run.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import BLUEPRINTS, EXAMPLES, Rendered, compile_path, require_tool
from owuibuild.hostconfig import backup, exporters, prometheus
from owuibuild.plan import DATA_MOUNT, FLEET_CA, SERVER_CERT, SERVER_KEY
from test_caddy import remap

pytestmark = pytest.mark.validators

MONITORED = [
    name
    for name in EXAMPLES
    if "monitoring" in (yaml.safe_load((BLUEPRINTS / name).read_text()) or {})
]


def _debian_12(d: dict[str, Any]) -> None:
    d["os"]["distro"] = "debian-12"
    d["monitoring"]["openwebui_otel"] = False  # Debian 12's Prometheus has no OTLP receiver


def _email(d: dict[str, Any]) -> None:
    email = {
        "to": "ops@example.org",
        "from": "alerts@example.org",
        "smarthost": "smtp.example.org:587",
    }
    d["monitoring"]["alerts"] = {"email": email}


def _elsewhere(d: dict[str, Any]) -> None:
    d.setdefault("placement", {})["monitoring"] = "web-b"


def _acme(d: dict[str, Any]) -> None:
    d["front_door"] = {"tls": "acme", "acme": {"email": "ops@example.org"}, "allow_from": "public"}


def _no_backups(d: dict[str, Any]) -> None:
    d["shared"].setdefault("backups", {})["enabled"] = False


VARIANTS: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "homelab-debian-12": ("homelab.yml", _debian_12),
    "multi-host-debian-12": ("multi-host.yml", _debian_12),
    "homelab-email": ("homelab.yml", _email),
    "multi-host-on-web-b": ("multi-host.yml", _elsewhere),
    "multi-host-acme": ("multi-host.yml", _acme),
    "homelab-no-backups": ("homelab.yml", _no_backups),
}
CASES = [*MONITORED, *VARIANTS]


def render(tmp_path: Path, case: str) -> Rendered:
    name, change = VARIANTS.get(case, (case, lambda d: None))
    data = yaml.safe_load((BLUEPRINTS / name).read_text())
    change(data)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return compile_path(path)


def write_files(rendered: Rendered, host: str) -> dict[str, str]:
    """A host's user-data write_files: path -> content (plain text, never encoded)."""
    entries = rendered.user_data(host)["write_files"]
    assert all("encoding" not in f for f in entries), host
    return {f["path"]: f["content"] for f in entries}


def monitoring_host(rendered: Rendered) -> str:
    plan: Any = rendered.plan
    assert plan.monitoring is not None
    return plan.monitoring.host.name  # type: ignore[no-any-return]


def staged(doc: Any, mapping: dict[str, str]) -> Any:
    """``doc`` with exactly ``mapping``'s path values replaced; each must occur."""
    used: list[str] = []
    out = remap(doc, mapping, used)
    assert set(used) == set(mapping), f"paths not in the configuration: {set(mapping) - set(used)}"
    assert remap(out, {new: old for old, new in mapping.items()}, []) == doc
    return out


def copy_to(directory: Path, name: str, content: str) -> str:
    path = directory / name
    path.write_text(content)
    path.chmod(0o600)
    return str(path)


def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=300)


def said(result: subprocess.CompletedProcess[str]) -> str:
    return f"rc={result.returncode}\n{result.stdout}\n{result.stderr}"


# -- the configurations ------------------------------------------------------------------------


def check_prometheus(files: dict[str, str], directory: Path) -> dict[str, Any]:
    rules = yaml.safe_load(files[prometheus.RULES])
    count = len(rules["groups"][0]["rules"])
    mapping = {
        FLEET_CA: copy_to(directory, "fleet-ca.crt", files[FLEET_CA]),
        prometheus.QDRANT_TOKEN: copy_to(directory, "qdrant-token", files[prometheus.QDRANT_TOKEN]),
        prometheus.RULES: copy_to(directory, "rules.yml", files[prometheus.RULES]),
    }
    generated = yaml.safe_load(files[prometheus.CONFIG])
    config = directory / "prometheus.yml"
    config.write_text(yaml.safe_dump(staged(generated, mapping)))
    result = run("promtool", "check", "config", str(config))
    assert result.returncode == 0, said(result)
    assert f"SUCCESS: {count} rules found" in result.stdout, said(result)
    assert "is valid prometheus config file" in result.stdout, said(result)
    result = run("promtool", "check", "rules", mapping[prometheus.RULES])
    assert result.returncode == 0, said(result)
    assert f"SUCCESS: {count} rules found" in result.stdout, said(result)
    return generated  # type: ignore[no-any-return]


def check_blackbox(files: dict[str, str], directory: Path, scrape: dict[str, Any]) -> None:
    generated = yaml.safe_load(files[prometheus.BLACKBOX_CONFIG])
    mapping = {FLEET_CA: str(directory / "fleet-ca.crt")}
    config = directory / "blackbox.yml"
    config.write_text(yaml.safe_dump(staged(generated, mapping)))
    result = run("prometheus-blackbox-exporter", "--config.check", f"--config.file={config}")
    assert result.returncode == 0, said(result)
    assert "Config file is ok" in result.stderr, said(result)
    # --config.check takes any prober name and IP protocol: those are checked here.
    modules = generated["modules"]
    for name, module in modules.items():
        assert module["prober"] in {"http", "tcp"}, name
        assert module[module["prober"]]["preferred_ip_protocol"] == "ip4", name
    (job,) = [j for j in scrape["scrape_configs"] if j["job_name"] == "blackbox"]
    named = {s["labels"]["__param_module"] for s in job["static_configs"]}
    assert named == set(modules), "every module probed, no probe without its module"


def check_alertmanager(files: dict[str, str], directory: Path, wanted: bool) -> None:
    assert (prometheus.ALERTMANAGER_CONFIG in files) is wanted
    if not wanted:
        return
    config = Path(copy_to(directory, "alertmanager.yml", files[prometheus.ALERTMANAGER_CONFIG]))
    result = run("amtool", "check-config", str(config))
    assert result.returncode == 0, said(result)
    assert "SUCCESS" in result.stdout and "1 receivers" in result.stdout, said(result)


def check_web_config(files: dict[str, str], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    generated = yaml.safe_load(files[exporters.WEB_CONFIG])
    mapping = {
        SERVER_CERT: copy_to(directory, "server.crt", files[SERVER_CERT]),
        exporters.KEY: copy_to(directory, "server.key", files[SERVER_KEY]),  # the boot's copy
    }
    config = directory / "web.yml"
    config.write_text(yaml.safe_dump(staged(generated, mapping)))
    result = run("promtool", "check", "web-config", str(config))
    assert result.returncode == 0, said(result)
    assert "SUCCESS" in result.stdout + result.stderr, said(result)


@pytest.mark.parametrize("case", CASES)
def test_the_monitoring_configuration_passes_the_tools(tmp_path: Path, case: str) -> None:
    require_tool("promtool", "amtool", "prometheus-blackbox-exporter")
    rendered = render(tmp_path / "render", case)
    plan: Any = rendered.plan
    host = monitoring_host(rendered)
    if case == "multi-host-on-web-b":
        assert host == "web-b"
    files = write_files(rendered, host)
    directory = tmp_path / "prometheus"
    directory.mkdir()
    scrape = check_prometheus(files, directory)
    assert ("alerting" in scrape) is plan.monitoring.alertmanager
    check_blackbox(files, directory, scrape)
    check_alertmanager(files, directory, plan.monitoring.alertmanager)
    names = {r["alert"] for r in yaml.safe_load(files[prometheus.RULES])["groups"][0]["rules"]}
    backups = {"BackupFailed", "BackupTooOld", "BackupMissing"}
    assert (backups <= names) is plan.fleet.shared.backups.enabled
    assert (backups & names == set()) is not plan.fleet.shared.backups.enabled
    for other in plan.hosts:
        theirs = write_files(rendered, other.name)
        # Prometheus's files on the monitoring host alone; web.yml (exporters) on every host.
        assert (prometheus.CONFIG in theirs) is (other.name == host), other.name
        check_web_config(theirs, tmp_path / "web" / other.name)


def test_the_tools_reject_what_is_broken(tmp_path: Path) -> None:
    """The checks above can fail: each tool refuses a broken copy of a generated file."""
    require_tool("promtool", "amtool", "prometheus-blackbox-exporter")
    rendered = render(tmp_path / "render", "multi-host.yml")
    files = write_files(rendered, monitoring_host(rendered))
    rules = yaml.safe_load(files[prometheus.RULES])
    rules["groups"][0]["rules"][0]["expr"] = "up == "
    broken = Path(copy_to(tmp_path, "rules.yml", yaml.safe_dump(rules)))
    assert run("promtool", "check", "rules", str(broken)).returncode != 0
    # The configuration with its paths as generated: the files are really looked for.
    raw = Path(copy_to(tmp_path, "raw.yml", files[prometheus.CONFIG]))
    assert run("promtool", "check", "config", str(raw)).returncode != 0
    manager = yaml.safe_load(files[prometheus.ALERTMANAGER_CONFIG])
    manager["route"]["receiver"] = "nobody"
    bad = Path(copy_to(tmp_path, "am.yml", yaml.safe_dump(manager)))
    assert run("amtool", "check-config", str(bad)).returncode != 0
    box = files[prometheus.BLACKBOX_CONFIG].replace("timeout: 10s", "timeout: 10x")
    bad = Path(copy_to(tmp_path, "bb.yml", box))
    result = run("prometheus-blackbox-exporter", "--config.check", f"--config.file={bad}")
    assert result.returncode != 0, said(result)
    web = tmp_path / "web"
    web.mkdir()
    config = yaml.safe_load(files[exporters.WEB_CONFIG])
    config["tls_server_config"]["cert_file"] = copy_to(web, "server.crt", files[SERVER_CERT])
    # A good key, but web-a's, not the certificate's.
    other = write_files(rendered, "web-a")[SERVER_KEY]
    config["tls_server_config"]["key_file"] = copy_to(web, "other.key", other)
    (web / "web.yml").write_text(yaml.safe_dump(config))
    assert run("promtool", "check", "web-config", str(web / "web.yml")).returncode != 0


# -- the alert rules, by promtool test rules ---------------------------------------------------

STEP = 60  # seconds between samples and between evaluations
# The backup alerts look a day or more ahead: five minutes apart is enough, and quicker.
BACKUP_STEP = 300
HOST = "homelab"  # homelab.yml's one host, which runs PostgreSQL, Redis and the backups
ADDRESS = "192.168.1.50"
NODE = {"job": "node", "instance": f"{ADDRESS}:9100", "host": HOST}
POSTGRES = {"job": "postgres", "instance": f"{ADDRESS}:9187", "host": HOST}
REDIS = {"job": "redis", "instance": f"rediss://{ADDRESS}:6379", "host": HOST, "server": "family"}
PROBE = {
    "job": "blackbox",
    "instance": f"https://{ADDRESS}:443/health",
    "host": HOST,
    "openwebui": "family",
    "probe": "openwebui",
}
CERT_PROBE = {**NODE, "job": "blackbox", "probe": "certificate"}
DURATION = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def duration(text: str) -> int:
    """A Prometheus duration of one unit (what the rules and blueprints use) in seconds."""
    match = re.fullmatch(r"([0-9]+)([smhdwy])", text)
    assert match, text
    return int(match[1]) * DURATION[match[2]]


def series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"


Series = list[tuple[str, dict[str, str], float]]  # name, labels, a constant value


class Rules:
    """The generated rules of a render, and promtool test cases against them."""

    def __init__(self, rendered: Rendered, directory: Path, step: int = STEP) -> None:
        self.step = step
        self.text = write_files(rendered, monitoring_host(rendered))[prometheus.RULES]
        self.by_name = {r["alert"]: r for r in yaml.safe_load(self.text)["groups"][0]["rules"]}
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.file = Path(copy_to(directory, "rules.yml", self.text))

    def wait(self, alert: str) -> int:
        return duration(self.by_name[alert]["for"])

    def expected(self, alert: str, labels: dict[str, str]) -> dict[str, Any]:
        """The firing alert promtool should report: its labels and its summary, rendered here
        from the rule's template (every label it names must be on the alert)."""
        rule = self.by_name[alert]

        def label(match: re.Match[str]) -> str:
            assert match[1] in labels, f"{alert}'s summary names {match[1]}, not on {labels}"
            return labels[match[1]]

        summary = re.sub(r"\{\{ \$labels\.(\w+) \}\}", label, rule["annotations"]["summary"])
        assert "{{" not in summary, summary
        return {"exp_labels": {**labels, **rule["labels"]}, "exp_annotations": {"summary": summary}}

    def case(
        self,
        alert: str,
        inputs: Series,
        checks: list[tuple[int, list[dict[str, str]]]],
    ) -> dict[str, Any]:
        """One promtool test: constant ``inputs`` from time 0, and at each (time, alerts) of
        ``checks`` exactly those firing alerts (labels of each) of ``alert``."""
        last = max(t for t, _ in checks)
        return {
            "interval": f"{self.step}s",
            "input_series": [
                {"series": series(name, labels), "values": f"{value:g}x{last // self.step + 2}"}
                for name, labels, value in inputs
            ],
            "alert_rule_test": [
                {
                    "eval_time": f"{at}s",
                    "alertname": alert,
                    "exp_alerts": [self.expected(alert, labels) for labels in alerts],
                }
                for at, alerts in checks
            ],
        }

    def promtool_test(
        self, label: str, cases: list[dict[str, Any]]
    ) -> subprocess.CompletedProcess[str]:
        doc = {
            "rule_files": [str(self.file)],
            "evaluation_interval": f"{self.step}s",
            "tests": cases,
        }
        path = self.directory / f"{label}.test.yml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return run("promtool", "test", "rules", str(path))

    def passes(self, label: str, cases: list[dict[str, Any]]) -> None:
        result = self.promtool_test(label, cases)
        assert result.returncode == 0, said(result)
        assert "SUCCESS" in result.stdout, said(result)


def fires_after_its_for(
    rules: Rules, alert: str, firing: Series, labels: dict[str, str]
) -> dict[str, Any]:
    """Quiet one step before the rule's `for` has passed, firing when it has."""
    wait = rules.wait(alert)
    checks = [(wait, [labels])]
    if wait:
        checks.insert(0, (wait - rules.step, []))
    return rules.case(alert, firing, checks)


def quiet(rules: Rules, alert: str, inputs: Series) -> dict[str, Any]:
    """Never firing: checked when the rule's `for` has long passed."""
    return rules.case(alert, inputs, [(rules.wait(alert) + 10 * rules.step, [])])


def volume(avail: float, size: float, mountpoint: str = DATA_MOUNT) -> Series:
    labels = {**NODE, "mountpoint": mountpoint, "device": "/dev/sdb", "fstype": "ext4"}
    return [
        ("node_filesystem_avail_bytes", labels, avail),
        ("node_filesystem_size_bytes", labels, size),
    ]


def connections(busy: int, idle: int, limit: int) -> Series:
    return [
        ("pg_stat_activity_count", {**POSTGRES, "datname": "family", "state": "active"}, busy),
        ("pg_stat_activity_count", {**POSTGRES, "datname": "family", "state": "idle"}, idle),
        ("pg_stat_activity_count", {**POSTGRES, "datname": "lab", "state": "active"}, 0),
        ("pg_settings_max_connections", POSTGRES, limit),
    ]


def memory(used: float, limit: float) -> Series:
    return [("redis_memory_used_bytes", REDIS, used), ("redis_memory_max_bytes", REDIS, limit)]


DAY = 86400
CERTIFICATE_DAYS = 14


def certificate(remaining: int) -> Series:
    """A certificate with ``remaining`` seconds left at time 0 (promtool's clock starts at the
    epoch, so the expiry is that many seconds)."""
    return [("probe_ssl_earliest_cert_expiry", CERT_PROBE, remaining)]


def alert_cases(rules: Rules) -> dict[str, list[dict[str, Any]]]:
    """For each alert of the rules (but the backup ones): when it fires and when it must not."""
    up: Series = [("up", NODE, 1), ("up", POSTGRES, 1), ("up", REDIS, 1)]
    node, pg, redis = up
    wait = rules.wait("CertificateExpiring")
    return {
        "TargetDown": [
            fires_after_its_for(rules, "TargetDown", [(node[0], NODE, 0)], NODE),
            # The exporters answer, their servers do not.
            fires_after_its_for(rules, "TargetDown", [redis, ("redis_up", REDIS, 0)], REDIS),
            fires_after_its_for(rules, "TargetDown", [pg, ("pg_up", POSTGRES, 0)], POSTGRES),
            quiet(rules, "TargetDown", [*up, ("redis_up", REDIS, 1), ("pg_up", POSTGRES, 1)]),
        ],
        "ProbeFailed": [
            fires_after_its_for(rules, "ProbeFailed", [("probe_success", PROBE, 0)], PROBE),
            quiet(rules, "ProbeFailed", [("probe_success", PROBE, 1)]),
        ],
        "DataVolumeFull": [
            fires_after_its_for(rules, "DataVolumeFull", volume(149, 1000), volume(0, 0)[0][1]),
            quiet(rules, "DataVolumeFull", volume(151, 1000)),  # 84.9 %
            # The root filesystem full, the data volume not: not this alert.
            quiet(rules, "DataVolumeFull", [*volume(0, 1000, "/"), *volume(500, 1000)]),
        ],
        "CertificateExpiring": [
            fires_after_its_for(
                rules,
                "CertificateExpiring",
                certificate(CERTIFICATE_DAYS * DAY - STEP),
                CERT_PROBE,
            ),
            # When the `for` has passed, a step more than the threshold is left: quiet.
            rules.case(
                "CertificateExpiring",
                certificate(CERTIFICATE_DAYS * DAY + wait + STEP),
                [(wait, [])],
            ),
        ],
        "PostgresConnections": [
            fires_after_its_for(
                rules,
                "PostgresConnections",
                connections(30, 51, 100),  # 81 of 100
                {"instance": POSTGRES["instance"], "host": HOST},
            ),
            quiet(rules, "PostgresConnections", connections(30, 50, 100)),  # 80 of 100: not over
        ],
        "RedisMemory": [
            fires_after_its_for(rules, "RedisMemory", memory(91, 100), REDIS),
            quiet(rules, "RedisMemory", memory(90, 100)),
            quiet(rules, "RedisMemory", memory(10**9, 0)),  # maxmemory 0: no limit
        ],
    }


def backup_cases(rules: Rules, age: int) -> dict[str, list[dict[str, Any]]]:
    """The backup alerts for a newest backup that may be ``age`` seconds old. The script's
    metrics reach Prometheus through the PostgreSQL host's node exporter."""
    success = "owuibuild_backup_last_success_timestamp_seconds"
    other = {**NODE, "host": "elsewhere", "instance": "10.9.9.9:9100"}
    return {
        "BackupFailed": [
            fires_after_its_for(
                rules, "BackupFailed", [("owuibuild_backup_last_run_success", NODE, 0)], NODE
            ),
            quiet(rules, "BackupFailed", [("owuibuild_backup_last_run_success", NODE, 1)]),
        ],
        "BackupTooOld": [
            # A success at time 0: exactly `age` old is still fine, a step older is not.
            rules.case(
                "BackupTooOld", [(success, NODE, 0)], [(age, []), (age + rules.step, [NODE])]
            ),
        ],
        "BackupMissing": [
            rules.case(
                "BackupMissing",
                [("up", NODE, 1), (success, other, 0)],
                [(age - rules.step, []), (age, [{"host": HOST}])],
            ),
            rules.case("BackupMissing", [(success, NODE, 0)], [(age + rules.step, [])]),
        ],
    }


@pytest.fixture(scope="module")
def homelab(tmp_path_factory: pytest.TempPathFactory) -> Rules:
    directory = tmp_path_factory.mktemp("homelab-rules")
    rendered = compile_path(Path(shutil.copy(BLUEPRINTS / "homelab.yml", directory)))
    plan: Any = rendered.plan
    assert plan.postgres_host.name == HOST and str(plan.postgres_host.address) == ADDRESS
    return Rules(rendered, directory / "rules")


ALERTS = ["TargetDown", "ProbeFailed", "DataVolumeFull", "CertificateExpiring"]
ALERTS += ["PostgresConnections", "RedisMemory"]
BACKUP_ALERTS = ["BackupFailed", "BackupTooOld", "BackupMissing"]


def test_every_alert_has_its_promtool_test(homelab: Rules) -> None:
    assert set(homelab.by_name) == {*ALERTS, *BACKUP_ALERTS}


@pytest.mark.parametrize("alert", ALERTS)
def test_each_alert_fires_when_it_should_and_only_then(homelab: Rules, alert: str) -> None:
    require_tool("promtool")
    result = homelab.promtool_test(alert, alert_cases(homelab)[alert])
    assert result.returncode == 0 and "SUCCESS" in result.stdout, said(result)


def variant(tmp_path: Path, backups: dict[str, Any], watch: dict[str, Any]) -> Rendered:
    data = yaml.safe_load((BLUEPRINTS / "homelab.yml").read_text())
    data["shared"]["backups"] = backups
    data["monitoring"] |= watch
    path = tmp_path / "homelab.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return compile_path(path)


@pytest.mark.parametrize(
    ("backups", "watch", "age"),
    [
        ({}, {}, "26h"),  # daily, the default
        ({"on_calendar": "daily"}, {}, "26h"),
        ({"on_calendar": "hourly"}, {}, "2h"),
        ({"on_calendar": "*-*-* 03:30:00"}, {}, "26h"),
        ({"on_calendar": "hourly"}, {"backup_max_age": "3d"}, "3d"),
    ],
    ids=["default", "daily", "hourly", "calendar", "explicit"],
)
@pytest.mark.parametrize("alert", BACKUP_ALERTS)
def test_the_backup_alerts_follow_the_schedule(
    tmp_path: Path, alert: str, backups: dict[str, Any], watch: dict[str, Any], age: str
) -> None:
    require_tool("promtool")
    rules = Rules(variant(tmp_path, backups, watch), tmp_path / "rules", BACKUP_STEP)
    result = rules.promtool_test(alert, backup_cases(rules, duration(age))[alert])
    assert result.returncode == 0 and "SUCCESS" in result.stdout, said(result)


def test_no_backup_alert_without_backups(tmp_path: Path) -> None:
    require_tool("promtool")
    rules = Rules(variant(tmp_path, {"enabled": False}, {}), tmp_path / "rules", BACKUP_STEP)
    assert set(rules.by_name) == set(ALERTS)
    # A failed run's metrics left behind, no series at all: nothing fires.
    stale = [("owuibuild_backup_last_run_success", NODE, 0), ("up", NODE, 1)]
    cases = [rules.case(alert, stale, [(27 * 3600, [])]) for alert in BACKUP_ALERTS]
    rules.passes("no-backups", cases)


def test_promtool_test_rules_can_fail(homelab: Rules) -> None:
    """The harness is not vacuous: a wrong expectation (TargetDown before its `for`, a summary
    that differs) fails promtool's test."""
    require_tool("promtool")
    early = homelab.case(
        "TargetDown", [("up", NODE, 0)], [(homelab.wait("TargetDown") - STEP, [NODE])]
    )
    result = homelab.promtool_test("early", [early])
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr, said(result)
    wrong = homelab.case("TargetDown", [("up", NODE, 0)], [(homelab.wait("TargetDown"), [NODE])])
    wrong["alert_rule_test"][0]["exp_alerts"][0]["exp_annotations"]["summary"] += "!"
    assert homelab.promtool_test("wrong", [wrong]).returncode != 0


# -- the backup script's metrics --------------------------------------------------------------


def report_function(rendered: Rendered, metrics: Path) -> str:
    """The generated script's METRICS= line and report function, writing to ``metrics``."""
    plan: Any = rendered.plan
    script = write_files(rendered, plan.postgres_host.name)[backup.SCRIPT]
    start = script.index("\nMETRICS=")
    end = script.index("\ntrap report EXIT\n", start)
    block = script[start:end]
    generated = f"METRICS={exporters.BACKUP_METRICS}\n"
    assert block.count(generated) == 1, block
    return block.replace(generated, f"METRICS='{metrics}'\n")


def test_the_backup_metrics_are_valid_exposition_text(tmp_path: Path) -> None:
    require_tool("promtool")
    rendered = compile_path(Path(shutil.copy(BLUEPRINTS / "homelab.yml", tmp_path)))
    metrics = tmp_path / "owuibuild-backup.prom"
    report = report_function(rendered, metrics)
    values = {}
    for failed in (0, 1):
        result = run("sh", "-uc", f"{report}\nfailed={failed}\nreport\n")
        assert result.returncode == 0 and result.stderr == "", said(result)
        text = metrics.read_text()
        checked = run("promtool", "check", "metrics", stdin=text)
        assert checked.returncode == 0, said(checked)
        assert checked.stdout + checked.stderr == "", said(checked)  # not even a lint remark
        values[failed] = dict(line.split(" ") for line in text.splitlines() if line[0] != "#")
        assert oct(metrics.stat().st_mode & 0o777) == "0o644"  # the node exporter reads it
    ok, failed_run = values[0], values[1]
    assert ok["owuibuild_backup_last_run_success"] == "1"
    assert (
        ok["owuibuild_backup_last_success_timestamp_seconds"]
        == ok["owuibuild_backup_last_run_timestamp_seconds"]
    )
    # A failed run keeps the last success's time, so BackupTooOld still counts from it.
    assert failed_run["owuibuild_backup_last_run_success"] == "0"
    assert (
        failed_run["owuibuild_backup_last_success_timestamp_seconds"]
        == ok["owuibuild_backup_last_success_timestamp_seconds"]
    )
    # A first run that fails writes no success at all: BackupMissing covers it.
    metrics.unlink()
    result = run("sh", "-uc", f"{report}\nfailed=1\nreport\n")
    assert result.returncode == 0, said(result)
    assert "owuibuild_backup_last_success_timestamp_seconds" not in metrics.read_text()
    checked = run("promtool", "check", "metrics", stdin=metrics.read_text())
    assert checked.returncode == 0, said(checked)
