"""`owuibuild status`: probe a running fleet and print one table.

This room decides which probes a plan implies (the seed's "Monitoring" commands, one per service
and instance), runs them concurrently with one timeout each, and turns the outcomes into a text
table or JSON and an exit code. The wire protocols live in `probes`; with `--via ssh` each
check's connections are opened on the host the fleet admits them from (`Check.via`), by
`jumphost`. It reads the blueprint, the secrets file and the CA file and writes none of them;
PostgreSQL and Redis are probed over TLS only, trusting the fleet CA alone and verifying each
server's planned address, as the instances do. No secret reaches the output, which is scrubbed
of every value in the secrets file before it is printed.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import click

from .cli import EXIT_INVALID, EXIT_OK, EXIT_USAGE, fail
from .hostconfig import exporters as exporters_section
from .hostconfig import postgres as postgres_section
from .jumphost import Jumps, SshOptions
from .model import Host
from .pki import FleetPKI, Issued
from .plan import (
    HTTPS_PORT,
    NODE_EXPORTER_PORT,
    OLLAMA_PORT,
    POSTGRES_PORT,
    PROMETHEUS_PORT,
    QDRANT_PORT,
    InstancePlan,
    Plan,
    SecretRef,
)
from .probes import (
    REFUSED_DETAIL,
    Deadline,
    Dial,
    Outcome,
    ProbeFailure,
    State,
    direct,
    guarded,
    http_get,
    pg_login,
    redis_ping,
    scrub,
    served_certificate,
    tls_context,
)
from .seed_manifest import SEED_METRIC

# Every service `status` probes, in table order. `--only` takes these or instance names.
SERVICES = (
    "ollama",
    "qdrant",
    "postgresql",
    "redis",
    "openwebui",
    "openwebui-db",
    "certificate",
    "alerts",
    "seed",
)
# A certificate this close to its end is reported degraded.
CERTIFICATE_WARN_DAYS = 14
DEFAULT_TIMEOUT = 5.0
# Probes keep their own deadline; this is only the backstop for one that does not return.
BACKSTOP_SECONDS = 2.0
# What --ssh-user accepts: a POSIX login name (never an ssh option).
SSH_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?")


class Probe(Protocol):
    """A check's work: one probe within ``timeout``, its connections opened by ``dial``."""

    def __call__(self, timeout: float, dial: Dial = direct) -> Outcome: ...


@dataclass(frozen=True)
class Check:
    """One probe of one service: where it dials and what it runs (a closure over secrets).

    ``refused_hint`` is shown when nothing listens at the target (connection refused): the
    likely reasons a generated host has for not serving there; ``turned_away_hint`` when the
    service itself turned the probe away (pg_hba). ``via`` is the host the service admits this
    traffic from on a real fleet, where `--via ssh` opens the connection (None: nothing to
    dial).
    """

    service: str
    instance: str | None
    host: str
    address: str
    port: int
    run: Probe = field(repr=False, compare=False)
    refused_hint: str = ""
    via: Host | None = field(default=None, repr=False)
    turned_away_hint: str = ""

    @property
    def target(self) -> str:
        return f"{self.address}:{self.port}" if self.port else self.address


@dataclass(frozen=True)
class Result:
    check: Check
    state: State
    latency_ms: float
    detail: str
    hint: str = ""  # what the state may mean and where to look; in JSON only when set

    def as_dict(self) -> dict[str, object]:
        row: dict[str, object] = {
            "service": self.check.service,
            "instance": self.check.instance,
            "host": self.check.host,
            "target": self.check.target,
            "state": self.state.value,
            "latency_ms": self.latency_ms,
            "detail": self.detail,
        }
        if self.hint:
            row["hint"] = self.hint
        return row


# -- what each HTTP answer means --------------------------------------------------------------------


def _json_body(body: bytes) -> object:
    try:
        return json.loads(body)
    except ValueError:
        raise ProbeFailure(State.DEGRADED, "the answer is not JSON") from None


def _model_key(name: str) -> str:
    """Ollama lists an untagged model as ``name:latest``."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def ollama_probe(
    address: str, port: int, models: Sequence[str], tls: ssl.SSLContext | None = None
) -> Probe:
    """Ollama's model list, through its TLS terminator when ``tls`` is given."""

    def run(timeout: float, dial: Dial = direct) -> Outcome:
        answer = http_get(address, port, "/api/tags", timeout, tls=tls, dial=dial)
        if answer.status != 200:
            return Outcome(State.DOWN, f"GET /api/tags: HTTP {answer.status}")
        doc = _json_body(answer.body)
        listed = doc.get("models") if isinstance(doc, dict) else None
        if not isinstance(listed, list):
            return Outcome(State.DEGRADED, "GET /api/tags: no model list")
        have = {
            _model_key(str(m.get("name") or m.get("model")))
            for m in listed
            if isinstance(m, dict) and (m.get("name") or m.get("model"))
        }
        missing = [m for m in models if _model_key(m) not in have]
        if missing:
            return Outcome(State.DEGRADED, f"missing models: {', '.join(missing)}")
        return Outcome(State.OK, f"{len(models)} models present")

    return run


