"""The boot tier's reader of fleet-link captures (tests/boot/fleet_capture.py) on pcap files made
here frame by frame, shaped as tcpdump on the loopback interface writes them (libpcap, Ethernet;
each fleet-link frame inside a UDP datagram between the two QEMUs' ports): it unwraps the
link's frames, finds the TCP connections and their TLS handshakes, and any clear text,
including a secret in a URL's percent-encoding or cut across two segments, and finds no secret
that is not there."""

from __future__ import annotations

import importlib.util
import ipaddress
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "boot_capture", REPO / "tests" / "boot" / "fleet_capture.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


capture = _load()

SHARED, DOCK = "10.0.5.24", "10.0.5.30"
# The header tcpdump 4.99 writes (read from one): pcap 2.4, snaplen 262144, Ethernet.
HEADER = bytes.fromhex("d4c3b2a10200040000000000000000000000040001000000")
PORT_A, PORT_B = 41001, 41002  # the fleet link's two UDP ports


def ethernet_tcp(
    source: str, destination: str, sport: int, dport: int, flags: int, payload: bytes = b""
) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(tcp),
        0,
        0,
        64,
        6,
        0,
        ipaddress.IPv4Address(source).packed,
        ipaddress.IPv4Address(destination).packed,
    )
    frame = b"\x52\x54\x00\xf1\x00\x01" + b"\x52\x54\x00\xf1\x00\x02" + b"\x08\x00" + ip + tcp
    return frame + b"\0" * max(0, 60 - len(frame))  # padded to Ethernet's minimum


def udp(source_port: int, destination_port: int, payload: bytes) -> bytes:
    """A loopback frame as tcpdump sees it on lo: Ethernet (zero addresses), IPv4 127.0.0.1 to
    itself, UDP between the two ports, carrying ``payload``."""
    datagram = struct.pack("!HHHH", source_port, destination_port, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(datagram), 0, 0, 64, 17, 0, b"\x7f\0\0\1", b"\x7f\0\0\1"
    )
    return b"\0" * 12 + b"\x08\x00" + ip + datagram


def wrapped(frame: bytes, towards_b: bool = True) -> bytes:
    """A fleet-link frame in its datagram, from one QEMU's port to the other's."""
    return udp(PORT_A, PORT_B, frame) if towards_b else udp(PORT_B, PORT_A, frame)


def pcap(*frames: bytes) -> bytes:
    out = HEADER
    for n, frame in enumerate(frames):
        out += struct.pack("<IIII", 1000 + n, 0, len(frame), len(frame)) + frame
    return out


SYN, SYN_ACK, ACK_PSH = 0x02, 0x12, 0x18
CLIENT_HELLO = b"\x16\x03\x01\x00\x40\x01" + b"\0" * 10
SERVER_HELLO = b"\x16\x03\x03\x00\x40\x02" + b"\0" * 10


def test_the_header_is_what_tcpdump_writes() -> None:
    assert list(capture.frames(HEADER)) == []


def test_link_frames_are_unwrapped_from_their_datagrams_only() -> None:
    inner = ethernet_tcp(DOCK, SHARED, 40000, 5432, SYN)
    data = pcap(wrapped(inner), wrapped(inner, towards_b=False), udp(5353, 5353, inner))
    assert len(list(capture.frames(data))) == 3
    assert capture.link_frames(data, (PORT_A, PORT_B)) == [inner, inner]
    assert capture.link_frames(data, (PORT_B,)) == [inner, inner]
    assert capture.link_frames(data, (9,)) == []


