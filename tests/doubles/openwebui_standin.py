"""TEST DOUBLE: a small stand-in for the Open WebUI image, for QEMU guests only.

The real Open WebUI image (3.4 GB, ~875 MB RSS an instance) is far too slow to run under TCG in
CI; the containers tier runs the real one. This stand-in is built as a tiny image tagged with
the generated image reference and started by the generated compose file and unit, with exactly
the env file its bundle gives it. It answers ``/health`` with 200 only once it has, with those
values and nothing else:

* logged into PostgreSQL (SCRAM-SHA-256) as ``DATABASE_URL`` says, over TLS when its
  ``sslmode`` asks for it (verified with ``sslrootcert``; ``verify-full`` also checks that the
  certificate names the URL's host, as libpq does);
* authenticated to its Redis with ``REDIS_URL`` and published on ``socketio``, over TLS for a
  ``rediss://`` URL (verified with ``ssl_ca_certs`` and, as redis-py does by default, the
  URL's host);
* used Qdrant at ``QDRANT_URI`` with ``QDRANT_API_KEY`` (its own token) as Open WebUI's
  multitenancy mode does: each of its five collections ``<QDRANT_COLLECTION_PREFIX>_<suffix>``
  exists, and a point whose vector is an embedding from Ollama (``/api/embed`` of
  ``RAG_EMBEDDING_MODEL`` at ``OLLAMA_BASE_URL``, as its embedding engine asks) is written to
  the knowledge collection, which Qdrant accepts only at the collection's vector size;
* fetched ``/api/tags`` from every Ollama URL (``OLLAMA_BASE_URLS`` or ``OLLAMA_BASE_URL``).

Qdrant and Ollama are reached over HTTPS only, as Open WebUI's HTTP clients reach them: each URL
must be ``https://``, and the server's certificate must chain to the CA bundle that
``SSL_CERT_FILE`` names (the host's bundle with the fleet CA, which the container mounts) and
name the URL's host. A plain ``http://`` URL, no ``SSL_CERT_FILE``, or a certificate that does
not verify fails the check (it never turns healthy).

Until then ``/health`` answers 503 with what is still failing (never a secret). ``/checks``
gives the same as JSON. ``POST /ollama/api/chat`` and ``/ollama/api/generate`` pass the body on
to the first Ollama URL and its answer back, as Open WebUI's Ollama proxy does (a test sends a
prompt through an instance this way). It uses owuibuild's own wire-protocol probes
(``probes.py``, copied next to it in the image), so it needs no library. It checks that the
fleet is wired as the generated files say; it says nothing about Open WebUI itself.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import probes  # owuibuild.probes, copied beside this file

# 8080 as Open WebUI's; a test that runs the double outside a container picks a free one.
PORT = int(os.environ.get("OWUIBUILD_STANDIN_PORT", "8080"))
TIMEOUT = 5.0
RETRY_SECONDS = 1.0
MAX_BODY = 1 << 20
# Open WebUI's multitenancy collections (retrieval/vector/dbs/qdrant_multitenancy.py).
QDRANT_SUFFIXES = ("memories", "knowledge", "files", "web-search", "hash-based")
# The point the double writes (the same id each time: an upsert, not a pile).
QDRANT_POINT_ID = "00000000-0000-4000-8000-00000000d0b1"

# name -> (ok, detail); read by the HTTP handler, written by the checker thread.
RESULTS: dict[str, tuple[bool, str]] = {}
LOCK = threading.Lock()


def _secrets() -> tuple[str, ...]:
    values = []
    for key in ("DATABASE_URL", "REDIS_URL", "QDRANT_API_KEY", "WEBUI_SECRET_KEY"):
        url = os.environ.get(key, "")
        values.append(url)
        parts = urlsplit(url) if "://" in url else None
        if parts is not None and parts.password:
            values.append(unquote(parts.password))
    return tuple(v for v in values if v)


@dataclass(frozen=True)
class Tls:
    """How a URL asks to verify its server: the CA file to trust (and only it), and whether
    the certificate must name the URL's host."""

    cafile: str
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        context = probes.tls_context(cafile=self.cafile)
        context.check_hostname = self.check_hostname
        return context


