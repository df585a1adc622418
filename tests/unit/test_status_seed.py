"""Unit tests of `owuibuild status`'s seed rows: the seed generation each host's node exporter
reports (`owuibuild_seed_generation`) against the render's latest in the secrets file.

Nothing here dials a fleet: `http_get` is replaced by a function that answers as the node
exporter would, with the textfile owuibuild writes (`seed_manifest.generation_metric`). Whether
the real node exporter serves that textfile is for the boot tiers.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import test_status_ssh
from click.testing import CliRunner
from owuibuild import secrets as store
from owuibuild import status
from owuibuild.cli import cli
from owuibuild.probes import HttpAnswer, Outcome, State, direct
from owuibuild.seed_manifest import SEED_METRIC, generation_metric

pytestmark = pytest.mark.unit

campus = test_status_ssh.campus  # the fixture: multi-host (monitoring) rendered once

BLUEPRINTS = Path(__file__).resolve().parents[2] / "blueprints"

# What a node exporter serves around the textfile's metric (abridged).
EXPORTER_TEXT = """\
# HELP node_load1 1m load average.
# TYPE node_load1 gauge
node_load1 0.21
# HELP node_textfile_mtime_seconds Unixtime mtime of textfiles successfully read.
# TYPE node_textfile_mtime_seconds gauge
node_textfile_mtime_seconds{file="/var/lib/prometheus/node-exporter/owuibuild-seed.prom"} 1.7e+09
{seed}# HELP owuibuild_seed_generation_x Not ours: a longer name.
owuibuild_seed_generation_x 99
"""


def exporter_text(seed: str) -> str:
    return EXPORTER_TEXT.replace("{seed}", seed)


# -- reading the metric -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seed", "generation"),
    [
        (generation_metric(4), 4),  # exactly what the host writes
        (f"{SEED_METRIC} 7\n", 7),
        (f"  {SEED_METRIC}\t12 1712345678000\n", 12),  # with a timestamp
        (f"{SEED_METRIC} 4e+00\n", 4),  # how Go may print a float
        (f"{SEED_METRIC} 1.0\n", 1),
        (SEED_METRIC + '{source="seed } x",note="a \\"q\\" }"} 3\n', 3),  # "}" in a label
        (f'{SEED_METRIC} 5\n{SEED_METRIC}{{copy="b"}} 5\n', 5),  # several samples that agree
        ("", None),  # no textfile, or one without the metric
        (
            f"# HELP {SEED_METRIC} The owuibuild seed generation.\n# TYPE {SEED_METRIC} gauge\n",
            None,
        ),
    ],
)
def test_the_generation_is_read_from_the_exporter_text(seed: str, generation: int | None) -> None:
    assert status.seed_generation(exporter_text(seed)) == generation


@pytest.mark.parametrize(
    ("seed", "message"),
    [
        (f"{SEED_METRIC} abc\n", f"{SEED_METRIC} is 'abc', not a generation"),
        (f"{SEED_METRIC} 3.5\n", f"{SEED_METRIC} is '3.5', not a generation"),
        (f"{SEED_METRIC} -1\n", f"{SEED_METRIC} is '-1', not a generation"),
        (f"{SEED_METRIC} NaN\n", f"{SEED_METRIC} is 'NaN', not a generation"),
        (f"{SEED_METRIC} +Inf\n", f"{SEED_METRIC} is '+Inf', not a generation"),
        (f"{SEED_METRIC} 1_0\n", f"{SEED_METRIC} is '1_0', not a generation"),
        (f"{SEED_METRIC}\n", f"{SEED_METRIC} has no value"),
        (f'{SEED_METRIC}{{a="1"}}\n', f"{SEED_METRIC} has no value"),
        (SEED_METRIC + '{a="1} 4\n', f"{SEED_METRIC}: its labels do not end"),
        (
            f'{SEED_METRIC}{{a="x"}} 4\n{SEED_METRIC} 3\n{SEED_METRIC}{{a="y"}} 4\n',
            f"{SEED_METRIC} has several values (3, 4)",
        ),
    ],
)
def test_a_malformed_or_ambiguous_metric_is_an_error(seed: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        status.seed_generation(exporter_text(seed))
    assert str(caught.value) == message


# -- what it means ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("running", "rendered", "cloud", "expected"),
    [
        (4, 4, None, Outcome(State.OK, "generation 4")),
        (
            3,
            4,
            None,
            Outcome(
                State.DEGRADED,
                "runs generation 3, the render is at 4: put its new seed.iso in its CD-ROM "
                "drive (live) or replace web-a",
            ),
        ),
        (
            3,
            4,
            "aws",
            Outcome(
                State.DEGRADED,
                "runs generation 3, the render is at 4: replace web-a (a running aws host "
                "takes no new seed)",
            ),
        ),
        (
            5,
            4,
            None,
            Outcome(
                State.DEGRADED,
                "runs generation 5, newer than the render's 4: the secrets file is older than "
                "the one that rendered its seed; restore the latest from backup",
            ),
        ),
        (
            None,
            4,
            None,
            Outcome(
                State.DEGRADED,
                "no seed generation reported: a host booted before owuibuild wrote one (or "
                "/var/lib/prometheus/node-exporter/owuibuild-seed.prom is gone); the render is "
                "at 4: replace web-a to run it",
            ),
        ),
        (
            2,
            None,
            None,
            Outcome(
                State.DEGRADED,
                "runs generation 2, the secrets file records none for web-a: render the "
                "blueprint with the secrets file that made its seed",
            ),
        ),
    ],
)
def test_the_reported_generation_against_the_render(
    running: int | None, rendered: int | None, cloud: str | None, expected: Outcome
) -> None:
    assert status.generation_outcome("web-a", running, rendered, cloud) == expected


def test_the_states_are_distinct_for_older_newer_and_absent() -> None:
    details = {status.generation_outcome("h", running, 4).detail for running in (3, 5, None, 4)}
    assert len(details) == 4
    assert {status.generation_outcome("h", r, 4).state for r in (3, 5, None)} == {State.DEGRADED}


# -- the probe --------------------------------------------------------------------------------------


def exporter(
    monkeypatch: pytest.MonkeyPatch, code: int, body: str | bytes
) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Replace http_get with a node exporter that answers ``code`` and ``body``; the calls."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
    data = body.encode() if isinstance(body, str) else body

    def get(*args: Any, **kwargs: Any) -> HttpAnswer:
        calls.append((args, kwargs))
        return HttpAnswer(code, data)

    monkeypatch.setattr(status, "http_get", get)
    return calls


def test_the_probe_asks_the_exporter_over_https_for_the_planned_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = exporter(monkeypatch, 200, exporter_text(generation_metric(4)))
    context = ssl.create_default_context()
    probe = status.seed_probe("web-a", "10.0.5.30", 9100, 4, context)
    assert status.guarded(lambda: probe(1.0)) == Outcome(State.OK, "generation 4")
    ((args, kwargs),) = calls
    assert args[:3] == ("10.0.5.30", 9100, "/metrics")
    assert kwargs["tls"] is context and kwargs["server_name"] == "10.0.5.30"
    assert kwargs["dial"] is direct


@pytest.mark.parametrize(
    ("code", "body", "expected"),
    [
        (503, "", Outcome(State.DOWN, "GET /metrics: HTTP 503")),
        (
            200,
            exporter_text(f"{SEED_METRIC} soon\n"),
            Outcome(State.DEGRADED, f"GET /metrics: {SEED_METRIC} is 'soon', not a generation"),
        ),
        (200, b"\xff\xfe not text", State.DEGRADED),  # undecodable: no generation in it
    ],
)
def test_an_exporter_that_answers_oddly_is_not_ok(
    monkeypatch: pytest.MonkeyPatch, code: int, body: str | bytes, expected: Outcome | State
) -> None:
    exporter(monkeypatch, code, body)
    probe = status.seed_probe("h", "10.0.5.30", 9100, 4, ssl.create_default_context())
    outcome = status.guarded(lambda: probe(1.0))
    if isinstance(expected, State):
        assert outcome.state is expected
    else:
        assert outcome == expected


# -- the rows a plan implies ------------------------------------------------------------------------


def generations(rendered: Any) -> dict[str, int]:
    """What the render recorded for each host: the store's records, as `status` reads them."""
    records = store.open_store(store.secrets_path(rendered.blueprint)).seeds
    return {host: r.generation for host, r in records.items()}