def qdrant_probe(address: str, port: int, api_key: str, tls: ssl.SSLContext | None = None) -> Probe:
    """Qdrant's collection list with the API key, over TLS when ``tls`` is given."""

    def run(timeout: float, dial: Dial = direct) -> Outcome:
        answer = http_get(
            address, port, "/collections", timeout, {"api-key": api_key}, tls=tls, dial=dial
        )
        if answer.status in (401, 403):
            return Outcome(State.AUTH_FAILED, f"GET /collections: HTTP {answer.status}")
        if answer.status != 200:
            return Outcome(State.DOWN, f"GET /collections: HTTP {answer.status}")
        doc = _json_body(answer.body)
        result = doc.get("result") if isinstance(doc, dict) else None
        collections = result.get("collections") if isinstance(result, dict) else None
        if not isinstance(collections, list):
            return Outcome(State.DEGRADED, "GET /collections: no collection list")
        return Outcome(State.OK, f"collections: {len(collections)}")

    return run


def openwebui_probe(
    address: str,
    port: int,
    path: str,
    *,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> Probe:
    def run(timeout: float, dial: Dial = direct) -> Outcome:
        answer = http_get(address, port, path, timeout, tls=tls, server_name=server_name, dial=dial)
        if answer.status != 200:
            return Outcome(State.DOWN, f"GET {path}: HTTP {answer.status}")
        doc = _json_body(answer.body)
        if isinstance(doc, dict) and doc.get("status") is False:
            return Outcome(State.DEGRADED, f"GET {path}: status false")
        return Outcome(State.OK, f"GET {path}")

    return run


ALERTS_PATH = "/api/v1/alerts"


def firing_outcome(doc: object) -> Outcome:
    """What Prometheus's alerts say: ok when none fires; down when a critical one does, else
    degraded; the detail names each firing alert with its target and host."""
    data = doc.get("data") if isinstance(doc, dict) else None
    alerts = data.get("alerts") if isinstance(data, dict) else None
    if not isinstance(alerts, list):
        return Outcome(State.DEGRADED, f"GET {ALERTS_PATH}: no alert list")
    firing, pending = [], 0
    critical = False
    for alert in alerts:
        if not isinstance(alert, dict):
            continue
        labels = alert.get("labels") if isinstance(alert.get("labels"), dict) else {}
        assert isinstance(labels, dict)
        if alert.get("state") == "pending":
            pending += 1
        if alert.get("state") != "firing":
            continue
        critical = critical or labels.get("severity") == "critical"
        where = ", ".join(
            str(labels[k]) for k in ("server", "openwebui", "instance", "host") if k in labels
        )
        firing.append(f"{labels.get('alertname', '?')} ({where})" if where else "?")
    later = f"; {pending} pending" if pending else ""
    if not firing:
        return Outcome(State.OK, f"no alert firing{later}")
    state = State.DOWN if critical else State.DEGRADED
    return Outcome(state, f"{len(firing)} firing: {'; '.join(sorted(firing))}{later}")


def alerts_probe(address: str, port: int, tls: ssl.SSLContext) -> Probe:
    """The alerts the fleet's Prometheus holds, over HTTPS verified with the fleet CA."""

    def run(timeout: float, dial: Dial = direct) -> Outcome:
        answer = http_get(address, port, ALERTS_PATH, timeout, tls=tls, dial=dial)
        if answer.status != 200:
            return Outcome(State.DOWN, f"GET {ALERTS_PATH}: HTTP {answer.status}")
        return firing_outcome(_json_body(answer.body))

    return run


def missing_secret(ref: SecretRef, secrets_file: Path) -> Probe:
    def run(timeout: float, dial: Dial = direct) -> Outcome:
        return Outcome(
            State.AUTH_FAILED, f"no {ref.name} in {secrets_file}: render the blueprint first"
        )

    return run


def no_fleet_ca(detail: str) -> Probe:
    """A TLS service's probe without a CA to verify it by: never dialled in plain text."""

    def run(timeout: float, dial: Dial = direct) -> Outcome:
        return Outcome(State.AUTH_FAILED, detail)

    return run


def fleet_tls(fleet_ca: str | None) -> tuple[ssl.SSLContext | None, str]:
    """The client context that trusts the fleet CA alone, or None and why there is none."""
    if not fleet_ca:
        return None, "no fleet CA: render the blueprint first"
    try:
        return tls_context(ca_pem=fleet_ca), ""
    except (ssl.SSLError, ValueError):
        return None, "the fleet CA cannot be loaded: restore the CA file from backup"


def expiry_outcome(not_after: datetime.date, today: datetime.date, renew: str) -> Outcome:
    """Ok while more than CERTIFICATE_WARN_DAYS are left; ``renew`` says what to do."""
    days = (not_after - today).days
    if days < 0:
        return Outcome(State.DOWN, f"expired on {not_after.isoformat()}: {renew}")
    if days < CERTIFICATE_WARN_DAYS:
        return Outcome(
            State.DEGRADED, f"expires on {not_after.isoformat()}, in {days} days: {renew}"
        )
    return Outcome(State.OK, f"valid until {not_after.isoformat()} ({days} days)")


def certificate_probe(
    host: str,
    address: str,
    port: int,
    issued: Issued,
    today: datetime.date,
    tls: ssl.SSLContext | None,
    *,
    postgres: bool,
) -> Probe:
    """The certificate ``host`` serves at ``address:port`` (not dialled when ``port`` is 0):
    the one the CA file holds for it, and how long it has left."""
    renew = f"render (it issues a new one), then replace {host}"

    def run(timeout: float, dial: Dial = direct) -> Outcome:
        if port:
            if tls is None:
                return Outcome(State.AUTH_FAILED, "no fleet CA: render the blueprint first")
            served = served_certificate(
                address, port, timeout, tls=tls, server_name=address, postgres=postgres, dial=dial
            )
            if served != ssl.PEM_cert_to_DER_cert(issued.cert):
                return Outcome(
                    State.DEGRADED,
                    f"serves another certificate than the CA file holds: replace {host} "
                    "to put the one from the last render in service",
                )
        return expiry_outcome(issued.not_after, today, renew)

    return run


METRICS_PATH = "/metrics"
# A sample's value in the Prometheus text format (no NaN or infinity: a generation is neither).
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _after_labels(rest: str) -> str:
    """What follows a sample's label set (``rest`` starts with its "{"); label values are
    quoted and may hold "}" and escaped quotes."""
    quoted = escaped = False
    for i, c in enumerate(rest):
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif c == "}" and not quoted:
            return rest[i + 1 :]
    raise ValueError(f"{SEED_METRIC}: its labels do not end")


def seed_generation(text: str) -> int | None:
    """The seed generation in a node exporter's /metrics (the Prometheus text format): the value
    of its `owuibuild_seed_generation` samples, None when it has none. Samples that disagree, or
    a value that is not a whole number of at least 0, raise ValueError."""
    found: set[int] = set()
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith(SEED_METRIC):
            continue  # comments (# HELP, # TYPE) and every other metric
        rest = line[len(SEED_METRIC) :]
        if rest.startswith("{"):
            rest = _after_labels(rest)
        elif rest and rest[0] not in " \t":
            continue  # another metric whose name starts with ours
        words = rest.split()  # the value, then an optional timestamp
        if not words:
            raise ValueError(f"{SEED_METRIC} has no value")
        value = float(words[0]) if _NUMBER.fullmatch(words[0]) else -1.0
        if value < 0 or not value.is_integer():
            raise ValueError(f"{SEED_METRIC} is {words[0][:20]!r}, not a generation")
        found.add(int(value))
    if len(found) > 1:
        listed = ", ".join(str(g) for g in sorted(found))
        raise ValueError(f"{SEED_METRIC} has several values ({listed})")
    return found.pop() if found else None


def generation_outcome(
    host: str, running: int | None, rendered: int | None, cloud: str | None = None
) -> Outcome:
    """What a host's reported seed generation (``running``, None when it reports none) says
    against the render's latest for it (``rendered``, None when the secrets file has no record).
    ``cloud`` names the platform when a running host there takes no new seed."""
    if rendered is None:
        runs = f"runs generation {running}" if running is not None else "reports no generation"
        return Outcome(
            State.DEGRADED,
            f"{runs}, the secrets file records none for {host}: render the blueprint with the "
            "secrets file that made its seed",
        )
    if running is None:
        return Outcome(
            State.DEGRADED,
            "no seed generation reported: a host booted before owuibuild wrote one (or "
            f"{exporters_section.SEED_METRICS} is gone); the render is at {rendered}: "
            f"replace {host} to run it",
        )
    if running == rendered:
        return Outcome(State.OK, f"generation {running}")
    if running > rendered:
        return Outcome(
            State.DEGRADED,
            f"runs generation {running}, newer than the render's {rendered}: the secrets file "
            "is older than the one that rendered its seed; restore the latest from backup",
        )
    remedy = (
        f"put its new seed.iso in its CD-ROM drive (live) or replace {host}"
        if cloud is None
        else f"replace {host} (a running {cloud} host takes no new seed)"
    )
    return Outcome(
        State.DEGRADED, f"runs generation {running}, the render is at {rendered}: {remedy}"
    )


def seed_probe(
    host: str,
    address: str,
    port: int,
    rendered: int | None,
    tls: ssl.SSLContext,
    cloud: str | None = None,
) -> Probe:
    """The seed generation ``host`` reports on its node exporter (HTTPS, verified with the fleet
    CA against ``address``), against the render's latest (``rendered``)."""

    def run(timeout: float, dial: Dial = direct) -> Outcome:
        answer = http_get(
            address,
            port,
            METRICS_PATH,
            timeout,
            {"Accept": "text/plain; version=0.0.4"},
            tls=tls,
            server_name=address,
            dial=dial,
        )
        if answer.status != 200:
            return Outcome(State.DOWN, f"GET {METRICS_PATH}: HTTP {answer.status}")
        try:
            running = seed_generation(answer.body.decode("utf-8", "replace"))
        except ValueError as exc:
            return Outcome(State.DEGRADED, f"GET {METRICS_PATH}: {exc}")
        return generation_outcome(host, running, rendered, cloud)

    return run


# -- the probes a plan implies ----------------------------------------------------------------------


def postgres_refused_hint(plan: Plan) -> str:
    """Why the PostgreSQL host may refuse connections: its unit is down, most surprisingly
    because the major-version guard found a data volume made by another major."""
    major = plan.fleet.shared.postgres.version
    unit = postgres_section.unit_name(major)
    return (
        f"PostgreSQL is not listening on {plan.postgres_host.name}. If the host was moved to a "
        f"new release, {unit} refuses to start on a data volume that holds only a cluster of "
        f"another major (its guard {postgres_section.GUARD_SCRIPT}); see "
        f"`systemctl status {unit}` there and the README's section "
        f'"{postgres_section.UPGRADE_SECTION}"'
    )


def pg_hba_hint(plan: Plan, i: InstancePlan) -> str:
    """Why PostgreSQL may turn an instance's login away: pg_hba admits its role from one
    address only, the one its connections come from (`InstancePlan.source_network`)."""
    source = i.source_network(plan.postgres_host).network_address
    if i.host == plan.postgres_host:
        # Its container's own address: no probe from outside that container can log in.
        return (
            f"pg_hba admits {i.db_role} only from its container ({source}), not from "
            f"{i.host.name} itself: the openwebui-db row asks from inside the instance"
        )
    return (
        f"pg_hba admits {i.db_role} only from {i.host.name} ({source}): run status there, "
        "or with --via ssh"
    )


def plan_checks(
    plan: Plan,
    secrets: Mapping[str, str],
    secrets_file: Path,
    *,
    fleet_ca: str | None,
    pki: FleetPKI | None = None,
    today: datetime.date | None = None,
    generations: Mapping[str, int] | None = None,
) -> list[Check]:
    """Every probe for the fleet, in table order: shared services, then each instance's.

    ``fleet_ca`` is the fleet CA's certificate (PEM), the only one PostgreSQL's and Redis's
    certificates are verified with; without it (or with one that cannot be loaded) their rows
    say so and nothing is dialled. With ``pki`` (the CA file) the certificate rows follow:
    each one's end date against ``today``. With ``generations`` (host name -> the seed
    generation the secrets file records) and monitoring, one seed row per host comes last.

    Each check's ``via`` is the host the fleet admits its traffic from: an instance's checks
    (its database login, its Redis login, its /health) come from its own host, a shared
    service's from the host that runs it (which dials its own address).
    """
    tls, no_tls = fleet_tls(fleet_ca)

    def with_secret(ref: SecretRef, make: Callable[[str], Probe]) -> Probe:
        value = secrets.get(ref.name)
        return make(value) if value is not None else missing_secret(ref, secrets_file)

    def with_tls(ref: SecretRef, make: Callable[[str, ssl.SSLContext], Probe]) -> Probe:
        if tls is None:
            return with_secret(ref, lambda value: no_fleet_ca(no_tls))
        return with_secret(ref, lambda value: make(value, tls))

    # one row per node: every Ollama node and every Qdrant node is probed
    checks = [
        Check(
            "ollama",
            None,
            host.name,
            str(host.address),
            OLLAMA_PORT,
            ollama_probe(str(host.address), OLLAMA_PORT, plan.ollama_models, tls)
            if tls is not None
            else no_fleet_ca(no_tls),
            via=host,
        )
        for host in plan.ollama_hosts
    ]

    def qdrant_check(host: Host) -> Check:
        address = str(host.address)
        return Check(
            "qdrant",
            None,
            host.name,
            address,
            QDRANT_PORT,
            with_tls(
                plan.qdrant_api_key,
                lambda key, tls: qdrant_probe(address, QDRANT_PORT, key, tls),
            ),
            via=host,
        )

    checks += [qdrant_check(h) for h in plan.qdrant_hosts]
    pg_address = str(plan.postgres_host.address)
    pg_host = plan.postgres_host.name
    pg_hint = postgres_refused_hint(plan)

    # Both verify the certificate against the planned address, which it names.
    def postgres(i: InstancePlan) -> Check:
        def make(password: str, tls: ssl.SSLContext) -> Probe:
            def run(timeout: float, dial: Dial = direct) -> Outcome:
                return pg_login(
                    pg_address,
                    POSTGRES_PORT,
                    i.db_role,
                    i.db_name,
                    password,
                    timeout,
                    tls=tls,
                    server_name=pg_address,
                    dial=dial,
                )

            return run

        return Check(
            "postgresql",
            i.name,
            pg_host,
            pg_address,
            POSTGRES_PORT,
            with_tls(i.db_password, make),
            pg_hint,
            via=i.host,
            turned_away_hint=pg_hba_hint(plan, i),
        )

    def redis(i: InstancePlan) -> Check:
        address = str(i.redis_address)

        def make(password: str, tls: ssl.SSLContext) -> Probe:
            def run(timeout: float, dial: Dial = direct) -> Outcome:
                return redis_ping(
                    address,
                    i.redis_port,
                    i.redis_user,
                    password,
                    timeout,
                    tls=tls,
                    server_name=address,
                    dial=dial,
                )

            return run

        return Check(
            "redis",
            i.name,
            plan.redis_host.name,
            address,
            i.redis_port,
            with_tls(i.redis_password, make),
            via=i.host,
        )

    door = plan.front_door
    # A front door's certificates are the fleet CA's (tls: internal) or a public ACME CA's.
    door_tls = (
        None if door is None else tls if door.tls == "internal" else ssl.create_default_context()
    )

    def webui(i: InstancePlan, service: str, path: str) -> Check:
        address = str(i.host.address)
        if door is None:
            probe = openwebui_probe(address, i.port, path)
            return Check(service, i.name, i.host.name, address, i.port, probe, via=i.host)
        # Through the front door, as a browser asks it: the instance's own port is on loopback.
        probe = (
            openwebui_probe(address, HTTPS_PORT, path, tls=door_tls, server_name=i.server_name)
            if door_tls is not None
            else no_fleet_ca(no_tls)
        )
        return Check(service, i.name, i.host.name, address, HTTPS_PORT, probe, via=i.host)

    checks += [postgres(i) for i in plan.instances]
    checks += [redis(i) for i in plan.instances]
    checks += [webui(i, "openwebui", "/health") for i in plan.instances]
    checks += [webui(i, "openwebui-db", "/health/db") for i in plan.instances]
    watch = plan.monitoring
    if watch is not None:
        # The alerts Prometheus holds, asked on the monitoring host's private address (the
        # firewall admits admin.allow_from there; --via ssh asks on the host itself).
        address = str(watch.host.address)
        checks.append(
            Check(
                "alerts",
                None,
                watch.host.name,
                address,
                PROMETHEUS_PORT,
                alerts_probe(address, PROMETHEUS_PORT, tls) if tls else no_fleet_ca(no_tls),
                refused_hint="Prometheus (owui-prometheus.service) does not listen: see its "
                "journal on the monitoring host",
                via=watch.host,
            )
        )
    if pki is not None:
        checks += certificate_checks(
            plan, pki, today or datetime.datetime.now(datetime.UTC).date(), tls
        )
    if generations is not None:
        checks += seed_checks(plan, generations, tls, no_tls)
    return checks


def certificate_checks(
    plan: Plan, pki: FleetPKI, today: datetime.date, tls: ssl.SSLContext | None
) -> list[Check]:
    """The fleet CA's expiry, and each service host's certificate as it serves it: where
    PostgreSQL runs, through its STARTTLS; else on its first Redis server; else, with
    monitoring, on its node exporter. A host that serves no TLS service is checked in the CA
    file only."""
    first_redis = {plan.redis_host.name: plan.redis_servers[0].port} if plan.redis_servers else {}
    exporter = NODE_EXPORTER_PORT if plan.monitoring is not None else 0
    checks = [
        Check(
            "certificate",
            "fleet CA",
            "-",
            "-",
            0,
            lambda t, dial=direct: expiry_outcome(
                pki.ca.not_after,
                today,
                "make a new CA (delete the CA file), render, then replace every host",
            ),
        )
    ]
    for host in plan.hosts:
        if host.name not in plan.certificate_hosts:
            continue
        issued = pki.hosts[host.name]
        address = plan.certificate_hosts[host.name]
        on_postgres = "postgres" in host.services
        port = POSTGRES_PORT if on_postgres else first_redis.get(host.name, exporter)
        probe = certificate_probe(
            host.name, address, port, issued, today, tls, postgres=on_postgres
        )
        via = host.host if port else None  # a certificate in the CA file only is not dialled
        checks.append(Check("certificate", None, host.name, address, port, probe, via=via))
    return checks


def seed_checks(
    plan: Plan,
    generations: Mapping[str, int],
    tls: ssl.SSLContext | None,
    no_tls: str = "no fleet CA: render the blueprint first",
) -> list[Check]:
    """With monitoring, each host's seed generation as its node exporter reports it, against
    the one the secrets file records (``generations``); without monitoring, none. The exporter
    is dialled as the certificate rows dial it: HTTPS on the host's planned address, verified
    with the fleet CA (``tls``; without it, nothing is dialled), from the host itself with
    --via ssh."""
    if plan.monitoring is None:
        return []
    cloud = None if plan.seeds_swappable else plan.fleet.platform
    unit = exporters_section.NODE.unit_name
    checks = []
    for host in plan.hosts:
        address = plan.certificate_hosts[host.name]  # with monitoring, every host's
        probe = (
            seed_probe(
                host.name, address, NODE_EXPORTER_PORT, generations.get(host.name), tls, cloud
            )
            if tls is not None
            else no_fleet_ca(no_tls)
        )
        checks.append(
            Check(
                "seed",
                None,
                host.name,
                address,
                NODE_EXPORTER_PORT,
                probe,
                refused_hint=f"the node exporter ({unit}) does not listen on {host.name}: see "
                "its journal there",
                via=host.host,
            )
        )
    return checks


def select(checks: Sequence[Check], only: Sequence[str]) -> list[Check]:
    if not only:
        return list(checks)
    return [c for c in checks if c.service in only or c.instance in only]


# -- running them -----------------------------------------------------------------------------------


def _attempt(
    check: Check, timeout: float, jumps: Jumps | None, no_ssh: Mapping[Host, Outcome]
) -> Outcome:
    """One check: from this machine, or with ``jumps`` through its ``via`` host, where a
    failure of ssh (``no_ssh``: the hosts it could not log in to) is the row's outcome."""
    if jumps is None or check.via is None:
        return guarded(lambda: check.run(timeout))
    if check.via in no_ssh:
        return no_ssh[check.via]
    deadline = Deadline(timeout)
    with jumps.route(check.via) as route:
        outcome = guarded(lambda: check.run(timeout, route.dial))
        return guarded(lambda: route.explain(outcome, deadline))


def _timed(
    check: Check, timeout: float, jumps: Jumps | None, no_ssh: Mapping[Host, Outcome]
) -> tuple[Outcome, float]:
    start = time.monotonic()
    outcome = _attempt(check, timeout, jumps, no_ssh)
    return outcome, (time.monotonic() - start) * 1000


def _hint(check: Check, outcome: Outcome, detail: str) -> str:
    if outcome.hint:
        return outcome.hint
    if outcome.state is not State.REFUSED:
        return ""
    return check.refused_hint if detail == REFUSED_DETAIL else check.turned_away_hint


def run_checks(
    checks: Sequence[Check],
    timeout: float,
    secret_values: frozenset[str] = frozenset(),
    jumps: Jumps | None = None,
) -> list[Result]:
    """Run every check at once, each within ``timeout``; results in the order of ``checks``.

    With ``jumps`` each check that dials opens its connections on its ``via`` host, after
    one SSH master per such host was started (at once, within ``timeout``).
    """
    redact = tuple(sorted(secret_values, key=len, reverse=True))
    results: list[Result] = []
    if not checks:
        return results
    no_ssh = {} if jumps is None else jumps.connect(c.via for c in checks if c.via is not None)
    pool = ThreadPoolExecutor(max_workers=min(32, len(checks)), thread_name_prefix="probe")
    try:
        futures = [pool.submit(_timed, c, timeout, jumps, no_ssh) for c in checks]
        wait(futures, timeout=timeout + BACKSTOP_SECONDS)
        for check, future in zip(checks, futures, strict=True):
            if not future.done():
                outcome, ms = Outcome(State.TIMEOUT, "no answer within the timeout"), timeout * 1000
            elif future.exception() is not None:
                # A bug in a probe; its message might quote a server, so only the type is shown.
                exc = future.exception()
                outcome, ms = Outcome(State.DOWN, f"probe error: {type(exc).__name__}"), 0.0
            else:
                outcome, ms = future.result()
            detail = scrub(outcome.detail, redact)
            hint = scrub(_hint(check, outcome, detail), redact)
            results.append(Result(check, outcome.state, round(ms, 1), detail, hint))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return results


# -- output -----------------------------------------------------------------------------------------

COLUMNS = ("SERVICE", "INSTANCE", "HOST", "TARGET", "STATE", "LATENCY", "DETAIL")


def table_rows(results: Sequence[Result]) -> list[tuple[str, ...]]:
    return [
        (
            r.check.service,
            r.check.instance or "-",
            r.check.host,
            r.check.target,
            r.state.value,
            f"{r.latency_ms:.0f} ms",
            r.detail,
        )
        for r in results
    ]


def format_table(results: Sequence[Result]) -> str:
    rows = [COLUMNS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if i == COLUMNS.index("LATENCY") else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=False))
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def hint_lines(results: Sequence[Result]) -> list[str]:
    """Each distinct hint once, in table order, naming the rows it explains."""
    rows: dict[str, list[str]] = {}
    for r in results:
        if r.hint:
            rows.setdefault(r.hint, []).append(f"{r.check.service} {r.check.instance or '-'}")
    return [f"hint: {hint} (rows: {', '.join(names)})" for hint, names in rows.items()]


