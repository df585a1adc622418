"""Unit tests of `owuibuild status --via ssh`: which host each check goes through, ssh's command
line (never a secret on it), the options, and what ssh's failures become.

Nothing here dials a fleet or runs OpenSSH: a stand-in `ssh` (a Python script written here)
records its command line and answers as ssh does, so the real socketpairs and processes of
`jumphost` run. The real sshd is in tests/services/test_status_sshd.py.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import socket
import stat
import sys
import tempfile
import threading
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from owuibuild import jumphost, status
from owuibuild.cli import cli
from owuibuild.jumphost import Jumps, SshOptions, ssh_outcome
from owuibuild.model import Host
from owuibuild.pipeline import compile_blueprint
from owuibuild.probes import REFUSED_DETAIL, Outcome, State, tls_context
from test_probes import make_pki

pytestmark = pytest.mark.unit

BLUEPRINTS = Path(__file__).resolve().parents[2] / "blueprints"

# What the stand-in says, by FAKE_SSH_MODE, as OpenSSH 9 says it:
#   refused  every forwarded connection: the jump host found nothing listening
#   mux      through a master, ssh keeps the reason to itself; without one it says it
#   denied   the master cannot log in
FAKE_SSH = """\
import json, os, sys
argv = sys.argv[1:]
with open(os.environ["FAKE_SSH_LOG"], "a") as log:
    log.write(json.dumps(argv) + "\\n")
mode = os.environ.get("FAKE_SSH_MODE", "refused")
if "-O" in argv:
    sys.exit(0)
if "-N" in argv:
    if mode == "denied":
        sys.stderr.write("ops@10.20.2.10: Permission denied (publickey).\\r\\n")
        sys.exit(255)
    sys.exit(0)
if "-W" in argv:
    if mode == "mux" and "ControlPath=none" not in argv:
        sys.stderr.write("Stdio forwarding request failed: Session open refused by peer\\r\\n")
    else:
        sys.stderr.write("channel 0: open failed: connect failed: Connection refused\\r\\n")
        sys.stderr.write("stdio forwarding failed\\r\\n")
    sys.exit(255)
sys.exit(2)
"""


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[], list[list[str]]]:
    """`ssh` on PATH is the stand-in; returns a reader of the command lines it was given."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "ssh"
    program.write_text(f"#!{sys.executable}\n{FAKE_SSH}")
    program.chmod(0o755)
    log = tmp_path / "ssh.log"
    log.write_text("")
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")

    def calls() -> list[list[str]]:
        return [json.loads(line) for line in log.read_text().splitlines()]

    return calls


# -- which host each check goes through -------------------------------------------------------------


def all_checks(rendered: Any, generations: dict[str, int] | None = None) -> list[Any]:
    """Every check status plans for a rendered example, with its CA and PKI."""
    return status.plan_checks(
        rendered.plan,
        rendered.secrets.values,
        Path("x.secrets.yml"),
        fleet_ca=rendered.secrets.tls.ca_cert,
        pki=rendered.secrets.tls,
        generations=generations or {},
    )


@pytest.mark.parametrize("example", ["multi-host.yml", "scale-out.yml", "homelab.yml"])
def test_each_check_goes_through_the_host_the_fleet_admits_it_from(
    render_example: Callable[[str], Any], example: str
) -> None:
    rendered = render_example(example)
    plan = rendered.plan
    checks = all_checks(rendered)
    hosts = {h.name: h.host for h in plan.hosts}
    instances = {i.name: i for i in plan.instances}
    assert ("seed" in {c.service for c in checks}) is (plan.monitoring is not None)
    for c in checks:
        if c.service in ("ollama", "qdrant", "alerts", "seed"):
            # a shared service (or a host's own exporter): from the host that runs it, to its
            # own address
            assert c.via == hosts[c.host] and c.address == str(c.via.address), c
        elif c.service == "certificate":
            assert c.via == (hosts[c.host] if c.port else None), c
        else:
            i = instances[c.instance]
            assert c.via == i.host, c  # an instance's checks: from its own Docker host
            if c.service == "postgresql":
                # pg_hba admits the role from there, unless the instance runs on the
                # PostgreSQL host, where only its container is admitted
                admitted = i.source_network(plan.postgres_host)
                assert (c.via.address in admitted) is (i.host != plan.postgres_host)


