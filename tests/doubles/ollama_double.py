#!/usr/bin/env python3
"""TEST DOUBLE of the `ollama` binary (NOT Ollama). No Ollama binary can be had on the test
machines, so the boot tier installs this script, shaped like the real release, to check OUR
install steps: download, checksum, unpack, user, unit, model pull. It serves what the
generated scripts and `owuibuild status` call, and records pulled models as files in the model
store.

  ollama serve            HTTP on $OLLAMA_HOST (default 127.0.0.1:11434):
                          GET /api/version, GET /api/tags, GET /api/ps, POST /api/show,
                          POST /api/pull, GET|HEAD /
  ollama pull NAME        POST /api/pull to the server
  ollama show NAME        POST /api/show to the server; exit 1 "model not found" when absent
  ollama list             GET /api/tags from the server
  ollama --version | -v   prints the double's version

Models go to $OLLAMA_MODELS (default ~/.ollama/models), as the real one lays them out:
manifests/registry.ollama.ai/library/<name>/<tag>.

Pull counting, so a test can assert that no model was pulled (e.g. at a golden image's first
boot, whose models were baked): GET /api/double/pulls answers {"count": N, "models": [...]}
for the pulls this server process served, and when $OLLAMA_DOUBLE_PULL_LOG names a file, each
pull appends one line (the model name) to it. Neither exists in Ollama.
"""

import json
import os
import sys
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = "0.0.0-test-double"


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


def models() -> list[dict[str, object]]:
    root = store() / "manifests" / "registry.ollama.ai" / "library"
    found = []
    for path in sorted(root.glob("*/*")) if root.is_dir() else []:
        found.append({"name": f"{path.parent.name}:{path.name}", "size": path.stat().st_size})
    return found


class Handler(BaseHTTPRequestHandler):
    def reply(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def root(self, head: bool) -> None:
        data = b"Ollama is running (TEST DOUBLE)"
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def do_HEAD(self) -> None:
        if self.path == "/":
            self.root(head=True)
        else:
            self.send_response(404)
            self.end_headers()

    def do_GET(self) -> None:
        if self.path == "/api/version":
            self.reply(200, {"version": VERSION})
        elif self.path == "/api/tags":
            self.reply(200, {"models": models()})
        elif self.path == "/api/ps":
            self.reply(200, {"models": []})  # nothing is ever loaded
        elif self.path == "/api/double/pulls":
            self.reply(200, {"count": len(PULLS), "models": PULLS})
        elif self.path == "/":
            self.root(head=False)
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if self.path not in ("/api/pull", "/api/show"):
            self.reply(404, {"error": "not found"})
            return
        model = str(body.get("model") or body.get("name") or "")
        if not model:
            self.reply(400, {"error": "model is required"})
            return
        path = manifest(model)
        if self.path == "/api/show":
            if path.is_file():
                details = {"family": "test-double", "format": "gguf"}
                self.reply(200, {"modelfile": f"# TEST DOUBLE of {model}", "details": details})
            else:
                self.reply(404, {"error": f"model '{model}' not found"})
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"double": True, "model": model}) + "\n")
        PULLS.append(model)
        log = pull_log()
        if log is not None:
            with log.open("a") as fh:
                fh.write(model + "\n")
        self.reply(200, {"status": "success"})

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
        server = ThreadingHTTPServer(host(), Handler)
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
