#!/usr/bin/env python3
"""TEST DOUBLE of the `ollama` binary (NOT Ollama). No Ollama binary can be had on the test
machines, so the boot tier installs this script, shaped like the real release, to check OUR
install steps: download, checksum, unpack, user, unit, model pull; and the services tier runs
it behind the generated TLS terminator. It serves what the generated scripts, the terminator's
clients and `owuibuild status` call, and records pulled models as files in the model store.

  ollama serve            HTTP on $OLLAMA_HOST (default 127.0.0.1:11434):
                          GET /api/version, GET /api/tags, GET /api/ps, POST /api/show,
                          POST /api/pull, POST /api/create, DELETE /api/delete,
                          POST /api/chat and /api/generate (streamed, see below),
                          POST /api/embed and /api/embeddings, GET|HEAD /
  ollama pull NAME        POST /api/pull to the server
  ollama show NAME        POST /api/show to the server; exit 1 "model not found" when absent
  ollama list             GET /api/tags from the server
  ollama --version | -v   prints the double's version

Models go to $OLLAMA_MODELS (default ~/.ollama/models), as the real one lays them out:
manifests/registry.ollama.ai/library/<name>/<tag>.

As Ollama does (server/routes.go, allowedHostsMiddleware), a server bound to a loopback address
answers 403 to a request whose Host (its port stripped) is not local: local is empty,
`localhost`, this machine's host name, a name ending in .localhost, .local or .internal, or an
IP address that is loopback, private (10/8, 172.16/12, 192.168/16, fc00::/7), unspecified or
one of this machine's own. Bound to any other address it takes every Host.

Streaming: /api/chat and /api/generate answer, unless the body says "stream": false, with
STREAM_CHUNKS application/x-ndjson lines, chunked, each written and flushed STREAM_DELAY
seconds after the one before, the last with "done": true. Each line carries, besides
Ollama's fields, "double_sent_at" (time.time() when it was written). With
$OLLAMA_DOUBLE_HOLD_LAST=1 each streamed answer, before its last line, waits until a POST to
/api/double/release (each POST lets one held or future answer finish; HOLD_TIMEOUT seconds at
most): a test that has the first line in hand while the last is held knows, by events and not
by the clock, that a proxy passed the stream on unbuffered. GET /api/double/streams answers
{"streams": [{"path", "sent", "of", "held", "done"}, ...]}, one entry per streamed answer in
order, "sent" counting the lines written so far and "done" true once the last one is.

Embeddings: POST /api/embed answers {"model", "embeddings": [vector per input]} and the older
POST /api/embeddings {"embedding": vector}. A vector has $OLLAMA_DOUBLE_EMBEDDING_LENGTH
numbers (default 4, the length this double has always answered), EMBEDDING repeated as far
as needed, the same for every input; set it to the plan's embedding_dimensions where vectors
go on into Qdrant collections made for that length.

Records, so a test can see what reached the server (neither exists in Ollama):
GET /api/double/pulls answers {"count": N, "models": [...]} for the pulls this server process
served, and when $OLLAMA_DOUBLE_PULL_LOG names a file, each pull appends one line (the model
name) to it. GET /api/double/requests answers {"requests": [{"method", "path", "host",
"status"}, ...]}: every request this process answered, in order, refused ones included, except
those to /api/double/ itself ("path" as sent; requests are routed, as by Ollama's router, on
its percent-decoded path without the query).
"""

import ipaddress
import itertools
import json
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = "0.0.0-test-double"
STREAM_CHUNKS = 5
STREAM_DELAY = 0.3  # seconds between two streamed lines
HOLD_TIMEOUT = 120.0  # seconds a held stream waits for its release before it ends anyway
EMBEDDING = [0.125, -0.25, 0.5, -1.0]


def host() -> tuple[str, int]:
    value = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").removeprefix("http://")
    name, _, port = value.rpartition(":")
    return (name or "127.0.0.1", int(port or 11434))


def store() -> Path:
    default = Path.home() / ".ollama" / "models"
    return Path(os.environ.get("OLLAMA_MODELS") or default)


def manifest(model: str) -> Path:
    name, _, tag = model.partition(":")
    return store() / "manifests" / "registry.ollama.ai" / "library" / name / (tag or "latest")


def pull_log() -> Path | None:
    value = os.environ.get("OLLAMA_DOUBLE_PULL_LOG")
    return Path(value) if value else None


PULLS: list[str] = []  # the pulls this server process served
REQUESTS: list[dict[str, object]] = []  # every request answered (see the docstring)
STREAMS: list[dict[str, object]] = []  # every streamed answer (see the docstring)
LOCK = threading.Lock()
RELEASES = threading.Semaphore(0)  # one per POST /api/double/release