def test_a_turned_away_login_gets_the_pg_hba_hint(render_example: Callable[[str], Any]) -> None:
    homelab = render_example("homelab.yml").plan
    family = next(i for i in homelab.instances if i.name == "family")
    hint = status.pg_hba_hint(homelab, family)
    assert hint.startswith(
        f"pg_hba admits family only from its container ({family.container_address})"
    )
    assert "openwebui-db" in hint
    campus = render_example("multi-host.yml").plan
    math = next(i for i in campus.instances if i.name == "math")
    assert status.pg_hba_hint(campus, math) == (
        "pg_hba admits math only from web-a (10.20.2.10): run status there, or with --via ssh"
    )
    check = status.Check(
        "postgresql", "math", "ai-shared", "10.20.1.10", 5432,
        lambda t, dial=None: Outcome(State.REFUSED, "SQLSTATE 28000: pg_hba.conf rejects"),
        "nothing listens", turned_away_hint="pg_hba hint",
    )  # fmt: skip
    (result,) = status.run_checks([check], 1.0)
    assert result.hint == "pg_hba hint"


# -- ssh's command line -----------------------------------------------------------------------------

WEB_A = Host("web-a", IPv4Address("10.20.2.10"), 8, None)


def test_the_command_line_has_the_options_and_the_host_last(tmp_path: Path) -> None:
    key, config = tmp_path / "id_fleet", tmp_path / "ssh config"
    with Jumps(SshOptions("ops", key, config, "/usr/bin/ssh"), 4.2) as jumps:
        argv = jumps.argv(WEB_A, "-W", "10.20.1.10:5432")
        path = jumps.control_path(WEB_A)
        assert Path(path).parent == jumps.directory
        assert stat.S_IMODE(jumps.directory.stat().st_mode) == 0o700
    assert argv == [
        "/usr/bin/ssh", "-F", str(config),
        "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
        "-o", "ControlMaster=auto", "-o", f'ControlPath="{path}"', "-o", "ControlPersist=15s",
        "-i", str(key), "-o", "IdentitiesOnly=yes",
        "-W", "10.20.1.10:5432", "-l", "ops", "--", "10.20.2.10",
    ]  # fmt: skip
    assert not jumps.directory.exists()  # closed: the directory is gone
    assert not any("StrictHostKeyChecking" in a for a in argv)  # the user's config decides


def test_without_key_or_config_ssh_uses_its_own(tmp_path: Path) -> None:
    with Jumps(SshOptions("ops"), 0.5) as jumps:
        argv = jumps.argv(WEB_A, master=False)
    assert "-F" not in argv and "-i" not in argv and "IdentitiesOnly=yes" not in argv
    assert "ControlPath=none" in argv and "ConnectTimeout=1" in argv


def test_a_long_tmpdir_puts_the_sockets_under_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    long = tmp_path / ("x" * 90)
    long.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(long))
    directory = jumphost.control_directory()
    try:
        assert directory.parent == Path("/tmp")
        assert len(str(directory / "h999")) + 17 <= jumphost.SOCKET_PATH_MAX
        assert list(long.iterdir()) == []
    finally:
        directory.rmdir()


def test_ipv6_targets_are_bracketed() -> None:
    assert jumphost.target("fd00::5", 5432) == "[fd00::5]:5432"
    assert jumphost.target("10.0.5.24", 6379) == "10.0.5.24:6379"


@pytest.fixture
def campus(tmp_path: Path) -> Path:
    path = tmp_path / "campus.yml"
    shutil.copy(BLUEPRINTS / "multi-host.yml", path)
    assert compile_blueprint(path, seed_iso=False).ok
    return path


