"""Unit tests of `owuibuild status`: which probes a plan implies, how answers are judged, how
they run together, and the table and JSON they print.

Nothing here dials a fleet: probes that would are replaced by functions, and the command is only
run on paths that stop before probing. Real servers are in tests/services/test_status_servers.py.
"""

from __future__ import annotations

import datetime
import json
import shutil
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from owuibuild import pki as fleet_pki
from owuibuild import status
from owuibuild.cli import cli
from owuibuild.pipeline import compile_blueprint
from owuibuild.probes import HttpAnswer, Outcome, State
from owuibuild.status import Check, Result

pytestmark = pytest.mark.unit

BLUEPRINTS = Path(__file__).resolve().parents[2] / "blueprints"


def fixed(outcome: Outcome, delay: float = 0.0) -> Callable[[float], Outcome]:
    def run(timeout: float) -> Outcome:
        time.sleep(delay)
        return outcome

    return run


def check(name: str, run: Callable[[float], Outcome], service: str = "redis") -> Check:
    return Check(service, name, "ai-shared", "10.0.5.24", 6379, run)


# -- the probes a plan implies ----------------------------------------------------------------------


def test_every_service_and_instance_gets_its_probes(render_example: Callable[[str], Any]) -> None:
    rendered = render_example("multi-host.yml")
    plan = rendered.plan
    checks = status.plan_checks(
        plan, rendered.secrets.values, Path("x.secrets.yml"), fleet_ca=rendered.secrets.tls.ca_cert
    )
    assert len(checks) == 2 + 4 * len(plan.instances) + 1
    assert [c.service for c in checks[:2]] == ["ollama", "qdrant"]
    by_key = {(c.service, c.instance): c for c in checks}
    # multi-host has monitoring: the alerts of its Prometheus, asked on the monitoring host
    alerts = by_key[("alerts", None)]
    assert plan.monitoring is not None and alerts.via == plan.monitoring.host
    assert (alerts.host, alerts.target) == ("ai-shared", "10.20.1.10:9090")
    assert by_key[("ollama", None)].target == "10.20.1.10:11434"
    assert by_key[("qdrant", None)].target == "10.20.1.10:6333"
    for i in plan.instances:
        assert by_key[("postgresql", i.name)].target == "10.20.1.10:5432"
        assert by_key[("redis", i.name)].target == f"10.20.1.10:{i.redis_port}"
        for service in ("openwebui", "openwebui-db"):
            c = by_key[(service, i.name)]
            # multi-host has a front door: instances are asked through it, on port 443
            assert (c.host, c.target) == (i.host.name, f"{i.host.address}:443")
    assert by_key[("redis", "math")].port != by_key[("redis", "physics")].port  # per-instance


def test_instances_without_a_front_door_are_asked_on_their_own_port(
    render_example: Callable[[str], Any],
) -> None:
    rendered = render_example("scale-out.yml")
    plan = rendered.plan
    assert plan.front_door is None
    checks = status.plan_checks(
        plan, rendered.secrets.values, Path("x.secrets.yml"), fleet_ca=rendered.secrets.tls.ca_cert
    )
    for i in plan.instances:
        for service in ("openwebui", "openwebui-db"):
            c = next(c for c in checks if (c.service, c.instance) == (service, i.name))
            assert c.target == f"{i.host.address}:{i.port}"


def test_a_check_never_shows_its_secret(render_example: Callable[[str], Any]) -> None:
    rendered = render_example("multi-host.yml")
    checks = status.plan_checks(
        rendered.plan,
        rendered.secrets.values,
        Path("x.secrets.yml"),
        fleet_ca=rendered.secrets.tls.ca_cert,
    )
    text = " ".join(repr(c) for c in checks)
    assert not any(secret in text for secret in rendered.secrets.all_values())


def test_a_missing_secret_is_reported_not_guessed(render_example: Callable[[str], Any]) -> None:
    rendered = render_example("multi-host.yml")
    checks = status.plan_checks(
        rendered.plan, {}, Path("campus.secrets.yml"), fleet_ca=rendered.secrets.tls.ca_cert
    )
    results = status.run_checks(
        [c for c in checks if c.service in ("postgresql", "redis", "qdrant")], 1.0
    )
    assert {r.state for r in results} == {State.AUTH_FAILED}
    assert "no instances.admin-office.db_password in campus.secrets.yml" in {
        r.detail.split(":")[0] for r in results
    }


