"""Containers tier: a running Open WebUI instance rides out a restart of its PostgreSQL and Redis,
and a replacement of the host they run on, without a container restart.

A REAL Open WebUI 0.12.4 runs from its generated bundle against the REAL PostgreSQL and Redis of
the shared-host container that tests/containers/test_instances_live.py starts from the generated
configuration (its fixture and helpers are imported, not copied; see that module for the TEST
DOUBLES of Qdrant and Ollama). Its admin signs in (the session used throughout) and makes a chat.

While a poller asks the instance for the admin's chats twice a second with that session, the
shared services are taken away and brought back:

- restarted: PostgreSQL restarts (pg_ctl restart, fast) and the instance's Redis server is
  stopped and started again: the instance's connections are closed by the server;
- replaced: the shared host goes silent (a firewall in the shared container's own network
  namespace drops every packet between it and the test network), PostgreSQL and Redis stop, and
  after a while it answers again at the same address with both started afresh, as a new VM with
  the same data volume would. Nothing closes the connections the instance held: while the host
  is away they are silent (only the bundle's connect timeouts, keep-alive probes and
  retransmission bound end the instance's waits), and once it is back a packet on one of them
  is answered with a reset, as the new host's kernel, which knows none of them, would. The
  instance's Redis listeners are idle for long enough that their connections are given up with
  ETIMEDOUT while the host is away: the case that stopped Open WebUI 0.12.4 for good before the
  bundle's Redis health check (see owuibuild.bundle); the test checks that it happened.

Each time: the instance answers again by itself, with the same container (same id, start time,
process and no restart); the session still works and the chat is there; Socket.IO's listener is
subscribed to the instance's Redis again; and the app's own Redis use works again (signing a
second session out revokes it in Redis, and the instance then refuses that session). The window
of failed requests is printed. Traffic stays on the Docker network this test creates and on
127.0.0.1.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import require_tool
from infra.recovery import record
from test_instances_live import (
    Fleet,
    Running,
    http,
    live_fleet,
    make_chat,
    run,
    sign_in_as_admin,
)

pytestmark = pytest.mark.containers

SUBNET = "10.213.14.0/24"
GATEWAY = "10.213.14.1"
BLUEPRINT = """\
apiVersion: owuibuild/v1
name: ridetest
os: {distro: debian-12, timezone: UTC}
admin:
  user: ops
  ssh_authorized_keys: [ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeTestKeyOnlyNotARealKey00000000000000000 ops@laptop]
  allow_from: [10.213.14.0/24]
network: {cidr: 10.213.14.0/24, gateway: 10.213.14.1, dns: [10.213.14.1]}
shared:
  host: {name: shared, address: 10.213.14.24, memory_gb: 32, data_volume: {label: owui-data}}
  postgres: {max_connections: 100}
hosts:
  - {name: web-a, address: 10.213.14.30, memory_gb: 8, data_volume: {label: owui-data}}
instances:
  - {name: rider, host: web-a, port: 3001, admin: {email: ada@rider.test, name: Ada}}