def _query(url: str) -> dict[str, str]:
    """The URL's query parameters, the last of each name winning."""
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


# libpq's sslmodes that may speak plain text; the double does then (no opportunistic TLS).
PG_PLAIN_MODES = ("disable", "allow", "prefer")


def postgres_tls(url: str) -> Tls | None:
    """TLS as ``DATABASE_URL``'s ``sslmode`` and ``sslrootcert`` ask (None: plain text).

    verify-full checks the certificate's chain and name, verify-ca its chain only, and require
    with a root certificate is verify-ca (libpq's rule). The double verifies every TLS
    connection, so a TLS mode without ``sslrootcert`` is a ValueError.
    """
    query = _query(url)
    mode = query.get("sslmode", "prefer")
    if mode in PG_PLAIN_MODES:
        return None
    if mode not in ("require", "verify-ca", "verify-full"):
        raise ValueError(f"DATABASE_URL: unknown sslmode={mode}")
    cafile = query.get("sslrootcert", "")
    if not cafile:
        raise ValueError(f"DATABASE_URL: sslmode={mode} without sslrootcert")
    return Tls(cafile, check_hostname=mode == "verify-full")


def redis_tls(url: str) -> Tls | None:
    """TLS for a ``rediss://`` URL, with its ``ssl_ca_certs`` (None: ``redis://``, plain)."""
    scheme = urlsplit(url).scheme
    if scheme == "redis":
        return None
    if scheme != "rediss":
        raise ValueError(f"REDIS_URL: unsupported scheme {scheme}://")
    query = _query(url)
    cafile = query.get("ssl_ca_certs", "")
    if not cafile:
        raise ValueError("REDIS_URL: rediss:// without ssl_ca_certs")
    if query.get("ssl_cert_reqs", "required").lower() not in ("required", "cert_required"):
        raise ValueError("REDIS_URL: the double verifies every certificate (ssl_cert_reqs)")
    check_hostname = query.get("ssl_check_hostname", "true").lower() not in ("false", "0", "no")
    return Tls(cafile, check_hostname=check_hostname)


def check_postgres() -> tuple[bool, str]:
    raw = os.environ["DATABASE_URL"]
    url = urlsplit(raw)
    tls = postgres_tls(raw)
    outcome = probes.pg_login(
        url.hostname or "",
        url.port or 5432,
        unquote(url.username or ""),
        unquote(url.path.lstrip("/")),
        unquote(url.password or ""),
        TIMEOUT,
        tls=tls.context() if tls else None,
        server_name=url.hostname,
    )
    return outcome.state is probes.State.OK, outcome.detail


def check_redis() -> tuple[bool, str]:
    raw = os.environ["REDIS_URL"]
    url = urlsplit(raw)
    tls = redis_tls(raw)
    password = unquote(url.password or "")

    def probe() -> probes.Outcome:
        deadline = probes.Deadline(TIMEOUT)
        with probes.connect(
            url.hostname or "",
            url.port or 6379,
            deadline,
            tls=tls.context() if tls else None,
            server_name=url.hostname,
        ) as sock:
            for command in (
                ("AUTH", unquote(url.username or "default"), password),
                ("PUBLISH", "socketio", "owuibuild test double: hello"),
            ):
                reply = probes._resp_call(sock, deadline, *command)
                if isinstance(reply, probes.RespError):
                    return probes.Outcome(probes.State.DOWN, f"{command[0]}: {reply}")
        return probes.Outcome(probes.State.OK, "AUTH and PUBLISH socketio")

    outcome = probes.guarded(probe, (password,))
    return outcome.state is probes.State.OK, outcome.detail