def test_connections_handshakes_and_payloads_are_found() -> None:
    link = [
        ethernet_tcp(DOCK, SHARED, 40000, 5432, SYN),
        ethernet_tcp(SHARED, DOCK, 5432, 40000, SYN_ACK),
        ethernet_tcp(DOCK, SHARED, 40000, 5432, ACK_PSH, b"\0\0\0\x08\x04\xd2\x16\x2f"),
        ethernet_tcp(DOCK, SHARED, 40000, 5432, ACK_PSH, CLIENT_HELLO),
        ethernet_tcp(SHARED, DOCK, 5432, 40000, ACK_PSH, SERVER_HELLO),
        ethernet_tcp(DOCK, SHARED, 40001, 6380, SYN),
        ethernet_tcp(DOCK, SHARED, 40002, 6380, SYN),
        ethernet_tcp(DOCK, SHARED, 40002, 6380, ACK_PSH, b"AUTH alpha in clear"),
        ethernet_tcp(SHARED, DOCK, 50000, 3001, SYN),
    ]
    data = pcap(*(wrapped(f) for f in link))
    found = capture.segments(capture.link_frames(data, (PORT_A, PORT_B)))
    assert len(found) == 9
    assert capture.opened_ports(found, SHARED) == {5432: 1, 6380: 2}
    assert capture.opened_ports(found, SHARED, client=DOCK) == {5432: 1, 6380: 2}
    assert capture.opened_ports(found, SHARED, client="10.0.5.99") == {}
    assert capture.opened_ports(found, DOCK) == {3001: 1}
    assert capture.payload_bytes(found, SHARED, 5432) == 8 + 2 * len(CLIENT_HELLO)
    # PostgreSQL's SSLRequest comes first; the ClientHello after it still counts.
    assert capture.tls_handshakes(found, SHARED) == {5432: (1, 1)}


def test_clear_text_is_found_in_any_frame_and_only_there() -> None:
    secrets = {"db": "pw/with:odd&chars", "key": "api-key-0123456789", "absent": "never-sent"}
    data = pcap(
        wrapped(ethernet_tcp(DOCK, SHARED, 40000, 6380, ACK_PSH, b"AUTH a api-key-0123456789\r\n")),
        wrapped(
            ethernet_tcp(DOCK, SHARED, 40001, 3001, ACK_PSH, b"GET /?p=pw%2Fwith%3Aodd%26chars")
        ),
    )
    assert capture.clear_text_found(data, secrets) == ["db", "key"]
    assert capture.clear_text_found(data, [("prompt", "a prompt")]) == []


def test_clear_text_cut_across_two_segments_is_found_in_its_stream() -> None:
    first = ethernet_tcp(DOCK, SHARED, 40000, 11434, ACK_PSH, b'{"prompt": "a secret pro')
    second = ethernet_tcp(DOCK, SHARED, 40000, 11434, ACK_PSH, b'mpt of the test"}')
    other = ethernet_tcp(DOCK, SHARED, 40001, 11434, ACK_PSH, b"between")
    data = pcap(wrapped(first), wrapped(other), wrapped(second))
    found = capture.segments(capture.link_frames(data, (PORT_A, PORT_B)))
    values = {"prompt": "a secret prompt of the test"}
    assert capture.clear_text_found(data, values) == []  # not in any one frame
    assert capture.clear_text_found(data, values, found) == ["prompt"]


def test_a_file_still_being_written_ends_at_its_last_whole_frame() -> None:
    whole = pcap(wrapped(ethernet_tcp(DOCK, SHARED, 40000, 5432, SYN)))
    cut = pcap(
        wrapped(ethernet_tcp(DOCK, SHARED, 40000, 5432, SYN)),
        wrapped(ethernet_tcp(DOCK, SHARED, 1, 2, SYN)),
    )
    assert len(list(capture.frames(cut[:-10]))) == len(list(capture.frames(whole))) == 1


@pytest.mark.parametrize(
    "data",
    [b"", b"not a pcap file at all, not at all", HEADER[:20] + b"\x71\0\0\0"],
)
def test_what_is_not_an_ethernet_pcap_is_refused(data: bytes) -> None:
    with pytest.raises(capture.PcapError):
        list(capture.frames(data))


def test_the_capture_command_records_only_the_links_ports(tmp_path: Path) -> None:
    command = capture.LinkCapture(tmp_path / "link.pcap", (PORT_B, PORT_A)).command()
    assert command[1:3] == ["-i", "lo"]
    assert command[-1] == f"udp and host 127.0.0.1 and (port {PORT_A} or port {PORT_B})"
    assert command[command.index("-w") + 1] == str(tmp_path / "link.pcap")