def embedding_length() -> int:
    value = os.environ.get("OLLAMA_DOUBLE_EMBEDDING_LENGTH", "")
    if not value:
        return len(EMBEDDING)
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"OLLAMA_DOUBLE_EMBEDDING_LENGTH must be a number from 1, not {value!r}")
    return int(value)


def embedding() -> list[float]:
    """The one vector this double answers for every input."""
    length = embedding_length()
    return [EMBEDDING[n % len(EMBEDDING)] for n in range(length)]


def hold_last() -> bool:
    return os.environ.get("OLLAMA_DOUBLE_HOLD_LAST") == "1"


def models() -> list[dict[str, object]]:
    root = store() / "manifests" / "registry.ollama.ai" / "library"
    found = []
    for path in sorted(root.glob("*/*")) if root.is_dir() else []:
        found.append({"name": f"{path.parent.name}:{path.name}", "size": path.stat().st_size})
    return found


# -- Ollama's allowed-hosts rule ------------------------------------------------------------------

# Go's netip.Addr.IsPrivate (RFC 1918 and RFC 4193); Python's is_private is wider.
PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def own_addresses() -> set[str]:
    """This machine's interface addresses (Ollama's isLocalIP), from /proc on Linux."""
    found: set[str] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except OSError:
        lines = []
    for previous, line in itertools.pairwise(lines):
        if "/32 host LOCAL" in line:
            found.add(previous.split()[-1])
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(str(ipaddress.IPv6Address(int(raw, 16))))
    except (OSError, ValueError, IndexError):
        pass
    return found


def split_host(value: str) -> str:
    """The Host header without its port, as Go's net.SplitHostPort (brackets dropped)."""
    if value.startswith("["):
        end = value.find("]")
        if end > 0 and (value[end + 1 :] == "" or value[end + 1 :].startswith(":")):
            return value[1:end] if value[end + 1 :] else value
        return value
    if value.count(":") == 1:
        return value.split(":")[0]
    return value


def host_allowed(value: str) -> bool:
    name = split_host(value)
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # as Go's netip unmaps it
    if address is not None and (
        address.is_loopback
        or address.is_unspecified
        or any(address in net for net in PRIVATE if net.version == address.version)
        or str(address) in own_addresses()
    ):
        return True
    name = name.lower()
    if name in ("", "localhost", socket.gethostname().lower()):
        return True
    return name.endswith(LOCAL_SUFFIXES)


def bound_to_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