def test_with_monitoring_each_host_gets_a_seed_row_on_its_node_exporter(
    render_example: Callable[[str], Any],
) -> None:
    rendered = render_example("multi-host.yml")
    plan = rendered.plan
    assert plan.monitoring is not None
    recorded = generations(rendered)
    assert set(recorded) == {h.name for h in plan.hosts}
    checks = test_status_ssh.all_checks(rendered, recorded)
    rows = [c for c in checks if c.service == "seed"]
    assert checks[-len(rows) :] == rows  # last, after the certificate rows
    assert [c.host for c in rows] == [h.name for h in plan.hosts]
    for c, host in zip(rows, plan.hosts, strict=True):
        assert c.instance is None
        assert (c.address, c.port) == (str(host.host.address), 9100)
        assert c.target == f"{host.host.address}:9100"
        assert c.via == host.host  # --via ssh: from the host itself, to its own address
        assert "owui-node-exporter.service" in c.refused_hint and host.name in c.refused_hint
    # the certificate row of a host without PostgreSQL or Redis dials the same exporter
    certificates = {c.host: c for c in checks if c.service == "certificate" and c.port == 9100}
    for c in rows:
        if c.host in certificates:
            assert (certificates[c.host].address, certificates[c.host].via) == (c.address, c.via)
    assert status.select(checks, ["seed"]) == rows