def https_tls(variable: str, raw: str) -> tuple[str, int, ssl.SSLContext]:
    """Host, port and TLS context for an ``https://`` URL of ``variable``: verified with the CA
    bundle ``SSL_CERT_FILE`` names, as the instance's HTTP clients verify it (httpx, aiohttp and,
    through ``REQUESTS_CA_BUNDLE``, requests). ValueError for any other URL or no bundle."""
    url = urlsplit(raw)
    if url.scheme != "https":
        raise ValueError(f"{variable}: {url.scheme or 'no scheme'}:// is not https://")
    cafile = os.environ.get("SSL_CERT_FILE", "")
    if not cafile:
        raise ValueError(f"{variable}: https:// without SSL_CERT_FILE (the CA bundle)")
    return url.hostname or "", url.port or 443, probes.tls_context(cafile=cafile)


def https_call(
    variable: str,
    raw: str,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: object = None,
) -> tuple[int, bytes]:
    """One request to the HTTPS server of ``raw`` (see https_tls): its status and body.
    http.client, not urllib: urllib would honour *_proxy variables and could hand a key to a
    proxy. Raises OSError, ssl.SSLError or ValueError."""
    host, port, tls = https_tls(variable, raw)
    base = urlsplit(raw).path.rstrip("/")
    conn = http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=tls)
    try:
        data = None if body is None else json.dumps(body).encode()
        sent = {"Accept": "application/json", **(headers or {})}
        if data is not None:
            sent["Content-Type"] = "application/json"
        conn.request(method, base + path, body=data, headers=sent)
        response = conn.getresponse()
        answer = response.read(MAX_BODY + 1)
        if len(answer) > MAX_BODY:
            raise ValueError(f"{method} {path}: the answer is too large")
        return response.status, answer
    finally:
        conn.close()


def https_get(
    variable: str, raw: str, path: str, headers: dict[str, str] | None = None
) -> probes.Outcome:
    """GET ``path`` from the HTTPS server of ``raw``; OK on 200."""

    def probe() -> probes.Outcome:
        status, _ = https_call(variable, raw, "GET", path, headers)
        state = probes.State.OK if status == 200 else probes.State.DOWN
        return probes.Outcome(state, f"GET {path}: {status}")

    return probes.guarded(probe, _secrets())


def qdrant_collections() -> tuple[str, ...]:
    prefix = os.environ.get("QDRANT_COLLECTION_PREFIX") or "open-webui"
    return tuple(f"{prefix}_{suffix}" for suffix in QDRANT_SUFFIXES)


def embedding() -> list[float]:
    """An embedding from the first Ollama (RAG_EMBEDDING_MODEL), as Open WebUI's engine asks."""
    model = os.environ.get("RAG_EMBEDDING_MODEL", "")
    if not model:
        raise ValueError("RAG_EMBEDDING_MODEL is not set")
    body = {"model": model, "input": ["owuibuild test double"]}
    status, answer = https_call(
        "OLLAMA_BASE_URL", ollama_urls()[0], "POST", "/api/embed", None, body
    )
    if status != 200:
        raise ValueError(f"Ollama POST /api/embed: {status}")
    vectors = json.loads(answer).get("embeddings")
    if not isinstance(vectors, list) or not vectors or not isinstance(vectors[0], list):
        raise ValueError("Ollama POST /api/embed: no embedding in the answer")
    return [float(x) for x in vectors[0]]


def check_qdrant() -> tuple[bool, str]:
    uri = os.environ["QDRANT_URI"]
    headers = {"api-key": os.environ.get("QDRANT_API_KEY", "")}
    names = qdrant_collections()

    def probe() -> probes.Outcome:
        for name in names:
            path = f"/collections/{name}/exists"
            status, answer = https_call("QDRANT_URI", uri, "GET", path, headers)
            if status != 200:
                return probes.Outcome(probes.State.DOWN, f"GET {path}: {status}")
            if json.loads(answer).get("result", {}).get("exists") is not True:
                return probes.Outcome(probes.State.DOWN, f"GET {path}: no collection {name}")
        vector = embedding()
        knowledge = names[QDRANT_SUFFIXES.index("knowledge")]
        point = {"id": QDRANT_POINT_ID, "vector": vector, "payload": {"tenant_id": "test-double"}}
        path = f"/collections/{knowledge}/points?wait=true"
        status, _ = https_call("QDRANT_URI", uri, "PUT", path, headers, {"points": [point]})
        if status != 200:
            return probes.Outcome(probes.State.DOWN, f"PUT {path}: {status}")
        return probes.Outcome(
            probes.State.OK,
            f"{len(names)} collections; a {len(vector)}-dimension point written to {knowledge}",
        )

    outcome = probes.guarded(probe, _secrets())
    return outcome.state is probes.State.OK, outcome.detail


