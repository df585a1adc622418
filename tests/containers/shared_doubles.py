#!/usr/bin/env python3
"""TEST DOUBLES of Ollama and Qdrant for the containers tier. They are NOT Ollama or Qdrant,
whose servers cannot be had here. test_instances_live.py copies this file into its "shared
host" container and runs it there with the container's python3 (standard library only).

Qdrant's double behaves like Qdrant configured by the generator (api_key, jwt_rbac, TLS):

- HTTPS only (TLS 1.2 or later) on the shared address, port 6333, with the host's certificate;
- /, /healthz, /readyz and /livez answer without a credential, as Qdrant's whitelist does;
- any other request needs a credential in `api-key` (or `Authorization: Bearer`): the server
  key (full access), or a JWT it verifies (HS256, signed with the server key, with an `exp`
  not yet past), checked by the same code as the Qdrant binary's double
  (tests/doubles/qdrant_double.py, copied beside this file). No credential or another key: 401;
  a bad signature or a past expiry: 403, as Qdrant's JWT parser answers;
- a JWT whose `access` claim lists collections ({"collection": name, "access": "r"|"rw"}) may
  touch only /collections/<name>... of those names, `r` with reading requests only: anything
  else gets 403, before the collection's existence is looked at. As in Qdrant, making,
  changing or deleting a collection needs global manage access, so such a token never may;
  listing collections (GET /collections) answers with only the ones the token may read
  (Qdrant's toc.all_collections(access) filters the list rather than refusing);
- enough of Qdrant's REST API, in memory, for Open WebUI 0.12.4's multitenancy client and for
  the generated qdrant-collections.sh: collection exists/info/make/delete, payload indexes,
  point upsert, retrieve, count, scroll, query, search and delete, with `must`, `should` and
  `must_not` filters of `match` (value, any, except) and `has_id` conditions. Vectors must
  have the collection's length; query and search score by cosine similarity. A filter it
  does not know is answered 400, never ignored.

Ollama's double listens on loopback only, behind the generated TLS terminator (the real Caddy),
as Ollama does on the shared host. It lists one model, answers the version, and embeds every
input as a vector of the configured length derived from the text's hash (so the same text
always gets the same vector). POST /api/chat answers, unless the body says "stream": false,
as Ollama streams: CHAT_PIECES application/x-ndjson lines ("piece-0 ", "piece-1 ", ...), each
written and flushed CHAT_PAUSE seconds after the one before, the last with "done": true; with
"stream": false, one JSON answer with the whole text. Anything else gets 200 and a short text.
It has no credential to check: the terminator and the firewall are Ollama's boundary.

Every request is appended to the log as one JSON line: service, source address, method, path,
TLS version, User-Agent, status; Qdrant's also whether a credential was given and of which
kind, whether it was valid, and the claims it decoded from a JWT. Never the token or the key.
Ollama's also Host and X-Forwarded-For, as the terminator passes them; a streamed chat's also
the last message's text ("prompt") and when each piece went out ("sent_at", time.time() after
each line was flushed), logged once the last one is.

Usage: shared_doubles.py ADDRESS KEY_FILE CERT KEY DIMENSIONS VERSION LOG
"""

from __future__ import annotations

import hashlib
import json
import math
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# The Qdrant binary's test double, copied beside this file: its JWT and access checks are the
# one implementation both doubles use.
from qdrant_double import Access, Refused, authenticate

QDRANT_PORT = 6333
OLLAMA_ADDRESS = ("127.0.0.1", 11434)
# A streamed chat answer: this many lines, this many seconds apart.
CHAT_PIECES = 4
CHAT_PAUSE = 1.0
MODEL = {
    "name": "test-double:latest",
    "model": "test-double:latest",
    "modified_at": "2024-01-01T00:00:00Z",
    "size": 1,
    "digest": "0" * 64,
    "details": {
        "format": "gguf",
        "family": "test",
        "parameter_size": "1",
        "quantization_level": "Q4_0",
    },
}
# Qdrant's unauthenticated paths (exact, or prefixes for the probes).
OPEN_EXACT = ("/", "/healthz")
OPEN_PREFIX = ("/readyz", "/livez")
# POST requests under /collections/<name>/ that only read (every GET only reads).
READING = {
    ("POST", ("points",)),
    *(
        ("POST", ("points", op))
        for op in ("count", "scroll", "search", "query", "recommend", "discover", "facet")
    ),
    *(("POST", ("points", op, "batch")) for op in ("search", "query", "recommend", "discover")),
    *(("POST", ("points", op, "groups")) for op in ("search", "query", "recommend")),
}