# -- the server -----------------------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.1, so streamed answers go out chunked, as Ollama's do.
    protocol_version = "HTTP/1.1"
    check_hosts = True  # set from the bound address when the server starts

    @property
    def route(self) -> str:
        """The path requests are routed on: decoded, without the query (Go's URL.Path)."""
        return urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)

    def record(self, code: int) -> None:
        if not self.route.startswith("/api/double/"):
            entry = {
                "method": self.command,
                "path": self.path,
                "host": self.headers.get("Host", ""),
                "status": code,
            }
            with LOCK:
                REQUESTS.append(entry)

    def reply(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.record(code)
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def refused_host(self) -> bool:
        """Ollama's allowed-hosts middleware: 403 with an empty body."""
        if not self.check_hosts or host_allowed(self.headers.get("Host", "")):
            return False
        self.record(403)
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()
        return True

    def body(self) -> dict[str, object]:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        try:
            doc = json.loads(data or b"{}")
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def root(self, head: bool) -> None:
        data = b"Ollama is running (TEST DOUBLE)"
        self.record(200)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        if self.refused_host():
            return
        if self.route == "/":
            self.root(head=True)
        else:
            self.record(404)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def do_GET(self) -> None:
        if self.refused_host():
            return
        if self.route == "/api/version":
            self.reply(200, {"version": VERSION})
        elif self.route == "/api/tags":
            self.reply(200, {"models": models()})
        elif self.route == "/api/ps":
            self.reply(200, {"models": []})  # nothing is ever loaded
        elif self.route == "/api/double/pulls":
            self.reply(200, {"count": len(PULLS), "models": PULLS})
        elif self.route == "/api/double/requests":
            with LOCK:
                requests = [dict(r) for r in REQUESTS]
            self.reply(200, {"requests": requests})
        elif self.route == "/api/double/streams":
            with LOCK:
                streams = [dict(s) for s in STREAMS]
            self.reply(200, {"streams": streams})
        elif self.route == "/":
            self.root(head=False)
        else:
            self.reply(404, {"error": "not found"})

    def do_DELETE(self) -> None:
        body = self.body()
        if self.refused_host():
            return
        if self.route != "/api/delete":
            self.reply(404, {"error": "not found"})
            return
        model = str(body.get("model") or body.get("name") or "")
        path = manifest(model) if model else None
        if path is None or not path.is_file():
            self.reply(404, {"error": f"model '{model}' not found"})
            return
        path.unlink()
        self.reply(200, {})

    def do_POST(self) -> None:
        body = self.body()
        if self.refused_host():
            return
        if self.route in ("/api/chat", "/api/generate"):
            self.answer(body)
            return
        if self.route == "/api/double/release":
            RELEASES.release()
            self.reply(200, {})
            return
        if self.route == "/api/embed":
            inputs = body.get("input")
            count = len(inputs) if isinstance(inputs, list) else 1
            vectors = [embedding() for _ in range(count)]
            self.reply(200, {"model": body.get("model"), "embeddings": vectors})
            return
        if self.route == "/api/embeddings":
            self.reply(200, {"embedding": embedding()})
            return
        if self.route not in ("/api/pull", "/api/show", "/api/create"):
            self.reply(404, {"error": "not found"})
            return
        model = str(body.get("model") or body.get("name") or "")
        if not model:
            self.reply(400, {"error": "model is required"})
            return
        path = manifest(model)
        if self.route == "/api/show":
            if path.is_file():
                details = {"family": "test-double", "format": "gguf"}
                self.reply(200, {"modelfile": f"# TEST DOUBLE of {model}", "details": details})
            else:
                self.reply(404, {"error": f"model '{model}' not found"})
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"double": True, "model": model}) + "\n")
        if self.route == "/api/pull":
            PULLS.append(model)
            log = pull_log()
            if log is not None:
                with log.open("a") as fh:
                    fh.write(model + "\n")
        self.reply(200, {"status": "success"})

    def answer(self, body: dict[str, object]) -> None:
        """A chat or generate answer: one JSON object, or streamed lines (Ollama's default)."""
        model = body.get("model")
        chat = self.route == "/api/chat"
        words = [f"word{n} " for n in range(STREAM_CHUNKS)]

        def line(text: str, done: bool) -> dict[str, object]:
            doc: dict[str, object] = {
                "model": model,
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "done": done,
                "double_sent_at": time.time(),
            }
            if chat:
                doc["message"] = {"role": "assistant", "content": text}
            else:
                doc["response"] = text
            if done:
                doc["done_reason"] = "stop"
            return doc

        if body.get("stream") is False:
            self.reply(200, line("".join(words), True))
            return
        stream: dict[str, object] = {
            "path": self.route,
            "sent": 0,
            "of": len(words),
            "held": False,
            "done": False,
        }
        with LOCK:
            STREAMS.append(stream)
        self.record(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for n, word in enumerate(words):
            last = n == len(words) - 1
            if n:
                time.sleep(STREAM_DELAY)
            if last and hold_last():
                with LOCK:
                    stream["held"] = True
                RELEASES.acquire(timeout=HOLD_TIMEOUT)
                with LOCK:
                    stream["held"] = False
            data = json.dumps(line(word, last)).encode() + b"\n"
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
            with LOCK:
                # Noted before the answer's end goes out: a client that has read the whole
                # answer finds it noted.
                stream["sent"] = n + 1
                stream["done"] = last
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write("ollama-double: " + fmt % args + "\n")


def call(method: str, path: str, body: object = None) -> object:
    name, port = host()
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://{name}:{port}{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def show(model: str) -> int:
    """`ollama show NAME`: exit 0 with the model's details, 1 when the server lacks it."""
    try:
        answer = call("POST", "/api/show", {"model": model})
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            print(f"Error: model '{model}' not found", file=sys.stderr)
            return 1
        raise
    print(json.dumps(answer))
    return 0


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "help"
    if command in ("--version", "-v", "version"):
        print(f"ollama version is {VERSION}")
        return 0
    if command == "serve":
        embedding_length()  # a bad $OLLAMA_DOUBLE_EMBEDDING_LENGTH stops it here, not per request
        server = ThreadingHTTPServer(host(), Handler)
        Handler.check_hosts = bound_to_loopback(str(server.server_address[0]))
        print(f"ollama TEST DOUBLE listening on {host()[0]}:{host()[1]}", flush=True)
        server.serve_forever()
        return 0
    try:
        if command == "pull" and len(argv) == 2:
            call("POST", "/api/pull", {"model": argv[1]})
            print("success")
            return 0
        if command == "show" and len(argv) == 2:
            return show(argv[1])
        if command in ("list", "ls"):
            for m in call("GET", "/api/tags")["models"]:  # type: ignore[index]
                print(m["name"])
            return 0
    except OSError as exc:
        print(f"Error: could not connect to ollama server: {exc}", file=sys.stderr)
        return 1
    print("usage: ollama serve|pull NAME|show NAME|list|--version (TEST DOUBLE)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
