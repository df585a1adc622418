#!/usr/bin/env python3
"""TEST DOUBLE of the `qdrant` binary (NOT Qdrant). No Qdrant binary can be had on the test
machines, so the boot tier installs this script, shaped like the real release tarball, to
check OUR install steps and configuration. It serves what owuibuild's collections script, the
Open WebUI test double and the tests call, and keeps its collections (name, vector size,
payload indexes, points) in <storage_path>/test-double-collections.json:

  GET  /readyz, /healthz, /livez            no key needed (as in Qdrant)
  GET  /                                    title and version
  GET  /collections                         the collections the caller may see
  GET  /collections/{name}                  its config (vectors size and distance)
  GET  /collections/{name}/exists           {"exists": true|false}
  PUT  /collections/{name}                  create (vectors: size, distance)
  DELETE /collections/{name}
  PUT  /collections/{name}/index            a payload index (field_name, field_schema)
  PUT  /collections/{name}/points           upsert; each vector's length must be the size
  POST /collections/{name}/points/count     the number of points
  GET  /metrics                             Prometheus text: app_info, collections_total,
                                            collections_vector_total (global access only)

Answers are compact JSON, as Qdrant's ({"result":...,"status":"ok","time":...}); routing is on
the path without its query (``?wait=true``).

Authentication and access, as Qdrant's (src/common/auth, lib/storage/src/rbac): the key is the
`api-key` header, else an `Authorization: Bearer` token; none is 401. The server's API key has
every right. With `jwt_rbac` any other key must be a JWT signed HS256 with the API key: a bad
signature or a past `exp` (30 s leeway) is 403, anything that is no such JWT 401, and so is a
token without `exp` (Qdrant's JwtParser decodes none: its test_no_exp). A token's
`access` claim is "m" (manage: everything), "r" (read everything) or a list of
{"collection": name, "access": "r"|"rw"}; no claim means full access, as in Qdrant. A
collection-scoped token may read ("r") or read and write ("rw") its own collections only, and
sees only those in GET /collections; creating or deleting a collection needs manage rights,
so such a token gets 403 there, as for any other collection. A payload index needs "rw" on
the collection. GET /metrics needs global access (the API key, or a JWT whose access is "r"
or "m"): a collection-scoped token gets 403, as from Qdrant's metrics handler.

Configuration, as Qdrant reads it: --config-path FILE (YAML: service.host, service.http_port,
service.api_key, service.jwt_rbac, service.enable_tls, tls.cert, tls.key,
storage.storage_path) and QDRANT__SERVICE__HOST / __HTTP_PORT / __API_KEY / __JWT_RBAC /
__ENABLE_TLS, QDRANT__TLS__CERT / __KEY and QDRANT__STORAGE__STORAGE_PATH, which win. With
enable_tls the port speaks HTTPS only (TLS 1.2 or later) with tls.cert and tls.key, as
Qdrant's does; tls.ca_cert (cluster peers) is not read.

Every request is appended to <storage_path>/test-double-requests.log as one JSON line: method,
path, status, the client's address, how the caller authenticated ("auth": none | api-key | jwt
| invalid), whether an api-key header was sent and the key was the server's, and for a JWT its
decoded claims. Never the key nor the token.
"""

import base64
import binascii
import hashlib
import hmac
import json
import os
import socket
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

VERSION = "0.0.0-test-double"
LEEWAY = 30  # seconds of clock skew allowed on exp, as Qdrant's JwtParser
DISTANCES = ("Cosine", "Euclid", "Dot", "Manhattan")
HEALTH = ("/readyz", "/healthz", "/livez")


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def settings(argv: list[str]) -> dict[str, object]:
    conf: dict[str, object] = {
        "host": "0.0.0.0",
        "port": 6333,
        "api_key": None,
        "jwt_rbac": False,
        "storage": "./storage",
        "enable_tls": False,
        "cert": None,
        "key": None,
    }
    if "--config-path" in argv:
        import yaml

        path = argv[argv.index("--config-path") + 1]
        doc = yaml.safe_load(Path(path).read_text()) or {}
        service, storage = doc.get("service") or {}, doc.get("storage") or {}
        tls = doc.get("tls") or {}
        conf["host"] = service.get("host", conf["host"])
        conf["port"] = service.get("http_port", conf["port"])
        conf["api_key"] = service.get("api_key", conf["api_key"])
        conf["jwt_rbac"] = bool(service.get("jwt_rbac", conf["jwt_rbac"]))
        conf["enable_tls"] = bool(service.get("enable_tls", conf["enable_tls"]))
        conf["cert"] = tls.get("cert", conf["cert"])
        conf["key"] = tls.get("key", conf["key"])
        conf["storage"] = storage.get("storage_path", conf["storage"])
    env = os.environ
    conf["host"] = env.get("QDRANT__SERVICE__HOST", conf["host"])
    conf["port"] = int(env.get("QDRANT__SERVICE__HTTP_PORT", conf["port"]))  # type: ignore[arg-type]
    conf["api_key"] = env.get("QDRANT__SERVICE__API_KEY", conf["api_key"])
    if "QDRANT__SERVICE__JWT_RBAC" in env:
        conf["jwt_rbac"] = _truthy(env["QDRANT__SERVICE__JWT_RBAC"])
    if "QDRANT__SERVICE__ENABLE_TLS" in env:
        conf["enable_tls"] = _truthy(env["QDRANT__SERVICE__ENABLE_TLS"])
    conf["cert"] = env.get("QDRANT__TLS__CERT", conf["cert"])
    conf["key"] = env.get("QDRANT__TLS__KEY", conf["key"])
    conf["storage"] = env.get("QDRANT__STORAGE__STORAGE_PATH", conf["storage"])
    return conf