"""
CHAT_TITLE = "Kept across the shared host's restarts"
PGBIN = "/usr/lib/postgresql/15/bin"
PGDATA = "/srv/pgdata"
# How long the replaced host stays away: longer than the keep-alive's idle time, so the
# instance's idle connections (Socket.IO's listener) must be found dead by its probes.
AWAY_SECONDS = 40
# Before it goes away, the instance's Redis listeners (subscribed again by the restart test)
# are left idle this long: with the 40 s away that is more than the 45 s of silence after which
# redis-py's own keep-alive (30 s, then 3 probes 5 s apart) gives a connection up.
QUIET_SECONDS = 10
# The listeners' error when their health check writes to a connection given up that way.
GIVEN_UP = "Timeout writing to socket"
# After the services answer again: a closed connection is retried at once; a silent one is
# given up within the keep-alive's minute (see owuibuild.bundle); Socket.IO then backs off.
RECOVERY_SECONDS = {"restart": 30, "replacement": 150}


@dataclass
class Session:
    running: Running
    token: str
    chat_id: str


@dataclass
class Poller:
    """Asks for the session's chats twice a second: (monotonic time, answered with the chat)."""

    session: Session
    results: list[tuple[float, bool]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def check(self) -> bool:
        try:
            status, chats = http(
                "GET", f"{self.session.running.url}/api/v1/chats/", token=self.session.token
            )
        except OSError:
            return False
        return status == 200 and any(c.get("id") == self.session.chat_id for c in chats or [])

    def loop(self) -> None:
        while not self.stop.is_set():
            self.results.append((time.monotonic(), self.check()))
            self.stop.wait(0.5)

    def failed_window(self) -> tuple[int, float]:
        """The failed checks, and the seconds from the first failure to the next success."""
        failed = [t for t, ok in self.results if not ok]
        if not failed:
            return 0, 0.0
        after = [t for t, ok in self.results if ok and t > failed[0]]
        end = after[0] if after else self.results[-1][0]
        return len(failed), end - failed[0]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with live_fleet(BLUEPRINT, SUBNET, GATEWAY, tmp_path_factory.mktemp("ride")) as f:
        yield f


@pytest.fixture(scope="module")
def session(fleet: Fleet) -> Session:
    (running,) = fleet.instances.values()
    status, admin = sign_in_as_admin(fleet, running)
    assert status == 200 and admin["token"], status
    chat_id = make_chat(running, admin["token"], CHAT_TITLE, "still here?")
    return Session(running, admin["token"], chat_id)


def container(running: Running) -> dict[str, Any]:
    (cid,) = running.compose("ps", "--quiet").stdout.split()
    fmt = "{{.Id}} {{.State.StartedAt}} {{.State.Pid}} {{.RestartCount}} {{.State.Running}}"
    ident, started, pid, restarts, up = run("docker", "inspect", "-f", fmt, cid).stdout.split()
    return {"id": ident, "started": started, "pid": pid, "restarts": restarts, "running": up}


def redis_server(running: Running) -> str:
    """The name of the instance's Redis server in the shared container (its .conf and .pid)."""
    return f"redis-{running.inst.name}"


def stop_postgres(fleet: Fleet) -> None:
    fleet.in_shared("su", "postgres", "-c", f"{PGBIN}/pg_ctl -D {PGDATA} -w -m fast stop")


def start_postgres(fleet: Fleet) -> None:
    # pg_ctl start reads no postmaster.opts (restart does): the start script's options again.
    address = fleet.plan.shared.host.address
    fleet.in_shared(
        "su", "postgres", "-c",
        f"{PGBIN}/pg_ctl -D {PGDATA} -l {PGDATA}/postgres.log -w start "
        f"-o '-c listen_addresses={address} -c port=5432 -c max_connections=100'",
    )  # fmt: skip


def stop_redis(fleet: Fleet, name: str) -> None:
    """SIGTERM, as systemd stops it (Redis saves its data first), then wait for it to exit.
    The container's first process (sleep) reaps no child: an exited server stays a zombie."""
    fleet.in_shared(
        "sh", "-c", f'pid=$(cat /srv/{name}.pid); kill "$pid"; '
        f'while [ -e /proc/$pid ] && [ "$(cut -d" " -f3 /proc/$pid/stat)" != Z ]; do sleep 0.1; done',
    )  # fmt: skip


def start_redis(fleet: Fleet, name: str) -> None:
    fleet.in_shared(
        "redis-server", f"/test/{name}.conf", "--pidfile", f"/srv/{name}.pid",
        "--supervised", "no", "--daemonize", "yes", "--logfile", f"/srv/{name}.log",
    )  # fmt: skip


# The shared container's own firewall (nft in its network namespace, entered from this machine):
# AWAY drops all traffic with the test network (a host that is down). REPLACED answers a packet
# of a flow that existed before (its conntrack picks them up unmarked) with a reset and sends
# nothing on one, as the new host's kernel, which knows none of them, would; new flows pass.
# Neither touches the host's traffic to itself (over lo: the test's own redis-cli and psql).
SILENCE_TABLE = "owuitest_silence"
AWAY = f"""\
table inet {SILENCE_TABLE} {{
  chain input {{ type filter hook input priority -10; iif lo accept; ip saddr {SUBNET} drop; }}
  chain output {{ type filter hook output priority -10; oif lo accept; ip daddr {SUBNET} drop; }}
}}
"""
REPLACED = f"""\
table inet {SILENCE_TABLE} {{
  chain input {{
    type filter hook input priority -10;
    iif lo accept
    ct state new tcp flags & (syn | ack) == syn ct mark set 1
    ct mark 1 accept
    ip saddr {SUBNET} reject with tcp reset
  }}
  chain output {{
    type filter hook output priority -10;
    oif lo accept
    ct mark 1 accept
    # The resets above (they belong to the old flow's conntrack entry, so pass them here).
    tcp flags rst accept
    ip daddr {SUBNET} drop
  }}
}}
"""


def silence(fleet: Fleet, ruleset: str) -> None:
    """Replace the shared container's silencing table with ``ruleset`` (empty: none)."""
    pid = run("docker", "inspect", "-f", "{{.State.Pid}}", fleet.shared).stdout.strip()
    text = f"table inet {SILENCE_TABLE}\ndelete table inet {SILENCE_TABLE}\n{ruleset}"
    out = subprocess.run(["nsenter", "-t", pid, "-n", "nft", "-f", "-"], input=text,
                         capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr


def wait_until(what: str, ready: Callable[[], bool], seconds: float) -> float:
    """Seconds until ``ready()``; fails after ``seconds``."""
    start = time.monotonic()
    while not ready():
        if time.monotonic() - start > seconds:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.5)
    return time.monotonic() - start


def socketio_subscribed(fleet: Fleet, running: Running) -> bool:
    try:
        reply = fleet.redis(running.inst.name, "PUBSUB", "NUMSUB", "socketio").split()
    except AssertionError:
        return False
    return reply == ["socketio", "1"]


def assert_redis_in_use(fleet: Fleet, session: Session) -> None:
    """The app reads and writes its Redis again: a second session, signed out, is revoked
    there (under the instance's key prefix) and refused, while the first still works."""
    running = session.running
    status, other = sign_in_as_admin(fleet, running)
    assert status == 200, status
    status, _ = http("POST", f"{running.url}/api/v1/auths/signout", token=other["token"])
    assert status == 200, status
    revoked = fleet.redis(
        running.inst.name, "--scan", "--pattern", f"{running.inst.redis_key_prefix}:auth:token:*"
    ).split()
    assert len(revoked) >= 1, revoked
    assert http("GET", f"{running.url}/api/v1/auths/", token=other["token"])[0] == 401
    status, me = http("GET", f"{running.url}/api/v1/auths/", token=session.token)
    assert status == 200 and me["email"] == running.inst.instance.admin.email, (status, me)


def ride_out(fleet: Fleet, session: Session, kind: str, disrupt: Callable[[], None]) -> None:
    running = session.running
    before = container(running)
    assert socketio_subscribed(fleet, running)
    poller = Poller(session)
    thread = threading.Thread(target=poller.loop, daemon=True)
    thread.start()
    try:
        time.sleep(2)
        disrupt()
        back = time.monotonic()
        recovered = wait_until(f"the chats through the {kind}", poller.check,
                               RECOVERY_SECONDS[kind])  # fmt: skip
        subscribed = wait_until(
            f"Socket.IO's listener after the {kind}",
            lambda: socketio_subscribed(fleet, running),
            RECOVERY_SECONDS[kind],
        )
        time.sleep(2)
    finally:
        poller.stop.set()
        thread.join(10)
    failed, window = poller.failed_window()
    print(
        f"\n{kind}: {failed} failed checks of {len(poller.results)}, failing for {window:.1f} s; "
        f"answering {recovered:.1f} s and Socket.IO subscribed {subscribed:.1f} s after the "
        "services were back"
    )
    record(kind, failed=failed, checks=len(poller.results), window_s=window)
    assert poller.results[-1][1], poller.results[-5:]
    assert container(running) == before, "the instance's container was restarted"
    assert time.monotonic() - back < 2 * RECOVERY_SECONDS[kind]
    assert_redis_in_use(fleet, session)


def test_an_instance_rides_out_a_restart_of_postgres_and_redis(
    fleet: Fleet, session: Session
) -> None:
    name = redis_server(session.running)
    backends = fleet.psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE usename IS NOT NULL "
                          f"AND datname = '{session.running.inst.db_name}'")  # fmt: skip
    assert int(backends) >= 1, "the instance holds no database connection to lose"

    def restart() -> None:
        pg_ctl = f"{PGBIN}/pg_ctl -D {PGDATA} -l {PGDATA}/postgres.log -w -m fast restart"
        fleet.in_shared("su", "postgres", "-c", pg_ctl)
        stop_redis(fleet, name)
        start_redis(fleet, name)

    ride_out(fleet, session, "restart", restart)


def test_an_instance_rides_out_a_replacement_of_the_shared_host(
    fleet: Fleet, session: Session
) -> None:
    require_tool("nsenter", "nft")
    name = redis_server(session.running)

    since = ""

    def replace() -> None:
        nonlocal since
        time.sleep(QUIET_SECONDS)
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # The old host goes silent: nothing it does reaches the instance any more.
        silence(fleet, AWAY)
        stop_postgres(fleet)
        stop_redis(fleet, name)
        time.sleep(AWAY_SECONDS)
        # The new host: same address, same data, fresh processes that know no old connection.
        start_postgres(fleet)
        start_redis(fleet, name)
        silence(fleet, REPLACED)

    try:
        ride_out(fleet, session, "replacement", replace)
    finally:
        silence(fleet, "")
    logs = session.running.compose("logs", "--no-color", "--since", since, timeout=60).stdout
    given_up = logs.count(GIVEN_UP)
    print(f"replacement: {given_up} Redis listener errors {GIVEN_UP!r} while the host was away")
    assert given_up >= 1, "no Redis listener's connection was given up while the host was away"