LOCK = threading.Lock()  # the log and every collection
COLLECTIONS: dict[str, dict[str, Any]] = {}
ARGS: dict[str, Any] = {}


class Answer(Exception):
    """An HTTP answer other than success, with Qdrant's error body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def log(entry: dict[str, Any]) -> None:
    with LOCK, open(ARGS["log"], "a") as out:
        out.write(json.dumps(entry) + "\n")


# -- Qdrant: who is asking, and may they: as tests/doubles/qdrant_double.py decides it -------


def access_of(
    handler: BaseHTTPRequestHandler,
) -> tuple[Access | None, dict[str, Any], Answer | None]:
    """The caller's access (None when refused), what the log may say of the caller, and the
    refusal to answer where Qdrant requires a credential."""
    try:
        access, note = authenticate({"api_key": ARGS["key"], "jwt_rbac": True}, handler.headers)
    except Refused as refused:
        return None, dict(refused.note or {}), Answer(refused.status, str(refused))
    return access, dict(note), None


# -- Qdrant: points and filters ----------------------------------------------------------------

MISSING = object()


def point_key(point_id: Any) -> str:
    return json.dumps(point_id)


def value_at(payload: dict[str, Any], key: str) -> Any:
    node: Any = payload
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def holds(point: dict[str, Any], condition: dict[str, Any]) -> bool:
    if "has_id" in condition:
        return point_key(point["id"]) in {point_key(i) for i in condition["has_id"]}
    if {"must", "should", "must_not"} & condition.keys():
        return matches(point, condition)
    if "key" in condition and isinstance(condition.get("match"), dict):
        found = value_at(point["payload"], condition["key"])
        values = found if isinstance(found, list) else [] if found is MISSING else [found]
        match = condition["match"]
        if "value" in match:
            return match["value"] in values
        if "any" in match:
            return any(v in match["any"] for v in values)
        if "except" in match:
            return not any(v in match["except"] for v in values)
    raise Answer(400, f"the Qdrant test double does not know this condition: {condition}")


def clauses(flt: dict[str, Any], name: str) -> list[dict[str, Any]]:
    found = flt.get(name) or []
    return found if isinstance(found, list) else [found]


def matches(point: dict[str, Any], flt: dict[str, Any] | None) -> bool:
    if not flt:
        return True
    unknown = flt.keys() - {"must", "should", "must_not", "min_should"}
    if unknown or flt.get("min_should"):
        raise Answer(400, f"the Qdrant test double does not know this filter: {flt}")
    should = clauses(flt, "should")
    return (
        all(holds(point, c) for c in clauses(flt, "must"))
        and not any(holds(point, c) for c in clauses(flt, "must_not"))
        and (not should or any(holds(point, c) for c in should))
    )


def record(point: dict[str, Any], body: dict[str, Any], payload_default: bool) -> dict[str, Any]:
    with_payload = body.get("with_payload", payload_default)
    with_vector = body.get("with_vector", False)
    return {
        "id": point["id"],
        "payload": point["payload"] if with_payload not in (False, None) else None,
        "vector": point["vector"] if with_vector not in (False, None) else None,
        "shard_key": None,
        "order_value": None,
    }


def cosine(a: list[float], b: list[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0


def vector_of(collection: dict[str, Any], vector: Any) -> list[float]:
    size = collection["config"]["vectors"]["size"]
    if not isinstance(vector, list) or not all(isinstance(x, int | float) for x in vector):
        raise Answer(400, "the Qdrant test double takes only plain, unnamed dense vectors")
    if len(vector) != size:
        raise Answer(
            400, f"Wrong input: Vector dimension error: expected dim: {size}, got {len(vector)}"
        )
    return [float(x) for x in vector]


def scored(collection: dict[str, Any], body: dict[str, Any], query: Any) -> list[dict[str, Any]]:
    vector = vector_of(collection, query)
    hits = [
        {**record(p, body, False), "version": 0, "score": cosine(vector, p["vector"])}
        for p in collection["points"].values()
        if matches(p, body.get("filter"))
    ]
    hits.sort(key=lambda hit: -hit["score"])
    threshold = body.get("score_threshold")
    if threshold is not None:
        hits = [h for h in hits if h["score"] >= threshold]
    offset = body.get("offset") or 0
    return hits[offset : offset + (body.get("limit") or 10)]


UPDATED = {"operation_id": 0, "status": "completed"}


def collection_info(collection: dict[str, Any]) -> dict[str, Any]:
    """A subset of Qdrant's CollectionInfo: what the tests read."""
    return {
        "status": "green",
        "optimizer_status": "ok",
        "points_count": len(collection["points"]),
        "indexed_vectors_count": 0,
        "segments_count": 1,
        "config": {
            "params": {"vectors": collection["config"]["vectors"]},
            "hnsw_config": collection["config"].get("hnsw_config"),
        },
        "payload_schema": {
            name: {**schema, "points": 0} for name, schema in collection["indexes"].items()
        },
    }