def tls_context(conf: dict[str, object]) -> ssl.SSLContext | None:
    """The server's TLS context when enable_tls is on (then tls.cert and tls.key are needed)."""
    if not conf["enable_tls"]:
        return None
    if not conf["cert"] or not conf["key"]:
        raise SystemExit("qdrant TEST DOUBLE: enable_tls needs tls.cert and tls.key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(conf["cert"]), str(conf["key"]))
    return context


# -- authentication and access ---------------------------------------------------------------------


class Refused(Exception):
    """A request refused with ``status`` and Qdrant's message (``note``: what the log may say
    of the caller, when it got that far)."""

    def __init__(self, status: int, message: str, note: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.note = note


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode_jwt(token: str, secret: str, now: float | None = None) -> dict[str, object] | None:
    """The claims of an HS256 JWT signed with ``secret``. None when ``token`` is no such JWT,
    or has no ``exp`` (Qdrant then answers 401); Refused(403) for a bad signature or a past
    ``exp``, as Qdrant's JwtParser."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
        signature = _unb64(parts[2])
    except (ValueError, binascii.Error):
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    if header.get("alg") != "HS256":
        return None
    expected = hmac.new(secret.encode(), f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(signature, expected):
        raise Refused(403, "Forbidden: InvalidSignature")
    exp = claims.get("exp")
    if exp is not None and not isinstance(exp, int | float):
        return None
    if exp is not None and exp + LEEWAY < (time.time() if now is None else now):
        raise Refused(403, "Forbidden: ExpiredSignature")
    if exp is None:
        return None
    return claims


class Access:
    """What a caller may do: global "m" (manage) or "r", or per collection "r" / "rw"."""

    def __init__(self, global_mode: str | None, collections: dict[str, str]) -> None:
        self.global_mode = global_mode
        self.collections = collections

    @classmethod
    def full(cls) -> "Access":
        return cls("m", {})

    @classmethod
    def from_claims(cls, claims: dict[str, object]) -> "Access":
        if "access" not in claims:
            return cls.full()  # Qdrant's default_access
        access = claims["access"]
        if access in ("m", "r"):
            return cls(str(access), {})
        if not isinstance(access, list):
            raise Refused(401, "Unauthorized: invalid access claim")
        found: dict[str, str] = {}
        for entry in access:
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("collection"), str)
                or entry.get("access") not in ("r", "rw")
            ):
                raise Refused(401, "Unauthorized: invalid access claim")
            if "payload" in entry:
                raise Refused(401, "Unauthorized: payload claims are not supported")
            found[entry["collection"]] = str(entry["access"])
        return cls(None, found)

    def may_see(self, collection: str) -> bool:
        return self.global_mode is not None or collection in self.collections

    def check_read(self, collection: str) -> None:
        if not self.may_see(collection):
            raise Refused(403, f"Forbidden: Access to collection {collection} is required")

    def check_write(self, collection: str) -> None:
        if self.global_mode == "m" or self.collections.get(collection) == "rw":
            return
        raise Refused(403, f"Forbidden: Write access to collection {collection} is required")

    def check_global(self) -> None:
        if self.global_mode is None:
            raise Refused(403, "Forbidden: Global access is required")

    def check_manage(self) -> None:
        if self.global_mode != "m":
            raise Refused(403, "Forbidden: Global manage access is required")


def authenticate(conf: dict[str, object], headers: object) -> tuple[Access, dict[str, object]]:
    """The caller's access and what the log may say of it (never the key nor a token)."""
    get = headers.get  # type: ignore[attr-defined]
    server_key = conf["api_key"]
    sent = get("api-key")
    bearer = get("Authorization") or ""
    key = sent if sent is not None else (bearer[7:] if bearer.startswith("Bearer ") else None)
    note: dict[str, object] = {"api_key_sent": sent is not None, "api_key_ok": False}
    if not server_key:
        note.update(auth="none")
        return Access.full(), note
    if key is None:
        note.update(auth="none")
        raise Refused(401, "Must provide an API key or an Authorization bearer token", note)
    if hmac.compare_digest(str(key).encode(), str(server_key).encode()):
        note.update(auth="api-key", api_key_ok=True)
        return Access.full(), note
    claims = None
    if conf["jwt_rbac"]:
        try:
            claims = decode_jwt(str(key), str(server_key))
        except Refused as refused:
            note.update(auth="invalid")
            raise Refused(refused.status, str(refused), note) from None
    if claims is None:
        note.update(auth="invalid")
        raise Refused(401, "Invalid API key or JWT", note)
    note.update(auth="jwt", claims=claims)
    try:
        return Access.from_claims(claims), note
    except Refused as refused:
        raise Refused(refused.status, str(refused), note) from None


# -- the collections -------------------------------------------------------------------------------


class Store:
    """The collections, kept in one JSON file under the storage path (Qdrant keeps them on its
    data volume: a restart finds them again)."""

    def __init__(self, storage: Path) -> None:
        self.path = storage / "test-double-collections.json"
        self.lock = threading.Lock()
        try:
            self.collections: dict[str, dict[str, object]] = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.collections = {}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.collections, sort_keys=True))
        tmp.replace(self.path)