def secret_values(blueprint: Path) -> list[str]:
    from owuibuild import pki
    from owuibuild import secrets as store

    values, _ = store.read(store.secrets_path(blueprint))
    assert values
    found = [v for v in values.values() if len(v) >= 8]
    stored, _ = pki.read(pki.tls_path(blueprint), datetime.date.today())
    assert stored is not None
    found += [stored.ca.key, *(issued.key for issued in stored.hosts.values())]
    return found


def test_status_via_ssh_puts_no_secret_on_the_command_line(
    campus: Path, fake_ssh: Callable[[], list[list[str]]]
) -> None:
    result = CliRunner().invoke(cli, ["status", str(campus), "--via", "ssh", "--format", "json"])
    assert result.exit_code == 1, result.output
    calls = fake_ssh()
    assert calls
    secrets = secret_values(campus)
    for argv in calls:
        for value in secrets:
            assert not any(value in arg for arg in argv)
            for line in value.splitlines():  # a key's body, line by line
                if len(line) >= 16:
                    assert not any(line in arg for arg in argv)
        assert argv[argv.index("-l") + 1] == "ops"  # the blueprint's admin.user
        assert argv[-2] == "--" and argv[-1].startswith("10.20.")
    masters = [a for a in calls if "-N" in a]
    forwards = [a for a in calls if "-W" in a]
    exits = [a for a in calls if "-O" in a]
    # One master per host the checks go through, each closed at the end.
    hosts = sorted(a[-1] for a in masters)
    assert hosts == ["10.20.1.10", "10.20.2.10", "10.20.2.11", "10.20.2.12"]
    assert sorted(a[-1] for a in exits) == hosts
    assert {a[a.index("-W") + 1] for a in forwards} >= {"10.20.1.10:5432", "10.20.2.10:443"}
    # The stand-in found nothing listening: every dialled row says so, as a direct probe would.
    doc = json.loads(result.stdout)
    dialled = [c for c in doc["checks"] if c["instance"] != "fleet CA"]
    assert {(c["state"], c["detail"]) for c in dialled} == {("refused", REFUSED_DETAIL)}
    assert "Traceback" not in result.output


def test_ssh_user_overrides_the_admin(
    campus: Path, fake_ssh: Callable[[], list[list[str]]]
) -> None:
    args = ["status", str(campus), "--via", "ssh", "--ssh-user", "deploy", "--only", "ollama"]
    CliRunner().invoke(cli, args)
    assert {a[a.index("-l") + 1] for a in fake_ssh()} == {"deploy"}