def points_call(name: str, rest: tuple[str, ...], method: str, body: dict[str, Any]) -> Any:
    """/collections/<name>/points...; the caller holds LOCK and has checked access."""
    collection = COLLECTIONS[name]
    points = collection["points"]
    if (method, rest) == ("PUT", ()):
        if not isinstance(body.get("points"), list):
            raise Answer(400, "the Qdrant test double takes upserts as a list of points")
        new = {}
        for p in body["points"]:
            vector = vector_of(collection, p.get("vector"))
            new[point_key(p["id"])] = {
                "id": p["id"],
                "vector": vector,
                "payload": p.get("payload") or {},
            }
        points.update(new)
        return UPDATED
    if (method, rest) == ("POST", ()):
        wanted = {point_key(i) for i in body.get("ids") or []}
        return [record(p, body, True) for k, p in points.items() if k in wanted]
    if (method, rest) == ("POST", ("delete",)):
        if "points" in body:
            for i in body["points"]:
                points.pop(point_key(i), None)
        else:
            for k in [k for k, p in points.items() if matches(p, body.get("filter"))]:
                del points[k]
        return UPDATED
    if (method, rest) == ("POST", ("count",)):
        return {"count": sum(1 for p in points.values() if matches(p, body.get("filter")))}
    if (method, rest) == ("POST", ("scroll",)):
        ordered = sorted(
            (p for p in points.values() if matches(p, body.get("filter"))),
            key=lambda p: point_key(p["id"]),
        )
        if body.get("offset") is not None:
            start = point_key(body["offset"])
            ordered = [p for p in ordered if point_key(p["id"]) >= start]
        limit = body.get("limit") or 10
        page, after = ordered[:limit], ordered[limit : limit + 1]
        return {
            "points": [record(p, body, True) for p in page],
            "next_page_offset": after[0]["id"] if after else None,
        }
    if (method, rest) == ("POST", ("query",)):
        query = body.get("query")
        if isinstance(query, dict) and "nearest" in query:
            query = query["nearest"]
        return {"points": scored(collection, body, query)}
    if (method, rest) == ("POST", ("search",)):
        return scored(collection, body, body.get("vector"))
    raise Answer(404, f"the Qdrant test double does not serve {method} {'/'.join(rest)}")


