"""The Qdrant TEST DOUBLE (tests/doubles/qdrant_double.py), run as the boot tier installs it
(its config file, HTTPS with a certificate, jwt_rbac) and asked over HTTPS as the instances and
owuibuild's collections script ask it: the server's API key may do everything; an instance's
token (builder/qdrant_access.py) may read and write its own collections and nothing else; a
token signed with another key, an expired one and a key that is no JWT are refused with
Qdrant's statuses; and the request log holds decoded claims, never a key or a token."""

from __future__ import annotations

import base64
import http.client
import importlib.util
import json
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest
import yaml
from infra.vm import free_port
from owuibuild import qdrant_access
from test_probes import make_pki

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
DOUBLE = REPO / "tests" / "doubles" / "qdrant_double.py"
KEY = "server-key-0123456789abcdef0123456789"
ALPHA = qdrant_access.collections("alpha")
BETA = qdrant_access.collections("beta")
SIZE = 4


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("qdrant_double_under_test", DOUBLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


double = _load()


def sign(claims: dict[str, Any], secret: str = KEY, expiry: bool = True) -> str:
    """An HS256 JWT of ``claims``, as any JWT library makes it, with the generator's expiry
    unless ``claims`` has its own or ``expiry`` is off (Qdrant takes no token without one)."""
    return qdrant_access.signed(
        secret, {"exp": qdrant_access.EXPIRY, **claims} if expiry else claims
    )


@dataclass
class Qdrant:
    port: int
    ca_file: Path
    storage: Path
    proc: subprocess.Popen[str]

    def call(
        self,
        method: str,
        path: str,
        key: str | None = None,
        body: object = None,
        bearer: bool = False,
    ) -> tuple[int, Any]:
        """The status and the decoded answer of one HTTPS request, verified with the CA."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=10, context=context)
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers.update({"Authorization": f"Bearer {key}"} if bearer else {"api-key": key})
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, json.loads(raw)
        finally:
            conn.close()

    def log(self) -> list[dict[str, Any]]:
        lines = (self.storage / "test-double-requests.log").read_text().splitlines()
        return [json.loads(line) for line in lines]


def start(where: Path, jwt_rbac: bool = True) -> Qdrant:
    pki = make_pki()
    ca_file, cert, key = pki.write(where / "tls")
    storage = where / "storage"
    port = free_port()
    config = {
        "storage": {"storage_path": str(storage)},
        "service": {
            "host": "127.0.0.1",
            "http_port": port,
            "api_key": KEY,
            "enable_tls": True,
            "jwt_rbac": jwt_rbac,
        },
        "tls": {"cert": str(cert), "key": str(key), "ca_cert": str(ca_file)},
    }
    config_path = where / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, str(DOUBLE), "--config-path", str(config_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    qdrant = Qdrant(port, ca_file, storage, proc)
    deadline = time.monotonic() + 20
    while True:
        try:
            if qdrant.call("GET", "/readyz")[0] == 200:
                return qdrant
        except OSError:
            pass
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the double never answered"
        time.sleep(0.05)


@pytest.fixture
def qdrant(tmp_path: Path) -> Iterator[Qdrant]:
    q = start(tmp_path)
    try:
        yield q
    finally:
        q.proc.kill()
        q.proc.communicate()


def make_collections(q: Qdrant, names: tuple[str, ...], size: int = SIZE) -> None:
    """As owuibuild's collections script makes them, with the server's key."""
    for name in names:
        config = qdrant_access.collection_config(size)
        assert q.call("PUT", f"/collections/{name}", KEY, config) == (
            200,
            {"result": True, "status": "ok", "time": pytest.approx(0, abs=5)},
        )
        for index in qdrant_access.INDEXES:
            status, _ = q.call("PUT", f"/collections/{name}/index?wait=true", KEY, index)
            assert status == 200


def point(size: int = SIZE) -> dict[str, Any]:
    return {"points": [{"id": 1, "vector": [0.5] * size, "payload": {"tenant_id": "t"}}]}


def test_server_key_makes_collections_as_the_collections_script_does(qdrant: Qdrant) -> None:
    """The script's requests: readyz without a key, exists (its grep wants compact JSON),
    PUT collection, PUT index with ?wait=true; a second run finds every collection."""
    name = ALPHA[0]
    raw = qdrant.call("GET", f"/collections/{name}/exists", KEY)
    assert raw[0] == 200 and raw[1]["result"] == {"exists": False}
    make_collections(qdrant, ALPHA)
    conn = http.client.HTTPSConnection(
        "127.0.0.1",
        qdrant.port,
        timeout=10,
        context=ssl.create_default_context(cafile=str(qdrant.ca_file)),
    )
    conn.request("GET", f"/collections/{name}/exists", headers={"api-key": KEY})
    assert b'"exists":true' in conn.getresponse().read()
    conn.close()
    status, answer = qdrant.call("GET", f"/collections/{name}", KEY)
    assert status == 200
    assert answer["result"]["config"]["params"]["vectors"] == {
        "size": SIZE,
        "distance": "Cosine",
        "on_disk": False,
    }
    assert set(answer["result"]["payload_schema"]) == {
        "tenant_id",
        "metadata.hash",
        "metadata.file_id",
    }
    # Made again: Qdrant refuses a collection that exists.
    status, answer = qdrant.call(
        "PUT", f"/collections/{name}", KEY, qdrant_access.collection_config(SIZE)
    )
    assert status == 400 and "already exists" in answer["status"]["error"]


def test_instance_token_reads_and_writes_its_own_collections(qdrant: Qdrant) -> None:
    make_collections(qdrant, (*ALPHA, *BETA))
    token = qdrant_access.token(KEY, ALPHA)
    for bearer in (False, True):
        status, answer = qdrant.call("GET", "/collections", token, bearer=bearer)
        # Listing answers, with the token's own collections only (Qdrant filters the list).
        assert status == 200
        assert [c["name"] for c in answer["result"]["collections"]] == sorted(ALPHA)
    for name in ALPHA:
        assert qdrant.call("GET", f"/collections/{name}/exists", token)[1]["result"] == {
            "exists": True
        }
        assert qdrant.call("GET", f"/collections/{name}", token)[0] == 200
        assert qdrant.call("PUT", f"/collections/{name}/points?wait=true", token, point())[0] == 200
        status, answer = qdrant.call("POST", f"/collections/{name}/points/count", token, {})
        assert (status, answer["result"]) == (200, {"count": 1})
    # rw on its collection includes payload indexes.
    index = {"field_name": "extra", "field_schema": "keyword"}
    assert qdrant.call("PUT", f"/collections/{ALPHA[0]}/index", token, index)[0] == 200
    # A vector of another length: Qdrant's 400.
    status, answer = qdrant.call("PUT", f"/collections/{ALPHA[0]}/points", token, point(768))
    assert status == 400
    assert answer["status"]["error"].endswith("expected dim: 4, got 768")


def test_instance_token_is_refused_everywhere_else(qdrant: Qdrant) -> None:
    make_collections(qdrant, (*ALPHA, *BETA))
    token = qdrant_access.token(KEY, ALPHA)
    other = BETA[1]
    for method, path, body in (
        ("GET", f"/collections/{other}", None),
        ("GET", f"/collections/{other}/exists", None),
        ("PUT", f"/collections/{other}/points", point()),
        ("POST", f"/collections/{other}/points/count", {}),
        ("PUT", f"/collections/{other}/index", {"field_name": "x", "field_schema": "keyword"}),
        ("DELETE", f"/collections/{other}", None),
        # Not even its own collections may be made or dropped: that needs manage rights.
        ("PUT", "/collections/alpha_new", qdrant_access.collection_config(SIZE)),
        ("DELETE", f"/collections/{ALPHA[0]}", None),
        # A collection that does not exist is another's too: 403, not 404.
        ("GET", "/collections/nobody_knowledge", None),
    ):
        status, answer = qdrant.call(method, path, token, body)
        assert status == 403, (method, path, answer)
        assert answer["status"]["error"].startswith("Forbidden"), answer
    assert qdrant.call("GET", f"/collections/{other}", KEY)[1]["result"]["points_count"] == 0
    assert qdrant.call("GET", f"/collections/{ALPHA[0]}", KEY)[0] == 200


def test_read_only_token_and_global_claims(qdrant: Qdrant) -> None:
    make_collections(qdrant, ALPHA)
    name = ALPHA[0]
    read = sign({"access": [{"collection": name, "access": "r"}]})
    assert qdrant.call("GET", f"/collections/{name}", read)[0] == 200
    assert qdrant.call("PUT", f"/collections/{name}/points", read, point())[0] == 403
    reader = sign({"access": "r"})
    assert qdrant.call("GET", f"/collections/{name}", reader)[0] == 200
    assert (
        qdrant.call("PUT", "/collections/x", reader, qdrant_access.collection_config(2))[0] == 403
    )
    manager = sign({"access": "m"})
    assert (
        qdrant.call("PUT", "/collections/x", manager, qdrant_access.collection_config(2))[0] == 200
    )
    # No access claim: full access, as in Qdrant.
    assert qdrant.call("DELETE", "/collections/x", sign({}))[0] == 200


def test_bad_tokens_and_keys_are_refused(qdrant: Qdrant) -> None:
    make_collections(qdrant, ALPHA)
    path = f"/collections/{ALPHA[0]}"
    forged = qdrant_access.token("another-key-0123456789abcdef", ALPHA)
    cases = {
        "no key": (None, 401, "Must provide an API key or an Authorization bearer token"),
        "wrong key": (KEY + "x", 401, "Invalid API key or JWT"),
        "forged token": (forged, 403, "Forbidden: InvalidSignature"),
        "expired": (
            sign({"exp": int(time.time()) - 120, "access": "m"}),
            403,
            "Forbidden: ExpiredSignature",
        ),
        "no expiry": (sign({"access": "m"}, expiry=False), 401, "Invalid API key or JWT"),
        "not HS256": (
            ".".join(
                [
                    base64.urlsafe_b64encode(b'{"alg":"none"}').decode().rstrip("="),
                    *qdrant_access.token(KEY, ALPHA).split(".")[1:],
                ]
            ),
            401,
            "Invalid API key or JWT",
        ),
    }
    for case, (key, status, error) in cases.items():
        answer = qdrant.call("GET", path, key)
        assert answer[0] == status, case
        assert answer[1]["status"]["error"] == error, case
    # Not expired yet (within the leeway): allowed.
    fresh = sign({"exp": int(time.time()) + 60, "access": "r"})
    assert qdrant.call("GET", path, fresh)[0] == 200
    # Health needs no key.
    assert qdrant.call("GET", "/readyz")[0] == 200


def test_without_jwt_rbac_a_token_is_just_a_wrong_key(tmp_path: Path) -> None:
    q = start(tmp_path, jwt_rbac=False)
    try:
        token = qdrant_access.token(KEY, ALPHA)
        assert q.call("GET", "/collections", token)[0] == 401
        assert q.call("GET", "/collections", KEY)[0] == 200
    finally:
        q.proc.kill()
        q.proc.communicate()


def test_log_holds_decoded_claims_and_never_a_secret(qdrant: Qdrant) -> None:
    make_collections(qdrant, ALPHA)
    token = qdrant_access.token(KEY, ALPHA)
    forged = qdrant_access.token("another-key-0123456789abcdef", ALPHA)
    qdrant.call("GET", f"/collections/{ALPHA[0]}", token)
    qdrant.call("GET", f"/collections/{BETA[0]}", token)
    qdrant.call("GET", "/collections", forged)
    qdrant.call("GET", "/collections")
    text = (qdrant.storage / "test-double-requests.log").read_text()
    for secret in (KEY, token, forged, token.split(".")[2], forged.split(".")[2]):
        assert secret not in text
    log = qdrant.log()
    jwt = [e for e in log if e["auth"] == "jwt"]
    assert [(e["path"], e["status"]) for e in jwt] == [
        (f"/collections/{ALPHA[0]}", 200),
        (f"/collections/{BETA[0]}", 403),
    ]
    assert all(e["claims"] == qdrant_access.claims(ALPHA) for e in jwt)
    assert [e["status"] for e in log[-2:]] == [403, 401]
    assert [e["auth"] for e in log[-2:]] == ["invalid", "none"]
    assert all(e["api_key_ok"] for e in log if e["auth"] == "api-key")
    assert {e["client"] for e in log} == {"127.0.0.1"}


def test_collections_survive_a_restart(tmp_path: Path) -> None:
    q = start(tmp_path)
    try:
        make_collections(q, ALPHA)
    finally:
        q.proc.kill()
        q.proc.communicate()
    again = start(tmp_path)
    try:
        assert again.call("GET", f"/collections/{ALPHA[0]}/exists", KEY)[1]["result"] == {
            "exists": True
        }
    finally:
        again.proc.kill()
        again.proc.communicate()


def test_decode_jwt_in_process() -> None:
    token = qdrant_access.token(KEY, ALPHA)
    assert double.decode_jwt(token, KEY) == qdrant_access.claims(ALPHA)
    assert double.decode_jwt("not-a-jwt", KEY) is None
    assert double.decode_jwt("a.b.c", KEY) is None
    with pytest.raises(double.Refused) as refused:
        double.decode_jwt(token, KEY + "x")
    assert refused.value.status == 403


def scrape(q: Qdrant, token: str | None = None) -> tuple[int, str, str]:
    """GET /metrics as Prometheus asks it (an Authorization: Bearer header): the status, the
    Content-Type and the body."""
    context = ssl.create_default_context(cafile=str(q.ca_file))
    conn = http.client.HTTPSConnection("127.0.0.1", q.port, timeout=10, context=context)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    try:
        conn.request("GET", "/metrics", headers=headers)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read().decode()
    finally:
        conn.close()


def samples(text: str) -> dict[str, float]:
    """A Prometheus text exposition's samples by metric name and labels, comments checked."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert line.split()[1] in ("HELP", "TYPE"), line
            continue
        name, _, value = line.rpartition(" ")
        found[name] = float(value)
    return found


def test_metrics_answer_prometheus_text_to_global_access(qdrant: Qdrant) -> None:
    make_collections(qdrant, ALPHA)
    for token in (KEY, sign({"access": "r"}), sign({"access": "m"}), sign({})):
        status, content_type, text = scrape(qdrant, token)
        assert status == 200, text
        assert content_type.startswith("text/plain"), content_type
        found = samples(text)
        assert found["collections_total"] == len(ALPHA)
        assert found[f'app_info{{name="qdrant",version="{double.VERSION}"}}'] == 1
        assert "# TYPE collections_total gauge" in text


def test_metrics_refuse_collection_tokens_and_strangers(qdrant: Qdrant) -> None:
    make_collections(qdrant, ALPHA)
    scoped = sign({"access": [{"collection": ALPHA[0], "access": "rw"}]})
    assert scrape(qdrant, scoped)[0] == 403
    assert scrape(qdrant)[0] == 401
    assert scrape(qdrant, "not-the-key")[0] == 401
    assert scrape(qdrant, sign({"access": "r"}, secret="another-key-0123456789abcdef"))[0] == 403
    statuses = [entry["status"] for entry in qdrant.log() if entry["path"] == "/metrics"]
    assert statuses == [403, 401, 401, 403]


def test_metrics_take_the_token_prometheus_is_given(qdrant: Qdrant) -> None:
    """prometheus.qdrant_token(): the generated credentials_file's text, newline and all
    (Prometheus trims it), is a global read-only JWT that /metrics takes."""
    from owuibuild.hostconfig import prometheus

    plan = SimpleNamespace(qdrant_api_key=SimpleNamespace(name="shared.qdrant_api_key"))
    token = prometheus.qdrant_token(plan, {"shared.qdrant_api_key": KEY})  # type: ignore[arg-type]
    assert token.endswith("\n")
    assert double.decode_jwt(token.strip(), KEY)["access"] == "r"
    assert scrape(qdrant, token.strip())[0] == 200
