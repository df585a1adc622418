#!/usr/bin/env python3
"""A browser's side of the front door, for tests/containers/test_front_door_live.py.

The test copies this file into its client container, on the test's own Docker network, and
runs it there with the container's python3 (standard library only, plus curl for uploads).
Names resolve through Docker's DNS, where the front door's container carries the instances'
host names as aliases, as a fleet's DNS points them at their host: nothing here dials an
address outside that network.

  client.py request JSON    one HTTP(S) request; a redirect is reported, never followed
  client.py stream JSON     a POST whose answer is read as it arrives, each read timed
  client.py websocket JSON  a websocket upgrade and the first frame the server sends
  client.py upload JSON     a multipart upload of a file of a given size, with curl ("status",
                            "body", "curl_exit": 18 when the answer came incomplete)

JSON holds "url", and as needed "method", "headers", "body" (text), "cafile" (the CA that
must have issued the server's certificate; the system's when absent), "sni" (the TLS server
name when it is not the url's host) and "connect" (an address to dial instead of the url's
host). Each prints one JSON object: "error" when no HTTP answer came, else "status",
"headers" ([name, value] pairs, as sent) and more per command.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from typing import Any

TIMEOUT = 60
WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455


def target(args: dict[str, Any]) -> tuple[str, str, int, str]:
    """(scheme, host, port, path with query) of args["url"]."""
    url = urllib.parse.urlsplit(args["url"])
    port = url.port or (443 if url.scheme == "https" else 80)
    path = url.path or "/"
    return url.scheme, str(url.hostname), port, path + (f"?{url.query}" if url.query else "")


def dial(args: dict[str, Any]) -> tuple[socket.socket, dict[str, Any]]:
    """A connected socket, TLS-wrapped for https (verified, with SNI), and what TLS said."""
    scheme, host, port, _ = target(args)
    raw = socket.create_connection((args.get("connect") or host, port), timeout=TIMEOUT)
    if scheme != "https":
        return raw, {}
    context = ssl.create_default_context(cafile=args.get("cafile"))
    wrapped = context.wrap_socket(raw, server_hostname=args.get("sni") or host)
    cert = wrapped.getpeercert() or {}
    names = [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    der = wrapped.getpeercert(binary_form=True) or b""
    return wrapped, {
        "tls": wrapped.version(),
        "names": names,
        "cert_sha256": hashlib.sha256(der).hexdigest(),
    }


def send(args: dict[str, Any]) -> tuple[http.client.HTTPResponse, dict[str, Any]]:
    _, host, _, path = target(args)
    sock, tls = dial(args)
    connection = http.client.HTTPConnection(host, timeout=TIMEOUT)
    connection.sock = sock  # already connected (and TLS-wrapped): http.client uses it as is
    headers = {"Host": host, "User-Agent": "front-door-test-client", **args.get("headers", {})}
    body = args.get("body")
    connection.request(args.get("method", "GET"), path, body=body, headers=headers)
    return connection.getresponse(), tls


def answer_of(response: http.client.HTTPResponse, tls: dict[str, Any]) -> dict[str, Any]:
    return {"status": response.status, "headers": response.getheaders(), **tls}


def request(args: dict[str, Any]) -> dict[str, Any]:
    response, tls = send(args)
    body = response.read().decode(errors="replace")
    return {**answer_of(response, tls), "body": body}


def stream(args: dict[str, Any]) -> dict[str, Any]:
    """Each read of the answer as it arrives: [time.time() when it came, its text]."""
    started = time.time()
    response, tls = send(args)
    reads: list[tuple[float, str]] = []
    while True:
        data = response.read1(65536)
        if not data:
            break
        reads.append((time.time(), data.decode(errors="replace")))
    return {**answer_of(response, tls), "started": started, "reads": reads}


def websocket(args: dict[str, Any]) -> dict[str, Any]:
    """The upgrade's answer, whether its accept key is right, and the first frame's text."""
    _, host, _, path = target(args)
    sock, tls = dial(args)
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in args.get("headers", {}).items()),
    ]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            break
        head += data
    head, _, rest = head.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode(errors="replace").split("\r\n")
    headers = [line.split(": ", 1) for line in header_lines if ": " in line]
    status = int(status_line.split()[1]) if len(status_line.split()) > 1 else 0
    out: dict[str, Any] = {"status": status, "headers": headers, **tls}
    expected = base64.b64encode(hashlib.sha1((key + WEBSOCKET_GUID).encode()).digest()).decode()
    out["accept_ok"] = (
        dict((k.lower(), v) for k, v in headers).get("sec-websocket-accept") == expected
    )
    if status != 101:
        return out

    def take(count: int) -> bytes:
        nonlocal rest
        while len(rest) < count:
            data = sock.recv(4096)
            if not data:
                raise ConnectionError("the connection closed inside a frame")
            rest += data
        taken, rest = rest[:count], rest[count:]
        return taken

    first, second = take(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(take(2), "big")
    elif length == 127:
        length = int.from_bytes(take(8), "big")
    payload = take(length)  # a server's frames are never masked
    out["frame"] = {"fin": bool(first & 0x80), "opcode": first & 0x0F, "text": payload.decode()}
    return out


def upload(args: dict[str, Any]) -> dict[str, Any]:
    """POST a file of args["size"] bytes as multipart form data, with curl as a browser would
    send it: its length declared, and no "Expect: 100-continue" to wait on; curl stops
    sending when an answer comes first. args["http"] may force "1.1" or "2"."""
    path = f"/tmp/{args['name']}"
    with open(path, "wb") as out:
        line = b"front door upload test line\n"
        out.write((line * (args["size"] // len(line) + 1))[: args["size"]])
    command = ["curl", "--silent", "--show-error", "--max-time", str(TIMEOUT)]
    command += ["-o", "/tmp/answer", "-w", "%{http_code} %{size_upload}"]
    command += ["-H", "Expect:", "-F", f"file=@{path};type=text/plain"]
    if args.get("cafile"):
        command += ["--cacert", args["cafile"]]
    if args.get("http"):  # "1.1" or "2"; curl offers HTTP/2 and takes it when the server does
        command.append(f"--http{args['http']}")
    for name, value in args.get("headers", {}).items():
        command += ["-H", f"{name}: {value}"]
    done = subprocess.run([*command, args["url"]], capture_output=True, text=True, check=False)
    status, uploaded = [*done.stdout.split(), "0", "0"][:2]
    body = ""
    if os.path.exists("/tmp/answer"):
        with open("/tmp/answer", errors="replace") as answer:
            body = answer.read()
        os.unlink("/tmp/answer")
    return {
        "status": int(status),
        "uploaded": int(float(uploaded)),
        "body": body,
        "curl_exit": done.returncode,
        "stderr": done.stderr,
    }


COMMANDS = {"request": request, "stream": stream, "websocket": websocket, "upload": upload}


def main(argv: list[str]) -> None:
    command, args = COMMANDS[argv[0]], json.loads(argv[1])
    try:
        out = command(args)
    except (OSError, http.client.HTTPException) as exc:
        out = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