class Qdrant(BaseHTTPRequestHandler):
    timeout = 60

    def setup(self) -> None:
        super().setup()
        self.connection.do_handshake()  # in this connection's thread, not the accepting one

    def respond(self, status: int, body: Any) -> None:
        # JSON compact, as Qdrant writes it (the generated script greps '"exists":true').
        text = isinstance(body, str)
        data = (body if text else json.dumps(body, separators=(",", ":"))).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def serve(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?", 1)[0]
        # Checked (and logged) on every request, enforced where Qdrant enforces it.
        access, note, failure = access_of(self)
        entry: dict[str, Any] = {
            "service": "qdrant",
            "source": self.client_address[0],
            "method": self.command,
            "path": self.path,
            "tls": self.connection.version()
            if isinstance(self.connection, ssl.SSLSocket)
            else None,
            "agent": self.headers.get("User-Agent"),
            # "none", "invalid", "api-key" (the server key) or "jwt"
            "auth": note.get("auth"),
            "auth_ok": failure is None,
            "claims": note.get("claims"),
        }
        try:
            if path in OPEN_EXACT or path.startswith(OPEN_PREFIX):
                status, body = 200, self.open_path(path)
            elif failure is not None or access is None:
                raise failure or Answer(401, "Unauthorized")
            else:
                body = {"result": self.route(path, access, raw), "status": "ok", "time": 0.0}
                status = 200
        except Answer as answer:
            status, body = answer.status, {"status": {"error": answer.message}, "time": 0.0}
        entry["status"] = status
        log(entry)
        self.respond(status, body)

    def open_path(self, path: str) -> Any:
        if path == "/":
            return {
                "title": "qdrant - vector search engine (TEST DOUBLE)",
                "version": ARGS["version"],
            }
        return "all shards are ready" if path.startswith("/readyz") else "healthz check passed"

    def route(self, path: str, access: Access, raw: bytes) -> Any:
        try:
            return self.checked_route(path, access, raw)
        except Refused as refused:
            raise Answer(refused.status, str(refused)) from None

    def checked_route(self, path: str, access: Access, raw: bytes) -> Any:
        try:
            body = json.loads(raw) if raw else {}
        except ValueError as exc:
            raise Answer(400, "Json deserialize error") from exc
        parts = tuple(path.strip("/").split("/"))
        method = self.command
        if parts == ("collections",) and method == "GET":
            with LOCK:
                names = [n for n in sorted(COLLECTIONS) if access.may_see(n)]
            return {"collections": [{"name": n} for n in names]}
        if len(parts) < 2 or parts[0] != "collections":
            access.check_manage()
            raise Answer(404, f"the Qdrant test double does not serve {method} {path}")
        name, rest = parts[1], parts[2:]
        if rest == () and method in ("PUT", "PATCH", "DELETE"):
            access.check_manage()  # making, changing or deleting a collection
        elif method == "GET" or (method, rest) in READING:
            access.check_read(name)
        else:
            access.check_write(name)
        with LOCK:
            return self.collection_call(name, rest, method, body)

    def collection_call(self, name: str, rest: tuple[str, ...], method: str, body: Any) -> Any:
        if (method, rest) == ("GET", ("exists",)):
            return {"exists": name in COLLECTIONS}
        if (method, rest) == ("PUT", ()):
            if name in COLLECTIONS:
                raise Answer(409, f"Wrong input: Collection `{name}` already exists!")
            size = (body.get("vectors") or {}).get("size")
            if not isinstance(size, int) or size < 1:
                raise Answer(400, "the Qdrant test double takes one unnamed vector with a size")
            COLLECTIONS[name] = {"config": body, "indexes": {}, "points": {}}
            return True
        if name not in COLLECTIONS:
            raise Answer(404, f"Not found: Collection `{name}` doesn't exist!")
        if (method, rest) == ("GET", ()):
            return collection_info(COLLECTIONS[name])
        if (method, rest) == ("DELETE", ()):
            del COLLECTIONS[name]
            return True
        if (method, rest) == ("PUT", ("index",)):
            schema = body.get("field_schema")
            schema = {"type": schema} if isinstance(schema, str) else schema
            if not body.get("field_name") or not isinstance(schema, dict):
                raise Answer(400, "the Qdrant test double needs field_name and field_schema")
            COLLECTIONS[name]["indexes"][body["field_name"]] = {
                "data_type": schema["type"],
                "params": schema,
            }
            return UPDATED
        if rest[:1] == ("points",):
            return points_call(name, rest[1:], method, body)
        raise Answer(404, f"the Qdrant test double does not serve {method} {'/'.join(rest)}")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = serve

    def log_message(self, *args: Any) -> None:
        pass


# -- Ollama -------------------------------------------------------------------------------------


def embedding(text: str) -> list[float]:
    """A unit vector of the configured length, a function of the text alone."""
    size, counter = ARGS["dimensions"], 0
    values: list[float] = []
    while len(values) < size:
        block = hashlib.sha256(f"{counter}:{text}".encode()).digest()
        values.extend(v / 2**31 - 1.0 for v in struct.unpack(">8I", block))
        counter += 1
    values = values[:size]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


class Ollama(BaseHTTPRequestHandler):
    timeout = 60

    def serve(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?", 1)[0]
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        answer: Any
        if path == "/api/chat" and isinstance(body, dict) and body.get("stream") is not False:
            self.stream_chat(body)
            return
        if path == "/api/chat" and isinstance(body, dict):
            answer = chat_line(body, "".join(pieces()), True)
        elif path == "/api/tags":
            answer = {"models": [MODEL]}
        elif path == "/api/version":
            answer = {"version": "0.0.0-test-double"}
        elif path == "/api/ps":
            answer = {"models": []}
        elif path == "/api/embed" and isinstance(body, dict):
            texts = body.get("input")
            texts = [texts] if isinstance(texts, str) else texts or []
            answer = {"model": body.get("model"), "embeddings": [embedding(str(t)) for t in texts]}
        elif path == "/api/embeddings" and isinstance(body, dict):
            answer = {"embedding": embedding(str(body.get("prompt", "")))}
        else:
            answer = "Ollama test double"
        log(self.entry())
        data = (answer if isinstance(answer, str) else json.dumps(answer)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def entry(self) -> dict[str, Any]:
        return {
            "service": "ollama",
            "source": self.client_address[0],
            "method": self.command,
            "path": self.path,
            "tls": None,
            "host": self.headers.get("Host"),
            "forwarded_for": self.headers.get("X-Forwarded-For"),
            "agent": self.headers.get("User-Agent"),
            "status": 200,
        }

    def stream_chat(self, body: dict[str, Any]) -> None:
        """Ollama's streamed chat answer, one line at a time: HTTP/1.0 without a length, so
        the answer ends when the connection does, and each line leaves as it is written."""
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        sent: list[float] = []
        words = pieces()
        for n, word in enumerate(words):
            if n:
                time.sleep(CHAT_PAUSE)
            line = chat_line(body, word, n == len(words) - 1)
            self.wfile.write(json.dumps(line).encode() + b"\n")
            self.wfile.flush()
            sent.append(time.time())
        messages = body.get("messages") or [{}]
        prompt = messages[-1].get("content") if isinstance(messages[-1], dict) else None
        log({**self.entry(), "prompt": prompt, "sent_at": sent})

    do_GET = do_POST = do_PUT = do_DELETE = serve

    def log_message(self, *args: Any) -> None:
        pass


def pieces() -> list[str]:
    return [f"piece-{n} " for n in range(CHAT_PIECES)]


def chat_line(body: dict[str, Any], text: str, done: bool) -> dict[str, Any]:
    """One line of Ollama's /api/chat answer."""
    line: dict[str, Any] = {
        "model": body.get("model"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "message": {"role": "assistant", "content": text},
        "done": done,
    }
    if done:
        line.update(done_reason="stop", total_duration=1, eval_count=CHAT_PIECES)
    return line


def main(argv: list[str]) -> None:
    address, key_file, cert, key, dimensions, version, log_path = argv
    with open(key_file) as f:
        ARGS.update(key=f.read().strip(), dimensions=int(dimensions), version=version, log=log_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    qdrant = ThreadingHTTPServer((address, QDRANT_PORT), Qdrant)
    qdrant.socket = context.wrap_socket(
        qdrant.socket, server_side=True, do_handshake_on_connect=False
    )
    ollama = ThreadingHTTPServer(OLLAMA_ADDRESS, Ollama)
    for server in (qdrant, ollama):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
