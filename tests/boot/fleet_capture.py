"""A capture of the fleet link between the two test guests, and what it holds.

The fleet link is QEMU's UDP socket netdev on 127.0.0.1 (tests/infra/vm.py ``FleetLink``): every
Ethernet frame one guest's fleet NIC sends is one UDP datagram from its port to the other
guest's, so the loopback interface carries the whole wire between the hosts and nothing else
on those two ports. ``LinkCapture`` records it with tcpdump on ``lo`` (as a capture on a bridge
between the hosts would record it, but with each frame wrapped in its datagram), started before
the guests and stopped when the test has done its traffic.

Reading it needs only the standard library: which TCP conversations the guests held, which of
them began with a TLS handshake, and whether any given clear text occurs in the file's raw
bytes. The clear-text check searches the whole file, headers and payloads of every frame alike,
so a secret that crossed the wire unencrypted in any frame is found; a secret that crossed it
only inside TLS records is not there to find.
"""

from __future__ import annotations

import ipaddress
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

PCAP_MAGIC = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">"}  # microsecond pcap, either order
PCAP_MAGIC_NS = {b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}  # nanosecond pcap
LINKTYPE_ETHERNET = 1  # Linux's loopback interface is Ethernet to libpcap too
ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_VLAN = 0x8100
PROTO_TCP, PROTO_UDP = 6, 17
TCP_SYN, TCP_ACK = 0x02, 0x10
TLS_HANDSHAKE = 0x16
CLIENT_HELLO, SERVER_HELLO = 0x01, 0x02


class PcapError(ValueError):
    """Not a libpcap file of Ethernet frames."""


class CaptureError(RuntimeError):
    """tcpdump did not start, or failed."""


# -- recording ---------------------------------------------------------------------------------------


class LinkCapture:
    """tcpdump on ``lo`` for the fleet link's UDP ports, writing ``pcap``; a context manager
    (``start``/``stop`` for a capture that outlives a block). Needs CAP_NET_RAW (root)."""

    def __init__(self, pcap: Path, ports: Iterable[int]) -> None:
        self.pcap = Path(pcap).resolve()
        self.ports = tuple(sorted(set(ports)))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.pcap.with_suffix(".tcpdump.log")

    def command(self) -> list[str]:
        match = " or ".join(f"port {p}" for p in self.ports)
        tcpdump = shutil.which("tcpdump") or "tcpdump"
        # -U and --immediate-mode: each packet read and written at once (a stop loses none);
        # -B: a 32 MiB kernel buffer; -s 0: whole frames; -Z root: keep writing as root
        # (Debian's tcpdump drops to its own user, who may not write here); -n: no lookups.
        options = [
            "-i",
            "lo",
            "-n",
            "-U",
            "--immediate-mode",
            "-B",
            "32768",
            "-s",
            "0",
            "-Z",
            "root",
            "-w",
            str(self.pcap),
        ]
        return [tcpdump, *options, f"udp and host 127.0.0.1 and ({match})"]

    def start(self, timeout: float = 30) -> LinkCapture:
        self.pcap.parent.mkdir(parents=True, exist_ok=True)
        log = self.log.open("wb")
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
        )
        log.close()
        deadline = time.monotonic() + timeout
        # tcpdump says "listening on lo" once the filter is attached: from then on, it sees all.
        while b"listening on" not in self.log.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise CaptureError(f"tcpdump did not start: {self.log.read_text(errors='replace')}")
            time.sleep(0.05)
        return self

    def stop(self) -> bytes:
        """Stop tcpdump (it writes what it holds and exits); the capture's bytes."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        return self.pcap.read_bytes() if self.pcap.exists() else b""

    def __enter__(self) -> LinkCapture:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- reading -----------------------------------------------------------------------------------------


def frames(data: bytes) -> Iterator[bytes]:
    """Every frame of a libpcap file, as captured (a record cut short at the end, as in a file
    still being written, is left out)."""
    magic = data[:4]
    order = PCAP_MAGIC.get(magic) or PCAP_MAGIC_NS.get(magic)
    if order is None or len(data) < 24:
        raise PcapError(f"not a pcap file (magic {magic.hex()})")
    linktype = struct.unpack(f"{order}I", data[20:24])[0] & 0x0FFFFFFF
    if linktype != LINKTYPE_ETHERNET:
        raise PcapError(f"link type {linktype}, not Ethernet")
    offset = 24
    while offset + 16 <= len(data):
        _, _, included, _ = struct.unpack(f"{order}IIII", data[offset : offset + 16])
        offset += 16
        if offset + included > len(data):
            return
        yield data[offset : offset + included]
        offset += included


def _ipv4(frame: bytes) -> bytes | None:
    """The IPv4 packet an Ethernet frame carries (None for anything else)."""
    if len(frame) < 14:
        return None
    offset = 12
    ethertype = struct.unpack("!H", frame[offset : offset + 2])[0]
    if ethertype == ETHERTYPE_VLAN:
        offset += 4
        ethertype = struct.unpack("!H", frame[offset : offset + 2])[0]
    ip = frame[offset + 2 :]
    if ethertype != ETHERTYPE_IPV4 or len(ip) < 20 or ip[0] >> 4 != 4:
        return None
    total = struct.unpack("!H", ip[2:4])[0]
    return ip[: max(total, 20)]


def link_frames(data: bytes, ports: Iterable[int]) -> list[bytes]:
    """The fleet link's own frames in a capture of its UDP datagrams: the payload of every
    IPv4 UDP datagram from or to one of ``ports``."""
    wanted = set(ports)
    found = []
    for frame in frames(data):
        ip = _ipv4(frame)
        if ip is None or ip[9] != PROTO_UDP:
            continue
        header = (ip[0] & 0x0F) * 4
        udp = ip[header:]
        if len(udp) < 8:
            continue
        source, destination = struct.unpack("!HH", udp[:4])
        if source in wanted or destination in wanted:
            found.append(udp[8:])
    return found


@dataclass(frozen=True)
class Segment:
    """One TCP segment over IPv4: its addresses, ports, flags and payload."""

    source: str
    destination: str
    source_port: int
    destination_port: int
    flags: int
    payload: bytes

    @property
    def opens(self) -> bool:
        """A SYN without ACK: a client opening a connection to ``destination_port``."""
        return bool(self.flags & TCP_SYN) and not self.flags & TCP_ACK

    def hello(self) -> int | None:
        """CLIENT_HELLO or SERVER_HELLO when the payload starts a TLS record with one."""
        p = self.payload
        if len(p) >= 6 and p[0] == TLS_HANDSHAKE and p[1] == 3 and p[5] in (1, 2):
            return p[5]
        return None


def tcp_segment(frame: bytes) -> Segment | None:
    """The TCP segment an Ethernet frame carries over IPv4 (None for anything else)."""
    ip = _ipv4(frame)
    if ip is None or ip[9] != PROTO_TCP:
        return None
    header = (ip[0] & 0x0F) * 4
    tcp = ip[header:]
    if len(tcp) < 20:
        return None
    source_port, destination_port = struct.unpack("!HH", tcp[:4])
    data_offset = (tcp[12] >> 4) * 4
    return Segment(
        source=str(ipaddress.IPv4Address(ip[12:16])),
        destination=str(ipaddress.IPv4Address(ip[16:20])),
        source_port=source_port,
        destination_port=destination_port,
        flags=tcp[13],
        payload=tcp[data_offset:],
    )


def segments(link: Iterable[bytes]) -> list[Segment]:
    """Every TCP-over-IPv4 segment of the link's frames."""
    return [s for s in map(tcp_segment, link) if s is not None]