def _vectors(body: dict[str, object]) -> dict[str, object]:
    vectors = body.get("vectors")
    if not isinstance(vectors, dict):
        raise Refused(400, "Wrong input: vectors: a size and a distance are required")
    size, distance = vectors.get("size"), vectors.get("distance")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise Refused(400, "Wrong input: vectors.size must be a positive integer")
    if distance not in DISTANCES:
        raise Refused(400, f"Wrong input: vectors.distance must be one of {', '.join(DISTANCES)}")
    return {"size": size, "distance": distance, "on_disk": bool(vectors.get("on_disk", False))}


def route(
    store: Store, access: Access, method: str, path: str, body: dict[str, object]
) -> tuple[int, object]:
    """The answer to an authenticated request: status and result (or raises Refused)."""
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    if method == "GET" and not parts:
        return 200, {"title": "qdrant - vector search engine (TEST DOUBLE)", "version": VERSION}
    if not parts or parts[0] != "collections":
        raise Refused(404, "Not found")
    with store.lock:
        collections = store.collections
        if len(parts) == 1 and method == "GET":
            names = sorted(n for n in collections if access.may_see(n))
            return 200, {"collections": [{"name": n} for n in names]}
        if len(parts) < 2:
            raise Refused(404, "Not found")
        name, rest = parts[1], parts[2:]
        found = collections.get(name)
        missing = Refused(404, f"Not found: Collection `{name}` doesn't exist!")
        if rest == ["exists"] and method == "GET":
            access.check_read(name)
            return 200, {"exists": found is not None}
        if not rest and method == "GET":
            access.check_read(name)
            if found is None:
                raise missing
            params = {"vectors": found["vectors"]}
            config = {"params": params, "hnsw_config": found.get("hnsw_config", {})}
            return 200, {
                "status": "green",
                "points_count": len(found["points"]),  # type: ignore[arg-type]
                "config": config,
                "payload_schema": found["indexes"],
            }
        if not rest and method == "PUT":
            access.check_manage()
            if found is not None:
                raise Refused(400, f"Wrong input: Collection `{name}` already exists!")
            collections[name] = {
                "vectors": _vectors(body),
                "hnsw_config": body.get("hnsw_config") or {},
                "indexes": {},
                "points": {},
            }
            store.save()
            return 200, True
        if not rest and method == "DELETE":
            access.check_manage()
            existed = collections.pop(name, None) is not None
            store.save()
            return 200, existed
        if rest == ["index"] and method == "PUT":
            access.check_write(name)
            if found is None:
                raise missing
            field, schema = body.get("field_name"), body.get("field_schema")
            if not isinstance(field, str) or not field or schema is None:
                raise Refused(400, "Wrong input: field_name and field_schema are required")
            found["indexes"][field] = schema  # type: ignore[index]
            store.save()
            return 200, {"operation_id": 0, "status": "completed"}
        if rest == ["points"] and method == "PUT":
            access.check_write(name)
            if found is None:
                raise missing
            points = body.get("points")
            if not isinstance(points, list) or not points:
                raise Refused(400, "Wrong input: points are required")
            size = found["vectors"]["size"]  # type: ignore[index]
            for point in points:
                vector = point.get("vector") if isinstance(point, dict) else None
                if not isinstance(vector, list):
                    raise Refused(400, "Wrong input: every point needs an id and a vector")
                if len(vector) != size:
                    raise Refused(
                        400,
                        f"Wrong input: Vector dimension error: expected dim: {size}, "
                        f"got {len(vector)}",
                    )
            for point in points:
                found["points"][str(point.get("id"))] = point.get("payload") or {}  # type: ignore[index]
            store.save()
            return 200, {"operation_id": 0, "status": "completed"}
        if rest == ["points", "count"] and method == "POST":
            access.check_read(name)
            if found is None:
                raise missing
            return 200, {"count": len(found["points"])}  # type: ignore[arg-type]
    raise Refused(404, "Not found")