def test_the_seed_rows_judge_each_host_against_its_own_record(
    render_text: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # multi-host on the default platform (nocloud), where a running host takes a new seed
    text = (BLUEPRINTS / "multi-host.yml").read_text().replace("platform: openstack\n", "")
    rendered = render_text(text)
    plan = rendered.plan
    assert plan.monitoring is not None and plan.seeds_swappable and len(plan.hosts) > 1
    first = plan.hosts[0].name
    # the render is at 3 for the first host, at 4 for the others; every host runs 3
    recorded = {name: 3 if name == first else 4 for name in generations(rendered)}
    calls = exporter(monkeypatch, 200, exporter_text(generation_metric(3)))
    checks = status.seed_checks(
        plan, recorded, status.tls_context(ca_pem=rendered.secrets.tls.ca_cert)
    )
    assert [c.host for c in checks] == [h.name for h in plan.hosts]
    results = status.run_checks(checks, 1.0, frozenset(rendered.secrets.all_values()))
    assert (results[0].state, results[0].detail) == (State.OK, "generation 3")
    for r in results[1:]:
        assert (r.state, r.detail) == (
            State.DEGRADED,
            "runs generation 3, the render is at 4: put its new seed.iso in its CD-ROM drive "
            f"(live) or replace {r.check.host}",
        )
    assert len(calls) == len(plan.hosts)


def test_without_monitoring_there_is_no_seed_row(render_example: Callable[[str], Any]) -> None:
    """No node exporter reads the textfile (test_status.py checks the whole plan's rows)."""
    plan = render_example("seed-example.yml").plan
    assert plan.monitoring is None
    assert status.seed_checks(plan, {}, None) == []


def test_without_a_fleet_ca_the_exporter_is_not_dialled(
    render_example: Callable[[str], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = exporter(monkeypatch, 200, generation_metric(1))
    rendered = render_example("multi-host.yml")
    checks = status.plan_checks(
        rendered.plan, rendered.secrets.values, Path("s.yml"), fleet_ca=None, generations={}
    )
    results = status.run_checks(status.select(checks, ["seed"]), 1.0)
    assert len(results) == len(rendered.plan.hosts)
    assert {(r.state, r.detail) for r in results} == {
        (State.AUTH_FAILED, "no fleet CA: render the blueprint first")
    }
    assert calls == []


# -- the command ------------------------------------------------------------------------------------


def test_status_compares_with_the_secrets_files_records(
    campus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = store.open_store(store.secrets_path(campus)).seeds
    assert records and {r.generation for r in records.values()} == {1}
    exporter(monkeypatch, 200, exporter_text(generation_metric(1)))
    result = CliRunner().invoke(cli, ["status", str(campus), "--only", "seed"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == list(status.COLUMNS)
    rows = [line.split() for line in lines[1 : 1 + len(records)]]
    assert {row[2] for row in rows} == set(records)
    assert all(row[0] == "seed" and row[1] == "-" and row[3].endswith(":9100") for row in rows)
    assert all(row[4] == "ok" and " ".join(row[-2:]) == "generation 1" for row in rows)
    assert f"campus: {len(records)} of {len(records)} probes ok" in result.stdout


def test_status_fails_a_host_that_runs_an_older_seed(
    campus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a render after a change: the secrets file records generation 2 for every host
    secrets_file = store.secrets_path(campus)
    text = secrets_file.read_text().replace("generation: 1", "generation: 2")
    secrets_file.write_text(text)
    assert {r.generation for r in store.open_store(secrets_file).seeds.values()} == {2}
    exporter(monkeypatch, 200, exporter_text(generation_metric(1)))
    result = CliRunner().invoke(cli, ["status", str(campus), "--only", "seed", "--format", "json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    for row in doc["checks"]:
        assert row["state"] == "degraded"
        assert row["detail"] == (
            f"runs generation 1, the render is at 2: replace {row['host']} "
            "(a running openstack host takes no new seed)"
        )