def test_a_master_that_cannot_log_in_fails_every_row_through_its_host(
    campus: Path, fake_ssh: Callable[[], list[list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SSH_MODE", "denied")
    result = CliRunner().invoke(cli, ["status", str(campus), "--via", "ssh", "--only", "math"])
    assert result.exit_code == 1
    assert not [a for a in fake_ssh() if "-W" in a]  # nothing forwarded without a login
    rows = [
        line
        for line in result.stdout.splitlines()
        if line.startswith(("postgresql", "redis", "openwebui"))
    ]
    assert len(rows) == 4
    assert all(
        "auth-failed" in r
        and "ssh to web-a (10.20.2.10) failed: Permission denied (publickey)." in r
        for r in rows
    )
    hints = [line for line in result.stdout.splitlines() if line.startswith("hint: ")]
    assert hints == [
        "hint: ssh to web-a as ops failed: Permission denied; check --ssh-key / the admin's key "
        "(admin.ssh_authorized_keys) and --ssh-user (rows: postgresql math, redis math, "
        "openwebui math, openwebui-db math)"
    ]


def test_through_a_master_the_reason_is_asked_again_without_it(
    campus: Path, fake_ssh: Callable[[], list[list[str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_SSH_MODE", "mux")
    args = ["status", str(campus), "--via", "ssh", "--only", "qdrant", "--format", "json"]
    result = CliRunner().invoke(cli, args)
    (row,) = json.loads(result.stdout)["checks"]
    assert (row["state"], row["detail"]) == ("refused", REFUSED_DETAIL)
    forwards = [a for a in fake_ssh() if "-W" in a]
    assert [("ControlPath=none" in a) for a in forwards] == [False, True]


def test_a_probe_speaks_tls_over_whatever_its_dial_returns(tmp_path: Path) -> None:
    """The front door's probe over a socketpair, as through ssh -W: no TCP at all, and the
    TLS name (SNI), the certificate's check and the Host header are the instance's name."""
    pki = make_pki(("door.example",))
    server_tls = pki.server_context(tmp_path)
    names: list[str | None] = []
    server_tls.sni_callback = lambda sock, name, ctx: names.append(name)
    requests: list[bytes] = []
    dialled: list[tuple[str, int, float]] = []

    def dial(address: str, port: int, timeout: float) -> socket.socket:
        dialled.append((address, port, timeout))
        ours, theirs = socket.socketpair()

        def serve() -> None:
            with server_tls.wrap_socket(theirs, server_side=True) as conn:
                requests.append(conn.recv(65536))
                body = b'{"status": true}'
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
                )

        threading.Thread(target=serve, daemon=True).start()
        return ours

    probe = status.openwebui_probe(
        "10.20.2.10", 443, "/health", tls=tls_context(pki.ca_cert), server_name="door.example"
    )
    assert probe(2.0, dial) == Outcome(State.OK, "GET /health")
    assert [(a, p) for a, p, _ in dialled] == [("10.20.2.10", 443)]
    assert names == ["door.example"]
    assert b"\r\nHost: door.example\r\n" in requests[0]


# -- the options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("option", [["--ssh-user", "ops"], ["--ssh-config", "{cfg}"]])
def test_ssh_options_need_via_ssh(campus: Path, option: list[str]) -> None:
    cfg = campus.with_name("ssh_config")
    cfg.write_text("")
    result = CliRunner().invoke(cli, ["status", str(campus), *(o.format(cfg=cfg) for o in option)])
    assert result.exit_code == 2
    assert f"{option[0]} needs --via ssh" in result.stderr


def test_no_ssh_client_is_a_usage_error(campus: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(status.shutil, "which", lambda name: None)
    result = CliRunner().invoke(cli, ["status", str(campus), "--via", "ssh"])
    assert result.exit_code == 2
    assert "--via ssh: no ssh client on this machine" in result.stderr
    assert "openssh-client" in result.stderr


def test_a_key_others_can_read_is_a_usage_error(
    campus: Path, fake_ssh: Callable[[], list[list[str]]]
) -> None:
    key = campus.with_name("id_fleet")
    key.write_text("not a key\n")
    key.chmod(0o644)
    result = CliRunner().invoke(cli, ["status", str(campus), "--via", "ssh", "--ssh-key", str(key)])
    assert result.exit_code == 2
    assert "others can read it" in result.stderr and f"chmod 600 {key}" in result.stderr
    assert fake_ssh() == []


@pytest.mark.parametrize("user", ["-oProxyCommand=x", "ops@10.0.0.1", "a b", ""])
def test_a_user_name_that_is_not_one_is_a_usage_error(campus: Path, user: str) -> None:
    result = CliRunner().invoke(cli, ["status", str(campus), "--via", "ssh", "--ssh-user", user])
    assert result.exit_code == 2
    assert "not a user name" in result.stderr


def test_via_takes_direct_or_ssh(campus: Path) -> None:
    result = CliRunner().invoke(cli, ["status", str(campus), "--via", "vpn"])
    assert result.exit_code == 2


def test_help_explains_via_ssh() -> None:
    text = CliRunner().invoke(cli, ["status", "--help"]).stdout
    for needle in ("--via [direct|ssh]", "--ssh-key PATH", "--ssh-config PATH", "--ssh-user NAME"):
        assert needle in text
    assert "ssh -W" in text and "owuibuild status fleet.yml --via ssh" in text


# -- what ssh's failures become ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stderr", "state", "detail", "hint"),
    [
        (
            "ops@10.20.2.10: Permission denied (publickey).\r\n",
            State.AUTH_FAILED,
            "ssh to web-a (10.20.2.10) failed: Permission denied (publickey).",
            "check --ssh-key / the admin's key",
        ),
        (
            "@@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
            "Host key verification failed.\n",
            State.DOWN,
            "ssh to web-a (10.20.2.10) failed: host key verification failed",
            "known_hosts",
        ),
        (
            "No ED25519 host key is known for 10.20.2.10 and you have requested strict "
            "checking.\r\nHost key verification failed.\r\n",
            State.DOWN,
            "ssh to web-a (10.20.2.10) failed: host key verification failed",
            "verify the key",
        ),
        (
            "ssh: connect to host 10.20.2.10 port 22: Connection refused\r\n",
            State.DOWN,
            "ssh to web-a (10.20.2.10) failed: connection refused",
            "nothing answers SSH at 10.20.2.10",
        ),
        (
            "ssh: connect to host 10.20.2.10 port 22: Connection timed out\r\n",
            State.TIMEOUT,
            "ssh to web-a (10.20.2.10) failed: no answer within the timeout",
            "admin.allow_from",
        ),
        (
            "ssh: connect to host 10.20.2.10 port 22: No route to host\r\n",
            State.DOWN,
            "ssh to web-a (10.20.2.10) failed: no route to host",
            "ProxyJump",
        ),
        (
            "channel 0: open failed: connect failed: Connection refused\r\n"
            "stdio forwarding failed\r\n",
            State.REFUSED,
            REFUSED_DETAIL,
            "",
        ),
        (
            "channel 0: open failed: connect failed: Connection timed out\r\n",
            State.TIMEOUT,
            "no answer within the timeout",
            "",
        ),
        (
            "channel 0: open failed: connect failed: No route to host\r\n",
            State.DOWN,
            "no route to host",
            "",
        ),
        (
            "channel 0: open failed: administratively prohibited: open failed\r\n",
            State.DOWN,
            "ssh to web-a: forwarding is administratively prohibited",
            "AllowTcpForwarding",
        ),
        (
            "Bad owner or permissions on /home/ops/.ssh/config\r\n",
            State.AUTH_FAILED,
            "ssh to web-a (10.20.2.10) failed: Bad owner or permissions on /home/ops/.ssh/config",
            "chmod 600",
        ),
        (
            "Warning: Permanently added '10.20.2.10' (ED25519) to the list of known hosts.\r\n"
            "kex_exchange_identification: read: Connection reset by peer\r\n",
            State.DOWN,
            "ssh to web-a (10.20.2.10) failed: kex_exchange_identification: read: "
            "Connection reset by peer",
            "ssh ops@10.20.2.10",
        ),
    ],
)
def test_what_ssh_says_becomes_a_state_a_detail_and_a_hint(
    stderr: str, state: State, detail: str, hint: str
) -> None:
    outcome = ssh_outcome(WEB_A, "ops", stderr)
    assert (outcome.state, outcome.detail) == (state, detail)
    assert hint in outcome.hint
    assert "\n" not in outcome.detail + outcome.hint


def test_ssh_details_and_hints_are_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "Zq8sV1-secret-value_000000000"
    check = status.Check(
        "redis", "i", "ai-shared", "10.0.5.24", 6379,
        lambda t, dial=None: Outcome(State.DOWN, f"ssh said {secret}", f"hint {secret}"),
    )  # fmt: skip
    (result,) = status.run_checks([check], 1.0, frozenset({secret}))
    assert (result.detail, result.hint) == ("ssh said [redacted]", "hint [redacted]")