def metrics(store: Store, access: Access) -> str:
    """Prometheus text exposition of a few of Qdrant's own metrics (names and types as its
    /metrics answers them)."""
    access.check_global()
    with store.lock:
        collections = list(store.collections.values())
    vectors = sum(len(c["points"]) for c in collections)  # type: ignore[arg-type]
    lines = [
        "# HELP app_info information about qdrant server",
        "# TYPE app_info gauge",
        f'app_info{{name="qdrant",version="{VERSION}"}} 1',
        "# HELP collections_total number of collections",
        "# TYPE collections_total gauge",
        f"collections_total {len(collections)}",
        "# HELP collections_vector_total total number of vectors in all collections",
        "# TYPE collections_vector_total gauge",
        f"collections_vector_total {vectors}",
    ]
    return "\n".join(lines) + "\n"


# -- the server ------------------------------------------------------------------------------------


class Server(ThreadingHTTPServer):
    """Serves HTTPS when given a TLS context: each handshake runs in its request's thread, so a
    client that never finishes one holds up no other."""

    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if self.tls is None:
            super().finish_request(request, client_address)  # type: ignore[arg-type]
            return
        request.settimeout(30)
        try:
            wrapped = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            sys.stderr.write(f"qdrant-double: TLS handshake failed: {exc}\n")
            return
        try:
            super().finish_request(wrapped, client_address)  # type: ignore[arg-type]
        finally:
            wrapped.close()


def handler(conf: dict[str, object]) -> type[BaseHTTPRequestHandler]:
    storage = Path(str(conf["storage"]))
    log = storage / "test-double-requests.log"
    store = Store(storage)
    log_lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as Qdrant's (clients reuse connections)

        def reply(self, code: int, doc: object) -> None:
            data = json.dumps(doc, separators=(",", ":")).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def reply_text(self, text: str) -> None:
            data = text.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def record(self, status: int, note: dict[str, object]) -> None:
            entry = {
                "method": self.command,
                "path": self.path,
                "status": status,
                "client": self.client_address[0],
                **note,
            }
            with log_lock:
                log.parent.mkdir(parents=True, exist_ok=True)
                with log.open("a") as fh:
                    fh.write(json.dumps(entry, sort_keys=True) + "\n")

        def body(self) -> dict[str, object]:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if not raw:
                return {}
            try:
                doc = json.loads(raw)
            except ValueError as exc:
                raise Refused(400, f"Json deserialize error: {exc}") from None
            if not isinstance(doc, dict):
                raise Refused(400, "Json deserialize error: expected an object")
            return doc

        def handle_any(self) -> None:
            started = time.monotonic()
            path = urlsplit(self.path).path
            note: dict[str, object] = {}
            try:
                body = self.body()
                if self.command == "GET" and path in HEALTH:
                    self.record(200, {"auth": "none"})
                    self.reply(200, {"title": "qdrant TEST DOUBLE", "status": "ready"})
                    return
                access, note = authenticate(conf, self.headers)
                if self.command == "GET" and path == "/metrics":
                    text = metrics(store, access)
                    self.record(200, note)
                    self.reply_text(text)
                    return
                status, result = route(store, access, self.command, path, body)
            except Refused as refused:
                note = refused.note or note
                status, result, error = refused.status, None, str(refused)
            self.record(status, note)
            took = round(time.monotonic() - started, 6)
            if status == 200:
                self.reply(200, {"result": result, "status": "ok", "time": took})
            else:
                self.reply(status, {"status": {"error": error}, "time": took})

        do_GET = do_PUT = do_POST = do_DELETE = handle_any

        def log_message(self, fmt: str, *args: object) -> None:
            sys.stderr.write("qdrant-double: " + fmt % args + "\n")

    return Handler


def main(argv: list[str]) -> int:
    if "--version" in argv or "-V" in argv:
        print(f"qdrant {VERSION}")
        return 0
    conf = settings(argv)
    tls = tls_context(conf)
    server = Server((str(conf["host"]), int(conf["port"])), handler(conf))  # type: ignore[arg-type]
    server.tls = tls
    scheme = "https" if tls is not None else "http"
    print(f"qdrant TEST DOUBLE listening on {scheme}://{conf['host']}:{conf['port']}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