def summary(results: Sequence[Result]) -> dict[str, int]:
    counts = Counter(r.state.value for r in results)
    return {s.value: counts[s.value] for s in State if counts[s.value]}


def summary_line(fleet: str, results: Sequence[Result]) -> str:
    counts = summary(results)
    ok = counts.get(State.OK.value, 0)
    others = ", ".join(f"{n} {s}" for s, n in counts.items() if s != State.OK.value)
    return f"{fleet}: {ok} of {len(results)} probes ok" + (f"; {others}" if others else "")


def format_json(fleet: str, timeout: float, results: Sequence[Result]) -> str:
    doc = {
        "fleet": fleet,
        "ok": all(r.state is State.OK for r in results),
        "timeout_s": timeout,
        "summary": summary(results),
        "checks": [r.as_dict() for r in results],
    }
    return json.dumps(doc, indent=2)


# -- the command ------------------------------------------------------------------------------------


def ssh_client(
    via: str, *, ssh_user: str | None, ssh_key: Path | None, ssh_config: Path | None
) -> str | None:
    """The ssh program that --via ssh runs (None for direct), after checking the --ssh-*
    options; a usage error ends the command."""
    given = [
        name
        for name, value in (
            ("--ssh-user", ssh_user),
            ("--ssh-key", ssh_key),
            ("--ssh-config", ssh_config),
        )
        if value is not None
    ]
    if via != "ssh":
        if given:
            fail(f"{', '.join(given)} needs --via ssh", EXIT_USAGE, "add --via ssh, or drop it")
        return None
    program = shutil.which("ssh")
    if program is None:
        fail(
            "--via ssh: no ssh client on this machine",
            EXIT_USAGE,
            "install OpenSSH's client (Debian: openssh-client), or run status on a host of "
            "the fleet without --via",
        )
    if ssh_user is not None and not SSH_USER.fullmatch(ssh_user):
        fail(f"--ssh-user {ssh_user!r}: not a user name", EXIT_USAGE, "e.g. --ssh-user ops")
    if ssh_key is not None and ssh_key.stat().st_mode & 0o077:
        fail(
            f"--ssh-key {ssh_key}: others can read it, and ssh refuses such a key",
            EXIT_USAGE,
            f"chmod 600 {ssh_key}",
        )
    return program


