"""Jump hosts: a probe's TCP connection opened on a fleet host, through OpenSSH.

`owuibuild status --via ssh` asks each service from the host whose traffic the fleet's firewall
and pg_hba admit, not from the admin's machine. This room opens such a connection: ``ssh -W
address:port`` on the jump host, its standard input and output one end of a socketpair, the
other end handed to the probe as if it were the connected TCP socket (TLS, PostgreSQL and Redis
run over it unchanged). One SSH master per jump host (ControlMaster, in a private directory,
closed with ``ssh -O exit`` at the end) carries every connection to that host, so N probes cost
one handshake.

It may run the ssh client and touch that private directory, nothing else. The command line of
ssh carries addresses, ports, the user name and the paths the user gave, never a secret; host
keys are checked as the user's ssh configuration says (BatchMode: never a prompt). What ssh
says when it fails becomes an `Outcome` with a one-line hint.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .model import Host
from .probes import REFUSED_DETAIL, Deadline, Outcome, ProbeFailure, State

# ssh's own exit code for its failures (a forwarded connection's end is 0).
SSH_FAILED = 255
# How long a master outlives its last connection, past the probe timeout; `close` ends it first.
PERSIST_MARGIN_S = 10
# What a connection through a master says, whatever the jump host's reason: ask it again
# without the master to learn the reason.
MUX_REFUSED = "stdio forwarding request failed"
# Seconds `close` grants each `ssh -O exit` and each forwarding process.
CLOSE_TIMEOUT = 5.0
# A socket's path, at most (macOS; Linux allows 107), and what a master adds to the control
# directory's: "/h<n>" (up to 1000 hosts) and ssh's temporary ".<16 random characters>".
SOCKET_PATH_MAX = 103
SOCKET_SUFFIX = len("/h999") + 17
DETAIL_LIMIT = 200


@dataclass(frozen=True)
class SshOptions:
    """How to reach the jump hosts: as ``user``, with ``key`` (else ssh's agent and
    configuration) and ``config`` (``ssh -F``, else the user's own)."""

    user: str
    key: Path | None = None
    config: Path | None = None
    program: str = "ssh"


def target(address: str, port: int) -> str:
    """``address:port`` as ``ssh -W`` takes it (an IPv6 address in brackets)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _config_value(text: str) -> str:
    """A path as the value of an ``ssh -o`` option: quoted, and % (ssh's tokens) doubled."""
    return '"' + text.replace("%", "%%") + '"'


# -- what ssh says ----------------------------------------------------------------------------------

# Lines that say nothing about a failure.
_NOISE = ("warning: permanently added", "** ", "debug")


def _reason(stderr: str) -> str:
    lines = [
        line.strip()
        for line in stderr.replace("\r", "\n").splitlines()
        if line.strip() and not line.strip().lower().startswith(_NOISE)
    ]
    return lines[-1][:DETAIL_LIMIT] if lines else ""


def forward_outcome(stderr: str) -> Outcome | None:
    """The jump host could not open the connection: what that means for the probe, as a
    direct connection would have said it; None when ssh's message is not about that."""
    text = stderr.lower()
    if "open failed" not in text:
        return None
    if "connection refused" in text:
        return Outcome(State.REFUSED, REFUSED_DETAIL)
    if "timed out" in text:
        return Outcome(State.TIMEOUT, "no answer within the timeout")
    if "no route to host" in text or "network is unreachable" in text:
        return Outcome(State.DOWN, "no route to host")
    return None


def ssh_outcome(host: Host, user: str, stderr: str) -> Outcome:
    """What a failed ssh said, as a row's state, detail and hint (one line each)."""
    forwarded = forward_outcome(stderr)
    if forwarded is not None:
        return forwarded
    name, address = host.name, str(host.address)
    text, reason = stderr.lower(), _reason(stderr)
    failed = f"ssh to {name} ({address}) failed"
    if "administratively prohibited" in text:
        return Outcome(
            State.DOWN,
            f"ssh to {name}: forwarding is administratively prohibited",
            f"sshd on {name} refuses TCP forwarding to {user} (AllowTcpForwarding, "
            "PermitOpen): status --via ssh opens every connection with ssh -W",
        )
    if "open failed" in text:
        return Outcome(State.DOWN, f"ssh to {name}: {reason}")
    if "are too open" in text or "bad owner or permissions" in text:
        return Outcome(
            State.AUTH_FAILED,
            f"{failed}: {reason}",
            f"ssh to {name} failed: ssh refuses a key or configuration file that others can "
            "read or write; chmod 600 it",
        )
    if "permission denied" in text:
        return Outcome(
            State.AUTH_FAILED,
            f"{failed}: {reason.split(': ', 1)[-1]}",
            f"ssh to {name} as {user} failed: Permission denied; check --ssh-key / the "
            "admin's key (admin.ssh_authorized_keys) and --ssh-user",
        )
    if "host key verification failed" in text or "identification has changed" in text:
        return Outcome(
            State.DOWN,
            f"{failed}: host key verification failed",
            f"ssh does not know {name}'s host key ({address}), or it changed (a replaced "
            "host has a new one): verify the key, then put it in known_hosts",
        )
    if "connection refused" in text:
        return Outcome(
            State.DOWN,
            f"{failed}: connection refused",
            f"nothing answers SSH at {address}: is {name} up, and does --ssh-config map it right?",
        )
    if "timed out" in text:
        return Outcome(
            State.TIMEOUT,
            f"{failed}: no answer within the timeout",
            f"{name} ({address}) does not answer SSH from here: the fleet's firewall admits "
            "SSH only from admin.allow_from",
        )
    if "no route to host" in text or "network is unreachable" in text:
        return Outcome(
            State.DOWN,
            f"{failed}: no route to host",
            f"this machine has no route to {name} ({address}); --ssh-config can name a ProxyJump",
        )
    return Outcome(
        State.DOWN,
        f"{failed}: {reason or 'no reason given'}",
        f"ssh to {name} failed: try `ssh {user}@{address}` with the same options to see why",
    )


def control_directory() -> Path:
    """A new private directory (0700, mkdtemp's mode: only this user reaches the masters'
    sockets) whose sockets' paths fit: a master first binds its ControlPath plus a 17-character
    suffix, and a socket's path has at most 103 bytes on some systems (104 with its NUL). A
    long TMPDIR (macOS's is) is passed over for /tmp then."""
    directory = tempfile.mkdtemp(prefix="owuibuild-ssh-")
    if len(os.fsencode(directory)) + SOCKET_SUFFIX <= SOCKET_PATH_MAX:
        return Path(directory)
    os.rmdir(directory)
    return Path(tempfile.mkdtemp(prefix="owuibuild-ssh-", dir="/tmp"))


# -- connections ------------------------------------------------------------------------------------


class Tunnel:
    """One connection that ``ssh -W`` opened on a jump host: ``sock`` is this end of it."""

    def __init__(
        self,
        host: Host,
        user: str,
        sock: socket.socket,
        process: subprocess.Popen[bytes],
        stderr: IO[bytes],
    ) -> None:
        self.host = host
        self.user = user
        self.sock = sock
        self.process = process
        self._stderr = stderr

    def failure(self, wait: float) -> Outcome | None:
        """What ssh said when it failed, once it has exited (waiting up to ``wait`` seconds);
        None while it runs or when it ended well."""
        try:
            code = self.process.wait(timeout=max(wait, 0.0))
        except subprocess.TimeoutExpired:
            return None
        if code == 0:
            return None
        self._stderr.seek(0)
        said = self._stderr.read().decode("utf-8", "replace")
        return ssh_outcome(self.host, self.user, said or f"ssh exited with {code}")

    @property
    def through_master(self) -> bool:
        """True when a master carried the connection (then ssh does not say why it failed)."""
        self._stderr.seek(0)
        return MUX_REFUSED in self._stderr.read().decode("utf-8", "replace").lower()

    def close(self) -> None:
        self.sock.close()
        if self.process.poll() is None:
            try:
                self.process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                self.process.terminate()
                try:
                    self.process.wait(timeout=CLOSE_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        self._stderr.close()


class Jumps:
    """The SSH side of one run: a private control directory and a master per jump host.

    Use as a context manager; ``close`` ends every master and removes the directory.
    ``timeout`` is the probe timeout: ssh's ConnectTimeout, and how long a master may take.
    """

    def __init__(self, options: SshOptions, timeout: float) -> None:
        self.options = options
        self.timeout = timeout
        self.directory = control_directory()
        self._paths: dict[Host, str] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Jumps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def control_path(self, host: Host) -> str:
        """The master's socket for ``host``: short, so that it fits a socket address."""
        with self._lock:
            if host not in self._paths:
                self._paths[host] = str(self.directory / f"h{len(self._paths)}")
            return self._paths[host]

    def argv(self, host: Host, *args: str, master: bool = True) -> list[str]:
        """ssh's command line for ``host``: options, ``args``, then the host's address.
        Without ``master`` it connects on its own (no multiplexing)."""
        o = self.options
        argv = [o.program]
        if o.config is not None:
            argv += ["-F", str(o.config)]
        control = (
            [
                "-o",
                "ControlMaster=auto",
                "-o",
                f"ControlPath={_config_value(self.control_path(host))}",
            ]
            if master
            else ["-o", "ControlPath=none"]
        )
        argv += [
            "-o",
            "BatchMode=yes",
            "-o",
            f"ConnectTimeout={max(1, math.ceil(self.timeout))}",
            *control,
            "-o",
            f"ControlPersist={math.ceil(self.timeout) + PERSIST_MARGIN_S}s",
        ]
        if o.key is not None:
            argv += ["-i", str(o.key), "-o", "IdentitiesOnly=yes"]
        return [*argv, *args, "-l", o.user, "--", str(host.address)]

    # -- masters

    def _start_master(self, host: Host) -> Outcome | None:
        argv = self.argv(host, "-o", "ControlMaster=yes", "-N")
        with tempfile.TemporaryFile() as said:
            try:
                # With ControlPersist the master goes to the background once it has logged in.
                done = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=said,
                    timeout=self.timeout + CLOSE_TIMEOUT,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return ssh_outcome(host, self.options.user, "timed out")
            except OSError as exc:
                return Outcome(State.DOWN, f"ssh cannot run: {exc.strerror or exc}")
            if done.returncode == 0:
                return None
            said.seek(0)
            text = said.read().decode("utf-8", "replace")
            return ssh_outcome(host, self.options.user, text or f"ssh exited {done.returncode}")

    def connect(self, hosts: Iterable[Host]) -> dict[Host, Outcome]:
        """Start a master for each host, all at once: the hosts ssh could not log in to, and
        why (the probes through them are not tried: ssh would fail them the same way)."""
        unique = sorted(set(hosts), key=lambda h: h.name)
        if not unique:
            return {}
        for host in unique:
            self.control_path(host)
        with ThreadPoolExecutor(max_workers=min(16, len(unique))) as pool:
            outcomes = list(pool.map(self._start_master, unique))
        return {h: o for h, o in zip(unique, outcomes, strict=True) if o is not None}

    # -- connections

    def open(
        self, host: Host, address: str, port: int, timeout: float, *, master: bool = True
    ) -> Tunnel:
        """A connection to ``address:port`` opened on ``host`` (``ssh -W``), for any code that
        needs one (the probes use it through a `Route`). It is not known to be open yet: a
        failure shows as the end of the stream, and `Tunnel.failure` says why; `Tunnel.close`
        ends it. Raises OSError when ssh cannot be started."""
        ours, theirs = socket.socketpair()
        said = tempfile.TemporaryFile()  # noqa: SIM115 (the Tunnel closes it)
        try:
            process = subprocess.Popen(
                self.argv(host, "-W", target(address, port), master=master),
                stdin=theirs.fileno(),
                stdout=theirs.fileno(),
                stderr=said,
                start_new_session=True,  # a ^C reaches owuibuild, which closes them all
            )
        except OSError:
            ours.close()
            said.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(timeout)
        return Tunnel(host, self.options.user, ours, process, said)

    def diagnose(self, host: Host, address: str, port: int, deadline: Deadline) -> Outcome | None:
        """Why ``host`` could not open ``address:port``, asked once more without a master
        (which keeps the reason to itself); None if it opens now or does not say in time."""
        try:
            tunnel = self.open(host, address, port, deadline.remaining(), master=False)
        except (OSError, ProbeFailure):
            return None
        try:
            tunnel.sock.shutdown(socket.SHUT_WR)  # nothing to send: ssh ends once it knows
            return tunnel.failure(deadline.remaining())
        except (OSError, ProbeFailure):
            return None
        finally:
            tunnel.close()

    @contextmanager
    def route(self, host: Host) -> Iterator[Route]:
        """The connections of one probe through ``host``, closed when it is done."""
        route = Route(self, host)
        try:
            yield route
        finally:
            route.close()

    def close(self) -> None:
        """End every master (``ssh -O exit``) and remove the control directory."""
        with self._lock:
            hosts = list(self._paths)
        for host in hosts:
            # Should it fail, ControlPersist ends the master soon all the same.
            with suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    self.argv(host, "-O", "exit"),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    timeout=CLOSE_TIMEOUT,
                    check=False,
                )
        shutil.rmtree(self.directory, ignore_errors=True)


class Route:
    """One probe's way through a jump host: its `dial` opens each connection there, and
    `explain` replaces a failed probe's outcome with what ssh said, when ssh failed."""

    def __init__(self, jumps: Jumps, host: Host) -> None:
        self.jumps = jumps
        self.host = host
        self.tunnels: list[tuple[Tunnel, str, int]] = []

    def dial(self, address: str, port: int, timeout: float) -> socket.socket:
        tunnel = self.jumps.open(self.host, address, port, timeout)
        self.tunnels.append((tunnel, address, port))
        return tunnel.sock

    def explain(self, outcome: Outcome, deadline: Deadline) -> Outcome:
        if outcome.state is State.OK:
            return outcome
        for tunnel, address, port in self.tunnels:
            try:
                failed = tunnel.failure(min(deadline.remaining(), 1.0))
            except ProbeFailure:
                failed = tunnel.failure(0)
            if failed is None:
                continue
            if tunnel.through_master:
                try:
                    found = self.jumps.diagnose(self.host, address, port, deadline)
                except ProbeFailure:
                    found = None
                return found or Outcome(
                    State.DOWN, f"ssh: {self.host.name} could not open {target(address, port)}"
                )
            return failed
        return outcome

    def close(self) -> None:
        for tunnel, _, _ in self.tunnels:
            tunnel.close()
