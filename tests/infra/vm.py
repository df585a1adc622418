"""Boot-tier harness: run a Debian QEMU guest (13 by default) from the cached base image and a NoCloud seed.

Used by ``@pytest.mark.boot`` tests::

    base = ensure_base_image()            # builds once with vm-image.sh, then cached
    with VM(base, seed_iso_bytes, forwards={8080: None}) as vm:
        vm.wait_for_ssh(key_path, "tester", timeout=600)
        status = vm.wait_for_cloud_init(timeout=900)
        assert status.ok, status
        port = vm.host_port(8080)           # probe http://127.0.0.1:<port>/ from the host

How the guest is run:

* a qcow2 overlay of the base disk in a private temp dir (the cached base is
  never written), optionally grown to ``disk_size`` (cloud-init's growpart and
  resizefs then grow the root file system);
* ``qemu-system-x86_64 -accel tcg,thread=multi -cpu max`` (KVM cannot run a
  Debian kernel on these machines), booted with ``-kernel``/``-initrd``;
* the seed ISO as an IDE cdrom, an optional extra data disk as ``/dev/vdb``;
* user-mode networking: guest 10.0.2.15/24, gateway 10.0.2.2, DNS 10.0.2.3.
  Host forwards are bound to 127.0.0.1 only; forwarded connections arrive in
  the guest from 10.0.2.2. The host never dials a 10.x address;
* the serial console is logged to ``console.log`` in the work dir;
* a guest kernel that panics before it has run any program (so before anything of ours ran
  or any disk was written) is an emulator fault, not a finding: QEMU is started again, at most
  twice per guest, and a ``GuestPanicWarning`` says so in the test summary. A panic after
  that fails the test at once, with the console, instead of waiting out the timeout.

Set ``OWUIBUILD_VM_KEEP=1`` to keep the work dir (console log, overlay) after
the VM is closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
VM_IMAGE_SCRIPT = HERE / "vm-image.sh"

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
DEFAULT_MAC = "52:54:00:12:34:56"
# A guest with a fleet link gets its user-mode NIC under this MAC: the base image configures
# that NIC itself (vm-image.sh, 05-owuibuild-test-uplink.network) as an uplink for ssh and the
# package mirror, and the seed's network-config drives the fleet NIC (FLEET_INTERFACE).
UPLINK_MAC = "52:54:00:aa:00:01"
UPLINK_SLOT = 16  # PCI slot (clear of the automatic ones): the uplink is ens16
FLEET_SLOT = 17  # the fleet NIC is ens17
FLEET_INTERFACE = f"ens{FLEET_SLOT}"

GUEST_NET = "10.0.2.0/24"
GUEST_ADDRESS = "10.0.2.15"
GUEST_GATEWAY = "10.0.2.2"
GUEST_DNS = "10.0.2.3"


# Kernel messages that delimit a boot, in the order a boot prints them.
BOOT_BANNER = "Linux version "
USERSPACE_STARTED = " as init process"  # "Run /init as init process": the first program runs
KERNEL_PANIC = "Kernel panic - not syncing"
PANIC_RESTARTS = 2


def boot_panic(console: str) -> str | None:
    """Whether the guest's latest boot in ``console`` panicked: ``"early"`` before the kernel
    ran its first program, ``"late"`` after, ``None`` when it did not panic."""
    boot = console[console.rfind(BOOT_BANNER) :] if BOOT_BANNER in console else console
    panic = boot.find(KERNEL_PANIC)
    if panic < 0:
        return None
    return "late" if USERSPACE_STARTED in boot[:panic] else "early"


class GuestPanicWarning(UserWarning):
    """A guest kernel panicked before running any program and was started again."""


class VMError(RuntimeError):
    """The guest did not do what was expected; the message ends with the console tail."""


# --------------------------------------------------------------- base image


@dataclass(frozen=True)
class BaseImage:
    """The cached base image made by ``vm-image.sh``."""

    disk: Path
    kernel: Path
    initrd: Path
    root: str = "/dev/vda1"

    @classmethod
    def from_env_text(cls, text: str) -> BaseImage:
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and key.startswith("OWUIBUILD_VM_"):
                values[key] = value
        try:
            return cls(
                disk=Path(values["OWUIBUILD_VM_DISK"]),
                kernel=Path(values["OWUIBUILD_VM_KERNEL"]),
                initrd=Path(values["OWUIBUILD_VM_INITRD"]),
                root=values.get("OWUIBUILD_VM_ROOT", "/dev/vda1"),
            )
        except KeyError as exc:
            raise VMError(f"vm-image.sh output lacks {exc}: {text!r}") from None

    @classmethod
    def build(cls, timeout: float = 1800, env: Mapping[str, str] | None = None) -> BaseImage:
        """Run ``vm-image.sh`` (a no-op when cached) and return the image."""
        proc = subprocess.run(
            ["bash", str(VM_IMAGE_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=dict(os.environ, **(env or {})),
        )
        if proc.returncode != 0:
            raise VMError(
                f"vm-image.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}{proc.stdout}"
            )
        return cls.from_env_text(proc.stdout)


_BASE_IMAGES: dict[str, BaseImage] = {}


def ensure_base_image(suite: str = "trixie") -> BaseImage:
    """The base image of a Debian ``suite`` (trixie, bookworm): built once per process (and
    once per recipe on disk)."""
    if suite not in _BASE_IMAGES:
        _BASE_IMAGES[suite] = BaseImage.build(env={"OWUIBUILD_VM_SUITE": suite})
    return _BASE_IMAGES[suite]


def missing_tools(extra: Sequence[str] = ()) -> list[str]:
    """Tools a boot test needs that are not on PATH (empty when all are there)."""
    needed = [QEMU, QEMU_IMG, "ssh", "ssh-keygen", *extra]
    return [tool for tool in needed if shutil.which(tool) is None]


# -------------------------------------------------------------------- ports


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> None:
    """Wait until something accepts TCP connections on host:port (loopback only)."""
    if not host.startswith("127.") and host != "localhost":
        raise ValueError("only loopback addresses may be dialled from the host")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


# --------------------------------------------------------------- cloud-init


# Done when cloud-init has written its result; every 5 s, also stop if one of its units failed
# (then it never writes one). The unit names of Debian 12's cloud-init and of Debian 13's.
CLOUD_INIT_UNITS = (
    "cloud-init-local.service cloud-init.service cloud-init-main.service "
    "cloud-init-network.service cloud-config.service cloud-final.service"
)
CLOUD_INIT_DONE_WAIT = (
    "timeout {timeout} sh -c 'n=0; until [ -e /run/cloud-init/result.json ]; do"
    " n=$((n + 1)); if [ $((n % 10)) -eq 0 ] && systemctl is-failed --quiet "
    + CLOUD_INIT_UNITS
    + "; then break; fi; sleep 0.5; done'"
)


def cloud_init_done_wait(timeout: float) -> str:
    """The guest's shell wait until cloud-init is done (see CLOUD_INIT_DONE_WAIT)."""
    return CLOUD_INIT_DONE_WAIT.format(timeout=int(timeout))