def ollama_urls() -> list[str]:
    several = os.environ.get("OLLAMA_BASE_URLS", "")
    return [u for u in several.split(";") if u] or [os.environ["OLLAMA_BASE_URL"]]


def check_ollama() -> tuple[bool, str]:
    details = []
    for base in ollama_urls():
        outcome = https_get("OLLAMA_BASE_URL", base, "/api/tags")
        if outcome.state is not probes.State.OK:
            return False, f"{base}: {outcome.detail}"
        details.append(f"{urlsplit(base).hostname}: 200")
    return True, ", ".join(details)


CHECKS = {
    "postgres": check_postgres,
    "redis": check_redis,
    "qdrant": check_qdrant,
    "ollama": check_ollama,
}


def run_checks() -> None:
    secrets = _secrets()
    while True:
        for name, check in CHECKS.items():
            with LOCK:
                if RESULTS.get(name, (False, ""))[0]:
                    continue
            try:
                ok, detail = check()
            except Exception as exc:  # report and retry: the services may not be up yet
                ok, detail = False, f"{type(exc).__name__}: {exc}"
            with LOCK:
                RESULTS[name] = (ok, probes.scrub(detail, secrets))
        with LOCK:
            if len(RESULTS) == len(CHECKS) and all(ok for ok, _ in RESULTS.values()):
                print("owuibuild test double: every check passed", flush=True)
                return
        time.sleep(RETRY_SECONDS)


# Open WebUI's Ollama proxy paths the double passes on (to the first Ollama URL).
RELAYED = {"/ollama/api/chat": "/api/chat", "/ollama/api/generate": "/api/generate"}


class Handler(BaseHTTPRequestHandler):
    def answer(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        """A prompt through the instance: the body goes to Ollama over HTTPS as it came, and
        Ollama's status and answer come back (502 with the reason when Ollama was not reached)."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(min(length, MAX_BODY))
        target = RELAYED.get(urlsplit(self.path).path)
        if target is None:
            self.answer(404, json.dumps({"detail": "not found"}).encode())
            return
        try:
            body = json.loads(raw or b"{}")
            status, data = https_call(
                "OLLAMA_BASE_URL", ollama_urls()[0], "POST", target, None, body
            )
        except (OSError, ValueError, http.client.HTTPException) as exc:
            detail = probes.scrub(f"{type(exc).__name__}: {exc}", _secrets())
            self.answer(502, json.dumps({"detail": detail}).encode())
            return
        self.answer(status, data)

    def do_GET(self) -> None:
        with LOCK:
            results = dict(RESULTS)
        healthy = len(results) == len(CHECKS) and all(ok for ok, _ in results.values())
        if self.path == "/health":
            status = 200 if healthy else 503
            body = {"status": healthy, "test_double": True}
        elif self.path == "/checks":
            status = 200
            body = {name: {"ok": ok, "detail": d} for name, (ok, d) in results.items()}
        else:
            status, body = 404, {"detail": "not found"}
        self.answer(status, json.dumps(body).encode())

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.address_string()} {format % args}\n")


def stop(signum: int, frame: object) -> None:
    """SIGTERM ends the double at once, as it ends Open WebUI: as a container's first process it
    would otherwise ignore it, and every `docker stop` (a reboot, a replaced host) would wait
    for Docker's kill after ten seconds."""
    del signum, frame
    raise SystemExit(0)


def main() -> None:
    missing = [k for k in ("DATABASE_URL", "REDIS_URL", "QDRANT_URI") if not os.environ.get(k)]
    if missing:
        sys.exit(f"owuibuild test double: missing {', '.join(missing)}")
    signal.signal(signal.SIGTERM, stop)
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    threading.Thread(target=run_checks, daemon=True).start()
    server.serve_forever()


if __name__ == "__main__":
    main()