@click.command()
@click.argument("blueprint", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="text: one table for people; json: the same rows for machines.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=300),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="S",
    help="Seconds each probe may take in all (connect, log in, answer).",
)
@click.option(
    "--only",
    multiple=True,
    metavar="NAME",
    help=f"Probe only this service ({', '.join(SERVICES)}) or instance; repeatable.",
)
@click.option(
    "--via",
    type=click.Choice(["direct", "ssh"]),
    default="direct",
    show_default=True,
    help="direct: dial every service from this machine. ssh: open each probe's connection on "
    "the host the fleet admits it from (an instance's own host; a shared service's host), "
    "with `ssh -W` as the admin user, one SSH connection per host.",
)
@click.option(
    "--ssh-user",
    metavar="NAME",
    help="With --via ssh: log in as NAME instead of the blueprint's admin.user.",
)
@click.option(
    "--ssh-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="PATH",
    help="With --via ssh: this private key only (IdentitiesOnly); default: ssh's agent and "
    "configuration.",
)
@click.option(
    "--ssh-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="PATH",
    help="With --via ssh: ssh's configuration file (ssh -F) instead of the user's, e.g. to "
    "map a host's address to another HostName, Port or ProxyJump.",
)
def status(
    blueprint: Path,
    fmt: str,
    timeout: float,
    only: tuple[str, ...],
    via: str,
    ssh_user: str | None,
    ssh_key: Path | None,
    ssh_config: Path | None,
) -> None:
    """Probe every service of BLUEPRINT's running fleet at once and print one table: Ollama's
    models, Qdrant's collections with the API key, a PostgreSQL login of each instance's role
    to its own database, each instance's Redis PING as its ACL user (both over TLS, verified
    with the fleet CA), each instance's /health and /health/db (through its host's front
    door when the blueprint has one: HTTPS to the host's address with the instance's host
    name, verified with the fleet CA or, for ACME, the system's CAs), and the certificate each
    service host serves with its end date (degraded under 14 days, or when it is not the one
    the CA file holds) and the fleet CA's.

    States: ok, down, refused, auth-failed, timeout, degraded. Exit 0 when every probe is ok,
    1 otherwise. Where nothing listens, a hint after the table (JSON: "hint") says what may
    keep the service down, e.g. PostgreSQL's major-version guard after a release change.
    Credentials come from <blueprint>.secrets.yml and are never printed; the fleet CA from
    <blueprint>.tls.secrets.yml. Probes dial from this machine: the fleet's firewall and
    pg_hba admit only instance hosts to the shared services, so elsewhere expect timeout and
    refused. With --via ssh they run from the fleet's own hosts instead, through SSH (the
    admin's key, host keys checked as your ssh configuration says, never a prompt, no secret
    on ssh's command line); a failure of ssh is the row's detail, with a hint. An instance on
    the PostgreSQL host logs in from its container only, so its postgresql row is refused
    from the host; its openwebui-db row asks from inside. With monitoring, an alerts row
    lists the alerts firing in the fleet's Prometheus (down for a critical one, degraded for
    a warning), and a seed row per host compares the seed generation its node exporter
    reports with the render's latest in the secrets file (degraded when it is older, newer or
    not reported); without monitoring there are no seed rows.

    \b
    Example:
      owuibuild status fleet.yml
      owuibuild status fleet.yml --only postgresql --only redis --timeout 2
      owuibuild status fleet.yml --only webui3 --format json
      owuibuild status fleet.yml --via ssh --ssh-key ~/.ssh/fleet_ed25519
    """
    from . import pki
    from . import secrets as secret_store
    from .allocation import allocate
    from .commands import report, require_file
    from .diagnostics import has_errors
    from .pipeline import check
    from .plan import make_plan

    ssh_program = ssh_client(via, ssh_user=ssh_user, ssh_key=ssh_key, ssh_config=ssh_config)
    require_file(blueprint)
    checked = check(blueprint)
    if not checked.ok or checked.fleet is None:
        errors = [d for d in checked.diagnostics if d.is_error] or checked.diagnostics
        report(errors, fmt, checked.source.lines if checked.source else [])
        sys.exit(EXIT_INVALID)
    secrets_file = secret_store.secrets_path(blueprint)
    stored_secrets = secret_store.open_store(secrets_file)
    values, problems = stored_secrets.values, stored_secrets.diagnostics
    if problems or has_errors(problems):
        report(problems, "text", [])
        sys.exit(EXIT_USAGE)
    # The hosts run what the render gave each instance of the shared ranges: ask the records.
    allocations, problems = allocate(checked.fleet, stored_secrets.allocations)
    if problems and checked.source is not None:
        report([checked.source.locate(d) for d in problems], "text", checked.source.lines)
        sys.exit(EXIT_INVALID)
    plan = make_plan(checked.fleet, allocations)
    if values is None:
        fail(
            f"no secrets file at {secrets_file}",
            EXIT_USAGE,
            f"status logs in with the credentials that 'owuibuild render {blueprint}' "
            "generated; keep that file next to the blueprint",
        )

    tls_file = pki.tls_path(blueprint)
    today = datetime.datetime.now(datetime.UTC).date()
    stored, tls_problems = pki.read(tls_file, today)
    if tls_problems:
        report(tls_problems, "text", [])
        sys.exit(EXIT_USAGE)
    if stored is None:
        fail(
            f"no CA file at {tls_file}",
            EXIT_USAGE,
            f"status verifies PostgreSQL and Redis with the fleet CA that 'owuibuild render "
            f"{blueprint}' made; keep that file next to the blueprint",
        )
    secrets = secret_store.Secrets(values, pki=stored)

    names = {*SERVICES, *(i.name for i in plan.instances)}
    unknown = sorted(set(only) - names)
    if unknown:
        fail(
            f"--only {', '.join(unknown)}: not a service or instance of {plan.fleet.name}",
            EXIT_USAGE,
            f"choose from: {', '.join([*SERVICES, *(i.name for i in plan.instances)])}",
        )

    checks = select(
        plan_checks(
            plan,
            values,
            secrets_file,
            fleet_ca=secrets.tls.ca_cert,
            pki=secrets.tls,
            today=today,
            generations={host: r.generation for host, r in stored_secrets.seeds.items()},
        ),
        only,
    )
    secret_values = frozenset(values.values())
    if ssh_program is None:
        results = run_checks(checks, timeout, secret_values)
    else:
        options = SshOptions(ssh_user or plan.fleet.admin.user, ssh_key, ssh_config, ssh_program)
        with Jumps(options, timeout) as jumps:
            results = run_checks(checks, timeout, secret_values, jumps)
    if fmt == "json":
        click.echo(format_json(plan.fleet.name, timeout, results))
    else:
        click.echo(format_table(results))
        click.echo()
        click.echo(summary_line(plan.fleet.name, results))
        hints = hint_lines(results)
        if hints:
            click.echo()
            click.echo("\n".join(hints))
    sys.exit(EXIT_OK if all(r.state is State.OK for r in results) else EXIT_INVALID)