def test_only_selects_services_and_instances(render_example: Callable[[str], Any]) -> None:
    rendered = render_example("multi-host.yml")
    checks = status.plan_checks(
        rendered.plan, rendered.secrets.values, Path("s.yml"), fleet_ca=rendered.secrets.tls.ca_cert
    )
    assert {c.service for c in status.select(checks, ["redis"])} == {"redis"}
    chosen = status.select(checks, ["math", "ollama"])
    assert [(c.service, c.instance) for c in chosen] == [
        ("ollama", None),
        ("postgresql", "math"),
        ("redis", "math"),
        ("openwebui", "math"),
        ("openwebui-db", "math"),
    ]


def test_postgresql_and_redis_are_probed_over_tls_with_the_fleet_ca(
    render_example: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each database and Redis probe gets a context that trusts the fleet CA alone, checks
    names, wants TLS 1.2 or later, and the planned address to verify."""
    rendered = render_example("multi-host.yml")
    ca_cert = rendered.secrets.tls.ca_cert
    calls: list[tuple[str, str, dict[str, Any]]] = []

    def recorder(kind: str) -> Callable[..., Outcome]:
        def probe(address: str, *args: Any, **kwargs: Any) -> Outcome:
            calls.append((kind, address, kwargs))
            return Outcome(State.OK, kind)

        return probe

    monkeypatch.setattr(status, "pg_login", recorder("postgresql"))
    monkeypatch.setattr(status, "redis_ping", recorder("redis"))
    checks = status.plan_checks(
        rendered.plan, rendered.secrets.values, Path("s.yml"), fleet_ca=ca_cert
    )
    chosen = status.select(checks, ["postgresql", "redis"])
    results = status.run_checks(chosen, 1.0)
    assert {r.state for r in results} == {State.OK}
    assert len(calls) == 2 * len(rendered.plan.instances)
    for kind, address, kwargs in calls:
        assert kwargs["server_name"] == address == "10.20.1.10", kind
        context = kwargs["tls"]
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
        assert context.minimum_version is ssl.TLSVersion.TLSv1_2
        assert context.get_ca_certs(binary_form=True) == [ssl.PEM_cert_to_DER_cert(ca_cert)]
    # the address is one the fleet's certificate for that host names
    (host_cert,) = [
        issued
        for name, issued in rendered.secrets.tls.hosts.items()
        if name == rendered.plan.postgres_host.name
    ]
    assert "10.20.1.10" in host_cert.names


@pytest.mark.parametrize(
    ("fleet_ca", "detail"),
    [
        (None, "no fleet CA: render the blueprint first"),
        (
            "-----BEGIN CERTIFICATE-----\nnot a certificate\n",
            "the fleet CA cannot be loaded: restore the CA file from backup",
        ),
    ],
)
def test_without_a_usable_fleet_ca_nothing_is_dialled_in_plain_text(
    render_example: Callable[[str], Any],
    monkeypatch: pytest.MonkeyPatch,
    fleet_ca: str | None,
    detail: str,
) -> None:
    def never(*args: Any, **kwargs: Any) -> Outcome:
        raise AssertionError("dialled without TLS")

    monkeypatch.setattr(status, "pg_login", never)
    monkeypatch.setattr(status, "redis_ping", never)
    rendered = render_example("multi-host.yml")
    checks = status.plan_checks(
        rendered.plan, rendered.secrets.values, Path("s.yml"), fleet_ca=fleet_ca
    )
    results = status.run_checks(status.select(checks, ["postgresql", "redis"]), 1.0)
    assert len(results) == 2 * len(rendered.plan.instances)
    assert {(r.state, r.detail) for r in results} == {(State.AUTH_FAILED, detail)}


# -- judging HTTP answers ---------------------------------------------------------------------------


def answer(monkeypatch: pytest.MonkeyPatch, code: int, body: object) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    monkeypatch.setattr(status, "http_get", lambda *a, **k: HttpAnswer(code, data))


def tags(*names: str) -> dict[str, object]:
    return {"models": [{"name": n, "model": n, "size": 1} for n in names]}


@pytest.mark.parametrize(
    ("code", "body", "expected"),
    [
        (200, tags("qwen2.5:3b", "nomic-embed-text:latest"), Outcome(State.OK, "2 models present")),
        (
            200,
            tags("nomic-embed-text:latest"),
            Outcome(State.DEGRADED, "missing models: qwen2.5:3b"),
        ),
        (200, tags("qwen2.5:7b", "nomic-embed-text:v1.5"), State.DEGRADED),
        (200, b"<html>", Outcome(State.DEGRADED, "the answer is not JSON")),
        (200, {"models": None}, State.DEGRADED),
        (500, {}, Outcome(State.DOWN, "GET /api/tags: HTTP 500")),
    ],
)
def test_ollama_wants_every_model(
    monkeypatch: pytest.MonkeyPatch, code: int, body: object, expected: Outcome | State
) -> None:
    answer(monkeypatch, code, body)
    probe = status.ollama_probe("10.0.5.24", 11434, ["qwen2.5:3b", "nomic-embed-text"])
    outcome = status.guarded(lambda: probe(1.0))
    if isinstance(expected, State):
        assert outcome.state is expected
    else:
        assert outcome == expected


@pytest.mark.parametrize(
    ("code", "body", "state"),
    [
        (200, {"result": {"collections": [{"name": "webui1_files"}]}, "status": "ok"}, State.OK),
        (401, b"Invalid api-key", State.AUTH_FAILED),
        (403, b"", State.AUTH_FAILED),
        (502, b"", State.DOWN),
        (200, {"result": {}}, State.DEGRADED),
    ],
)
def test_qdrant_states(
    monkeypatch: pytest.MonkeyPatch, code: int, body: object, state: State
) -> None:
    answer(monkeypatch, code, body)
    outcome = status.guarded(lambda: status.qdrant_probe("10.0.5.24", 6333, "k" * 32)(1.0))
    assert outcome.state is state


@pytest.mark.parametrize(
    ("code", "body", "state"),
    [
        (200, {"status": True}, State.OK),
        (200, {"status": False}, State.DEGRADED),
        (500, {"detail": "db"}, State.DOWN),
    ],
)
def test_openwebui_health_states(
    monkeypatch: pytest.MonkeyPatch, code: int, body: object, state: State
) -> None:
    answer(monkeypatch, code, body)
    probe = status.openwebui_probe("10.0.5.30", 3001, "/health/db")
    assert status.guarded(lambda: probe(1.0)).state is state


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("nomic-embed-text", "nomic-embed-text:latest"),
        ("qwen2.5:3b", "qwen2.5:3b"),
        ("registry.local:5000/team/model", "registry.local:5000/team/model:latest"),
    ],
)
def test_model_names_compare_with_their_tag(name: str, key: str) -> None:
    assert status._model_key(name) == key


# -- running ----------------------------------------------------------------------------------------


def test_checks_run_concurrently_and_keep_their_order() -> None:
    checks = [check(f"i{n}", fixed(Outcome(State.OK, str(n)), 0.3)) for n in range(12)]
    start = time.monotonic()
    results = status.run_checks(checks, 2.0)
    assert time.monotonic() - start < 1.5
    assert [r.detail for r in results] == [str(n) for n in range(12)]
    assert all(r.latency_ms >= 250 for r in results)


def test_a_probe_bug_is_a_state_without_its_message() -> None:
    def broken(timeout: float) -> Outcome:
        raise RuntimeError("token=" + "s" * 30)

    (result,) = status.run_checks([check("i", broken)], 1.0)
    assert (result.state, result.detail) == (State.DOWN, "probe error: RuntimeError")


def test_a_probe_that_never_returns_is_a_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status, "BACKSTOP_SECONDS", 0.1)
    release = threading.Event()
    try:
        start = time.monotonic()
        (result,) = status.run_checks(
            [check("i", lambda t: release.wait(5) and Outcome(State.OK))], 0.2
        )
        assert time.monotonic() - start < 1.0
        assert result.state is State.TIMEOUT
    finally:
        release.set()


def test_details_are_scrubbed_of_every_secret() -> None:
    secret = "Zq8sV1-secret-value_000000000"
    run = fixed(Outcome(State.DOWN, f"server said {secret}!"))
    (result,) = status.run_checks([check("i", run)], 1.0, frozenset({secret}))
    assert result.detail == "server said [redacted]!"


# -- output -----------------------------------------------------------------------------------------


def results() -> list[Result]:
    return [
        Result(check("webui1", fixed(Outcome(State.OK))), State.OK, 1.25, "user webui1: PONG"),
        Result(
            Check("ollama", None, "ai-shared", "10.0.5.24", 11434, fixed(Outcome(State.OK))),
            State.DEGRADED,
            1234.5,
            "missing models: qwen2.5:3b",
        ),
    ]


def test_the_table_has_one_aligned_row_per_probe() -> None:
    lines = status.format_table(results()).splitlines()
    assert lines[0].split() == list(status.COLUMNS)
    start = lines[0].index("DETAIL")
    assert [line[start:] for line in lines[1:]] == [
        "user webui1: PONG",
        "missing models: qwen2.5:3b",
    ]
    assert lines[1].split()[:6] == ["redis", "webui1", "ai-shared", "10.0.5.24:6379", "ok", "1"]
    assert lines[2].split()[:6] == [
        "ollama",
        "-",
        "ai-shared",
        "10.0.5.24:11434",
        "degraded",
        "1234",
    ]
    assert status.summary_line("acme", results()) == "acme: 1 of 2 probes ok; 1 degraded"


def test_json_carries_the_same_rows() -> None:
    doc = json.loads(status.format_json("acme", 5.0, results()))
    assert doc["ok"] is False
    assert doc["summary"] == {"ok": 1, "degraded": 1}
    assert doc["checks"][1] == {
        "service": "ollama",
        "instance": None,
        "host": "ai-shared",
        "target": "10.0.5.24:11434",
        "state": "degraded",
        "latency_ms": 1234.5,
        "detail": "missing models: qwen2.5:3b",
    }


# -- the command, up to the point where it would dial -----------------------------------------------


@pytest.fixture
def campus(tmp_path: Path) -> Path:
    path = tmp_path / "campus.yml"
    shutil.copy(BLUEPRINTS / "multi-host.yml", path)
    return path


def test_no_secrets_file_is_a_usage_error_that_says_where(campus: Path) -> None:
    result = CliRunner().invoke(cli, ["status", str(campus)])
    assert result.exit_code == 2
    assert f"no secrets file at {campus.with_name('campus.secrets.yml')}" in result.stderr
    assert "owuibuild render" in result.stderr


@pytest.fixture
def campus_secrets(campus: Path) -> Path:
    """The secrets file a first render writes (mode 0600), next to the campus blueprint."""
    assert compile_blueprint(campus, seed_iso=False).ok
    secrets = campus.with_name("campus.secrets.yml")
    assert secrets.is_file()
    return secrets


def test_a_readable_secrets_file_is_refused(campus: Path, campus_secrets: Path) -> None:
    campus_secrets.chmod(0o644)
    result = CliRunner().invoke(cli, ["status", str(campus)])
    assert result.exit_code == 2
    assert "readable by others" in result.stderr


def test_a_missing_ca_file_is_a_usage_error_that_says_where(
    campus: Path, campus_secrets: Path
) -> None:
    tls_file = fleet_pki.tls_path(campus)
    assert tls_file == campus.with_name("campus.tls.secrets.yml")
    tls_file.unlink()
    result = CliRunner().invoke(cli, ["status", str(campus)])
    assert result.exit_code == 2
    assert f"no CA file at {tls_file}" in result.stderr
    assert "owuibuild render" in result.stderr


def test_a_readable_ca_file_is_refused(campus: Path, campus_secrets: Path) -> None:
    fleet_pki.tls_path(campus).chmod(0o644)
    result = CliRunner().invoke(cli, ["status", str(campus)])
    assert result.exit_code == 2
    assert "readable by others" in result.stderr


def test_an_unknown_only_name_is_a_usage_error(campus: Path, campus_secrets: Path) -> None:
    result = CliRunner().invoke(cli, ["status", str(campus), "--only", "mongodb"])
    assert result.exit_code == 2
    assert "--only mongodb: not a service or instance of campus" in result.stderr


def test_an_invalid_blueprint_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("apiVersion: owuibuild/v1\nname: Not_A_Label\n")
    result = CliRunner().invoke(cli, ["status", str(bad), "--format", "json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["ok"] is False


def test_a_missing_blueprint_is_a_usage_error(tmp_path: Path) -> None:
    assert CliRunner().invoke(cli, ["status", str(tmp_path / "none.yml")]).exit_code == 2


def test_help_has_an_example() -> None:
    result = CliRunner().invoke(cli, ["status", "--help"])
    assert result.exit_code == 0
    assert "Example:" in result.stdout
    assert "owuibuild status fleet.yml" in result.stdout
    assert "status" in CliRunner().invoke(cli, ["--help"]).stdout


# -- certificates ---------------------------------------------------------------------------------


def test_certificate_rows_dial_the_first_tls_service_of_each_service_host(
    render_example: Callable[[str], Any],
) -> None:
    r = render_example("scale-out.yml")
    plan, tls = r.plan, r.secrets.tls
    today = datetime.date(2026, 12, 1)
    checks = status.certificate_checks(plan, tls, today, None)
    rows = {c.instance or c.host: c for c in checks}
    assert set(rows) == {"fleet CA", *plan.certificate_hosts}
    assert rows["fleet CA"].port == 0 and rows["fleet CA"].target == "-"
    db = plan.postgres_host.name
    assert (rows[db].address, rows[db].port) == (str(plan.postgres_host.address), 5432)
    redis_host = plan.redis_host.name
    if redis_host != db:
        assert rows[redis_host].port == plan.redis_servers[0].port
    # Hosts that serve no TLS service yet are checked in the CA file alone: never dialled.
    for name, check in rows.items():
        services = next((h.services for h in plan.hosts if h.name == name), frozenset())
        if name != "fleet CA" and not services & {"postgres", "redis"}:
            assert check.port == 0
            outcome = check.run(1.0)
            assert outcome.state is State.OK and outcome.detail.startswith("valid until")


@pytest.mark.parametrize(
    ("days", "state"),
    [(-1, State.DOWN), (0, State.DEGRADED), (13, State.DEGRADED), (14, State.OK), (700, State.OK)],
)
def test_certificate_expiry_thresholds(days: int, state: State) -> None:
    today = datetime.date(2026, 12, 1)
    outcome = status.expiry_outcome(today + datetime.timedelta(days=days), today, "renew it")
    assert outcome.state is state
    if state is not State.OK:
        assert outcome.detail.endswith(": renew it")


# -- the alerts of the fleet's Prometheus -----------------------------------------------------------


def alert(name: str, state: str, severity: str, **labels: str) -> dict[str, object]:
    return {"labels": {"alertname": name, "severity": severity, **labels}, "state": state}


@pytest.mark.parametrize(
    ("alerts", "expected"),
    [
        ([], Outcome(State.OK, "no alert firing")),
        (
            [alert("BackupMissing", "pending", "critical", host="shared")],
            Outcome(State.OK, "no alert firing; 1 pending"),
        ),
        (
            [alert("RedisMemory", "firing", "warning", server="alpha", host="shared")],
            Outcome(State.DEGRADED, "1 firing: RedisMemory (alpha, shared)"),
        ),
        (
            [
                alert("RedisMemory", "firing", "warning", server="alpha", host="shared"),
                alert("TargetDown", "firing", "critical", instance="10.0.5.24:9187", host="s"),
                alert("DataVolumeFull", "pending", "critical", host="dock"),
            ],
            Outcome(
                State.DOWN,
                "2 firing: RedisMemory (alpha, shared); TargetDown (10.0.5.24:9187, s); 1 pending",
            ),
        ),
    ],
)
def test_firing_alerts_set_the_alerts_row(
    monkeypatch: pytest.MonkeyPatch, alerts: list[object], expected: Outcome
) -> None:
    answer(monkeypatch, 200, {"status": "success", "data": {"alerts": alerts}})
    probe = status.alerts_probe("10.0.5.24", 9090, ssl.create_default_context())
    assert status.guarded(lambda: probe(1.0)) == expected


@pytest.mark.parametrize(
    ("code", "body", "state"),
    [(200, {"data": {}}, State.DEGRADED), (200, b"<html>", State.DEGRADED), (503, b"", State.DOWN)],
)
def test_a_prometheus_that_answers_oddly_is_not_ok(
    monkeypatch: pytest.MonkeyPatch, code: int, body: object, state: State
) -> None:
    answer(monkeypatch, code, body)
    probe = status.alerts_probe("10.0.5.24", 9090, ssl.create_default_context())
    assert status.guarded(lambda: probe(1.0)).state is state


def test_no_alerts_or_seed_row_without_monitoring(render_example: Callable[[str], Any]) -> None:
    rendered = render_example("seed-example.yml")
    assert rendered.plan.monitoring is None
    checks = status.plan_checks(
        rendered.plan,
        rendered.secrets.values,
        Path("x.secrets.yml"),
        fleet_ca=rendered.secrets.tls.ca_cert,
    )
    assert not {"alerts", "seed"} & {c.service for c in checks}