def opened_ports(
    found: Iterable[Segment], server: str, client: str | None = None
) -> dict[int, int]:
    """Server port -> TCP connections opened to ``server`` (SYNs without ACK), from
    ``client`` only when given."""
    ports: dict[int, int] = {}
    for s in found:
        if s.opens and s.destination == server and client in (None, s.source):
            ports[s.destination_port] = ports.get(s.destination_port, 0) + 1
    return ports


def payload_bytes(found: Iterable[Segment], server: str, port: int) -> int:
    """Bytes of TCP payload to and from ``server:port``."""
    total = 0
    for s in found:
        if (s.destination, s.destination_port) == (server, port) or (
            s.source,
            s.source_port,
        ) == (server, port):
            total += len(s.payload)
    return total


def tls_handshakes(found: Iterable[Segment], server: str) -> dict[int, tuple[int, int]]:
    """Server port -> (TLS ClientHellos sent to ``server`` on it, ServerHellos it answered)."""
    hellos: dict[int, list[int]] = {}
    for s in found:
        kind = s.hello()
        if kind == CLIENT_HELLO and s.destination == server:
            hellos.setdefault(s.destination_port, [0, 0])[0] += 1
        elif kind == SERVER_HELLO and s.source == server:
            hellos.setdefault(s.source_port, [0, 0])[1] += 1
    return {port: (c, h) for port, (c, h) in hellos.items()}


def spellings(value: str) -> set[bytes]:
    """The ways a secret could cross the wire as clear text: itself (UTF-8) and
    percent-encoded, as in a URL."""
    return {value.encode(), quote(value, safe="").encode()}


def streams(found: Iterable[Segment]) -> list[bytes]:
    """Each TCP connection's payload in one direction, its segments joined in capture order,
    so that a text cut across two segments is whole again (retransmissions are not dropped:
    they repeat bytes, they never hide any)."""
    joined: dict[tuple[str, int, str, int], list[bytes]] = {}
    for s in found:
        if s.payload:
            key = (s.source, s.source_port, s.destination, s.destination_port)
            joined.setdefault(key, []).append(s.payload)
    return [b"".join(parts) for parts in joined.values()]


def clear_text_found(
    data: bytes,
    values: Mapping[str, str] | Iterable[tuple[str, str]],
    found: Iterable[Segment] = (),
) -> list[str]:
    """The names of ``values`` (name -> text) any spelling of which occurs in ``data`` or in
    one of the TCP streams of ``found`` (its segments)."""
    haystacks = [data, *streams(found)]
    items = values.items() if isinstance(values, Mapping) else values
    return sorted(
        name
        for name, value in items
        if any(b in hay for b in spellings(value) for hay in haystacks)
    )