@dataclass
class CloudInitStatus:
    """What ``cloud-init status`` said at the end of the boot."""

    status: str
    errors: list[str]
    detail: str
    returncode: int
    long_output: str
    recoverable: dict[str, Any] = field(default_factory=dict)
    log_warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "done" and not self.errors


# ------------------------------------------------------------- fleet link


@dataclass(frozen=True)
class FleetLink:
    """A guest's NIC on the private fleet network between two test VMs.

    QEMU's UDP socket netdev on 127.0.0.1: each guest sends its frames to the other's port and
    nothing leaves the machine. It is stateless, so either guest can be replaced (a new QEMU on
    the same ports) while the other runs. ``pcap`` records every frame the NIC sends or receives.
    """

    local_port: int
    remote_port: int
    mac: str
    pcap: Path | None = None

    @staticmethod
    def pair(
        macs: tuple[str, str] = ("52:54:00:f1:00:01", "52:54:00:f1:00:02"),
    ) -> tuple[FleetLink, FleetLink]:
        a, b = free_udp_port(), free_udp_port()
        return FleetLink(a, b, macs[0]), FleetLink(b, a, macs[1])


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------- VM


class VM:
    """One QEMU guest. Use as a context manager: QEMU is always killed on exit."""

    def __init__(
        self,
        base: BaseImage,
        seed_iso: Path | bytes,
        forwards: Mapping[int, int | None] | None = None,
        data_disk: Path | None = None,
        memory_mb: int = 2048,
        cpus: int | None = None,
        disk_size: str | None = None,
        mac: str = DEFAULT_MAC,
        extra_append: str = "",
        workdir: Path | None = None,
        name: str = "vm",
        fleet_link: FleetLink | None = None,
        restrict: bool = False,
    ) -> None:
        self.base = base
        self.memory_mb = memory_mb
        self.cpus = cpus or min(2, os.cpu_count() or 1)
        self.disk_size = disk_size
        self.mac = mac
        self.extra_append = extra_append
        self.name = name
        self.data_disk = data_disk
        self.fleet_link = fleet_link
        # restrict=on: the user-mode network forwards ssh in, and lets nothing out.
        self.restrict = restrict
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix=f"owuibuild-{name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.console_path = self.workdir / "console.log"
        self.qemu_log_path = self.workdir / "qemu.log"
        self.overlay_path = self.workdir / "root.qcow2"
        self.qmp_path = self.workdir / "qmp.sock"
        if isinstance(seed_iso, bytes | bytearray):
            self.seed_path = self.workdir / "seed.iso"
            self.seed_path.write_bytes(bytes(seed_iso))
        else:
            self.seed_path = Path(seed_iso)
        self._requested_forwards = dict(forwards or {})
        self._requested_forwards.setdefault(22, None)
        self.forwards: dict[int, int] = {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self.ssh_key: Path | None = None
        self.ssh_user: str | None = None
        self.panic_restarts = 0

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> VM:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def ssh_port(self) -> int:
        return self.forwards[22]

    def host_port(self, guest_port: int) -> int:
        """The 127.0.0.1 port that forwards to ``guest_port`` in the guest."""
        return self.forwards[guest_port]

    def _make_overlay(self) -> None:
        if self.overlay_path.exists():
            return
        cmd = [
            QEMU_IMG,
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(self.base.disk.resolve()),
            str(self.overlay_path),
        ]
        if self.disk_size:
            cmd.append(self.disk_size)
        subprocess.run(cmd, check=True, capture_output=True)

    def _qemu_command(self) -> list[str]:
        fwd = ",".join(
            f"hostfwd=tcp:127.0.0.1:{host}-:{guest}"
            for guest, host in sorted(self.forwards.items())
        )
        netdev = (
            f"user,id=net0,net={GUEST_NET},host={GUEST_GATEWAY},dns={GUEST_DNS},"
            f"dhcpstart={GUEST_ADDRESS},{fwd}"
        )
        if self.restrict:
            netdev += ",restrict=on"
        append = f"root={self.base.root} rw console=ttyS0,115200n8 {self.extra_append}".strip()
        cmd = [
            QEMU,
            "-name",
            self.name,
            "-machine",
            "pc",
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            str(self.cpus),
            "-m",
            str(self.memory_mb),
            "-nodefaults",  # no floppy, parallel port, VGA: less for TCG to emulate
            "-vga",
            "none",
            "-nographic",
            "-monitor",
            "none",
            "-serial",
            f"file:{self.console_path}",
            "-qmp",
            f"unix:{self.qmp_path},server=on,wait=off",
            "-kernel",
            str(self.base.kernel),
            "-initrd",
            str(self.base.initrd),
            "-append",
            append,
            "-drive",
            f"file={self.overlay_path},if=virtio,format=qcow2,cache=unsafe,discard=unmap",
            "-drive",
            f"file={self.seed_path},if=ide,media=cdrom,format=raw,readonly=on",
            "-netdev",
            netdev,
        ]
        link = self.fleet_link
        if link is None:
            cmd += ["-device", f"virtio-net-pci,netdev=net0,mac={self.mac}"]
        cmd += ["-device", "virtio-rng-pci"]
        if link is not None:
            cmd += [
                "-device",
                f"virtio-net-pci,netdev=net0,mac={UPLINK_MAC},addr={UPLINK_SLOT:#x}",
                "-netdev",
                f"socket,id=net1,udp=127.0.0.1:{link.remote_port},"
                f"localaddr=127.0.0.1:{link.local_port}",
                "-device",
                f"virtio-net-pci,netdev=net1,mac={link.mac},addr={FLEET_SLOT:#x}",
            ]
            if link.pcap is not None:
                cmd += ["-object", f"filter-dump,id=dump1,netdev=net1,file={link.pcap}"]
        if self.data_disk is not None:
            fmt = _image_format(self.data_disk)
            cmd += ["-drive", f"file={self.data_disk},if=virtio,format={fmt},cache=unsafe"]
        return cmd

    def start(self, attempts: int = 3) -> None:
        """Boot the guest. Returns once QEMU runs (not once the guest is up)."""
        if self.proc is not None:
            raise VMError("VM already started")
        self._make_overlay()
        for attempt in range(attempts):
            self.forwards = {
                guest: (host if host else free_port())
                for guest, host in self._requested_forwards.items()
            }
            self.console_path.write_bytes(b"")
            with self.qemu_log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    self._qemu_command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.started_at = time.monotonic()
            # A port grabbed between free_port() and QEMU's bind makes QEMU exit
            # at once: try again with new ports.
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                return
            qemu_log = self.qemu_log_path.read_text(errors="replace")
            self.proc = None
            if "host forwarding" not in qemu_log or attempt == attempts - 1:
                raise VMError(f"QEMU exited at start:\n{qemu_log}")

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def uptime(self) -> float:
        """Seconds since QEMU was started."""
        return 0.0 if self.started_at is None else time.monotonic() - self.started_at

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 60) -> str:
        return "\n".join(self.console().splitlines()[-lines:])

    def _fail(self, message: str) -> VMError:
        return VMError(
            f"{message}\n--- last console lines ({self.console_path}) ---\n{self.console_tail()}"
        )

    def _check_alive(self) -> None:
        """Raise unless the guest runs; start it again after an early kernel panic."""
        if not self.is_running():
            qemu_log = ""
            with contextlib.suppress(OSError):
                qemu_log = self.qemu_log_path.read_text(errors="replace")
            raise self._fail(f"QEMU is not running any more. qemu log:\n{qemu_log}")
        panic = boot_panic(self.console())
        if panic is None:
            return
        if panic == "late" or self.panic_restarts >= PANIC_RESTARTS:
            raise self._fail(f"the guest kernel panicked ({panic} in its boot)")
        self.panic_restarts += 1
        kept = self.workdir / f"console-panic-{self.panic_restarts}.log"
        shutil.copyfile(self.console_path, kept)
        warnings.warn(
            GuestPanicWarning(
                f"{self.name}: the guest kernel panicked before running any program "
                f"(an emulator fault; console kept as {kept.name}): QEMU started again"
            ),
            stacklevel=2,
        )
        self.kill()
        self.start()

    def kill(self) -> None:
        """Stop QEMU now (SIGTERM, then SIGKILL)."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def close(self) -> None:
        """Kill QEMU and remove the work dir (unless OWUIBUILD_VM_KEEP=1)."""
        self.kill()
        if self._own_workdir and os.environ.get("OWUIBUILD_VM_KEEP") != "1":
            shutil.rmtree(self.workdir, ignore_errors=True)

    # ------------------------------------------------------------------ QMP

    def qmp(self, command: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Send one QMP command (e.g. ``system_powerdown``) and return its result."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(self.qmp_path))
            reader = sock.makefile("r")
            json.loads(reader.readline())  # greeting
            sock.sendall(b'{"execute": "qmp_capabilities"}\n')
            json.loads(reader.readline())
            msg: dict[str, Any] = {"execute": command}
            if arguments:
                msg["arguments"] = dict(arguments)
            sock.sendall(json.dumps(msg).encode() + b"\n")
            while True:
                reply = json.loads(reader.readline())
                if "return" in reply:
                    return reply["return"]
                if "error" in reply:
                    raise VMError(f"QMP {command}: {reply['error']}")

    # ------------------------------------------------------------------ ssh

    def ssh_command(self, command: str | Sequence[str]) -> list[str]:
        if self.ssh_key is None or self.ssh_user is None:
            raise VMError("call wait_for_ssh(key_path, user) first")
        remote = command if isinstance(command, str) else shlex.join(command)
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.ssh_key),
            "-p",
            str(self.ssh_port),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "LogLevel=ERROR",
            f"{self.ssh_user}@127.0.0.1",
            "--",
            remote,
        ]

    def ssh(
        self,
        command: str | Sequence[str],
        *,
        check: bool = False,
        timeout: float = 300,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the guest over ssh (a string runs in the login shell)."""
        proc = subprocess.run(
            self.ssh_command(command),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise VMError(
                f"ssh {command!r} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def wait_for_ssh(self, key_path: Path, user: str, timeout: float = 600) -> float:
        """Wait until ``user`` can log in with ``key_path``; returns the uptime then."""
        key_path = Path(key_path)
        key_path.chmod(0o600)
        self.ssh_key, self.ssh_user = key_path, user
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                proc = self.ssh("true", timeout=30)
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
            else:
                if proc.returncode == 0:
                    return self.uptime()
                last = proc.stderr.strip()
            time.sleep(3)
        raise self._fail(f"no ssh login as {user} within {timeout:.0f} s (last: {last})")

    # ----------------------------------------------------------- cloud-init

    def wait_cloud_init_done(self, timeout: float = 900) -> float:
        """Wait, cheaply, until cloud-init has finished (or one of its units failed); returns
        the uptime then. `cloud-init status --wait` would start Python and a `systemctl show`
        every quarter second inside the guest, CPU taken from the boot it waits for (about a
        tenth of a second each under TCG); this polls for the result file with the shell."""
        return self.wait_milestones([("done", cloud_init_done_wait(timeout))], timeout)["done"]

    def wait_milestones(
        self, waits: Sequence[tuple[str, str]], timeout: float = 900
    ) -> dict[str, float]:
        """Run each ``(name, shell command)`` wait in turn inside the guest, in one SSH session,
        and note the uptime (seconds since QEMU's start) as each one's name comes back. One login
        for them all: under TCG a login costs the guest seconds of CPU, taken from the boot that
        is being timed. Each command bounds its own wait (``timeout N ...``); a command that
        fails ends the session, and the milestones not reached are an error."""
        names = [name for name, _ in waits]
        script = " && ".join(f"{command} && echo {shlex.quote(name)}" for name, command in waits)
        proc = subprocess.Popen(
            self.ssh_command(script),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        # The guest's own timeouts end the waits; this ends a session whose guest stopped answering.
        watchdog = threading.Timer(timeout * len(waits) + 60, proc.kill)
        watchdog.start()
        reached: dict[str, float] = {}
        try:
            assert proc.stdout is not None and proc.stderr is not None
            for line in proc.stdout:
                if line.strip() in names:
                    reached[line.strip()] = self.uptime()
            error = proc.stderr.read()
            proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        missing = [name for name in names if name not in reached]
        if missing:
            raise self._fail(
                f"not reached within {timeout:.0f} s each: {', '.join(missing)}"
                f" (ssh exited {proc.returncode}: {error.strip()})"
            )
        return reached

    def wait_for_cloud_init(self, timeout: float = 900) -> CloudInitStatus:
        """Wait until cloud-init is done, then collect its status, errors and warnings."""
        self.wait_cloud_init_done(timeout)
        waited = self.ssh("cloud-init status --wait --long", timeout=timeout)
        long_output = waited.stdout.lstrip(".")  # --wait prints a dot per poll
        as_json = self.ssh("cloud-init status --format json", timeout=60)
        try:
            data: dict[str, Any] = json.loads(as_json.stdout)
        except json.JSONDecodeError:
            raise self._fail(
                f"cannot read cloud-init status: {as_json.stdout!r} {as_json.stderr!r}"
            ) from None
        result = self.ssh("sudo cat /run/cloud-init/result.json", timeout=60)
        recoverable: dict[str, Any] = {}
        if result.returncode == 0:
            with contextlib.suppress(json.JSONDecodeError):
                recoverable = json.loads(result.stdout).get("v1", {}).get("recoverable_errors", {})
        warnings = self.ssh(
            "sudo grep -hE '\\[(WARNING|ERROR|CRITICAL)\\]|Traceback' /var/log/cloud-init.log",
            timeout=60,
        ).stdout.splitlines()
        return CloudInitStatus(
            status=str(data.get("status", "")),
            errors=[str(e) for e in data.get("errors", [])],
            detail=str(data.get("detail", "")),
            returncode=waited.returncode,
            long_output=long_output.strip(),
            recoverable=recoverable,
            log_warnings=warnings,
        )

    # ------------------------------------------------------- power control

    def boot_id(self) -> str:
        return self.ssh(
            "cat /proc/sys/kernel/random/boot_id", check=True, timeout=60
        ).stdout.strip()

    def shutdown(self, timeout: float = 120) -> None:
        """Power the guest off cleanly (ssh poweroff, else ACPI), then kill QEMU."""
        if not self.is_running():
            return
        assert self.proc is not None
        if self.ssh_key is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.ssh("sudo systemctl poweroff", timeout=30)
        else:
            with contextlib.suppress(OSError, VMError):
                self.qmp("system_powerdown")
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError, VMError):
                self.qmp("system_powerdown")
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
                raise self._fail(f"guest did not power off within {timeout:.0f} s") from None
        self.proc = None

    def reboot(self, timeout: float = 600) -> float:
        """Reboot the guest and wait until ssh works again with a new boot id.

        Returns the seconds from the reboot request to the new login.
        """
        before = self.boot_id()
        start = time.monotonic()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.ssh("sudo systemctl reboot", timeout=30)
        deadline = start + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                proc = self.ssh("cat /proc/sys/kernel/random/boot_id", timeout=30)
            except subprocess.TimeoutExpired:
                proc = None
            if proc is not None and proc.returncode == 0 and proc.stdout.strip() != before:
                return time.monotonic() - start
            time.sleep(3)
        raise self._fail(f"guest did not come back within {timeout:.0f} s of reboot")


def _image_format(path: Path) -> str:
    proc = subprocess.run(
        [QEMU_IMG, "info", "--output=json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    fmt: str = json.loads(proc.stdout)["format"]
    return fmt
