#!/usr/bin/env python3
"""TEST DOUBLE of the `qdrant` binary (NOT Qdrant). No Qdrant binary can be had on the test
machines, so the boot tier installs this script, shaped like the real release tarball, to
check OUR install steps and configuration. It serves only what owuibuild probes:

  GET /readyz, /healthz, /livez   no key needed (as in Qdrant)
  GET /collections, GET /         need the api-key header to equal the configured key

Configuration, as Qdrant reads it: --config-path FILE (YAML: service.host, service.http_port,
service.api_key, storage.storage_path) and QDRANT__SERVICE__HOST / __HTTP_PORT / __API_KEY /
QDRANT__STORAGE__STORAGE_PATH, which win. Every request's path and whether its api-key was
right are appended to <storage_path>/test-double-requests.log (the key itself never is).
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = "0.0.0-test-double"


def settings(argv: list[str]) -> dict[str, object]:
    conf: dict[str, object] = {
        "host": "0.0.0.0",
        "port": 6333,
        "api_key": None,
        "storage": "./storage",
    }
    if "--config-path" in argv:
        import yaml

        path = argv[argv.index("--config-path") + 1]
        doc = yaml.safe_load(Path(path).read_text()) or {}
        service, storage = doc.get("service") or {}, doc.get("storage") or {}
        conf["host"] = service.get("host", conf["host"])
        conf["port"] = service.get("http_port", conf["port"])
        conf["api_key"] = service.get("api_key", conf["api_key"])
        conf["storage"] = storage.get("storage_path", conf["storage"])
    env = os.environ
    conf["host"] = env.get("QDRANT__SERVICE__HOST", conf["host"])
    conf["port"] = int(env.get("QDRANT__SERVICE__HTTP_PORT", conf["port"]))  # type: ignore[arg-type]
    conf["api_key"] = env.get("QDRANT__SERVICE__API_KEY", conf["api_key"])
    conf["storage"] = env.get("QDRANT__STORAGE__STORAGE_PATH", conf["storage"])
    return conf


def handler(conf: dict[str, object]) -> type[BaseHTTPRequestHandler]:
    log = Path(str(conf["storage"])) / "test-double-requests.log"

    class Handler(BaseHTTPRequestHandler):
        def reply(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            key = conf["api_key"]
            ok = key is None or self.headers.get("api-key") == key
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("a") as fh:
                fh.write(
                    json.dumps(
                        {
                            "path": self.path,
                            "api_key_ok": ok,
                            "api_key_sent": "api-key" in self.headers,
                        }
                    )
                    + "\n"
                )
            if self.path in ("/readyz", "/healthz", "/livez"):
                self.reply(200, {"title": "qdrant TEST DOUBLE", "status": "ready"})
            elif not ok:
                self.reply(
                    401,
                    {
                        "status": {
                            "error": "Must provide an API key or an Authorization bearer token"
                        }
                    },
                )
            elif self.path == "/collections":
                self.reply(200, {"result": {"collections": []}, "status": "ok", "time": 0})
            elif self.path == "/":
                self.reply(
                    200,
                    {"title": "qdrant - vector search engine (TEST DOUBLE)", "version": VERSION},
                )
            else:
                self.reply(404, {"status": {"error": "not found"}})

        def log_message(self, fmt: str, *args: object) -> None:
            sys.stderr.write("qdrant-double: " + fmt % args + "\n")

    return Handler


def main(argv: list[str]) -> int:
    if "--version" in argv or "-V" in argv:
        print(f"qdrant {VERSION}")
        return 0
    conf = settings(argv)
    server = ThreadingHTTPServer((str(conf["host"]), int(conf["port"])), handler(conf))  # type: ignore[arg-type]
    print(f"qdrant TEST DOUBLE listening on {conf['host']}:{conf['port']}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
