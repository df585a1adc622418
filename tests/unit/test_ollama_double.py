"""The Ollama TEST DOUBLE (tests/doubles/ollama_double.py, NOT Ollama), which the boot tier
installs as the `ollama` binary and the services tier runs behind the TLS terminator: its command
line stays what the boot tier's generated scripts call, it refuses a foreign Host as Ollama on
loopback does, streams (and holds a last line when asked), answers embeddings of a settable
length, and records what reached it. The server runs as its own process on 127.0.0.1, as
`ollama serve` runs; the Host rule is also checked as a pure function."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from doubles import ollama_double
from infra.vm import free_port

pytestmark = pytest.mark.unit

DOUBLE = Path(ollama_double.__file__)
TIMEOUT = 30.0  # a bound only a failure reaches


@dataclass
class Double:
    port: int
    root: Path
    env: dict[str, str]

    def request(
        self, method: str, path: str, body: object = None, host: str | None = None
    ) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT)
        try:
            data = None if body is None else json.dumps(body).encode()
            conn.request(method, path, body=data, headers={"Host": host} if host else {})
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: object = None) -> Any:
        status, data = self.request(method, path, body)
        assert status == 200, (status, data)
        return json.loads(data)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(DOUBLE), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )


def environment(root: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(root / "home"),
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": str(root / "models"),
        **extra,
    }


@contextmanager
def serving(root: Path, **extra: str) -> Iterator[Double]:
    """`ollama serve` on a free 127.0.0.1 port, with extra environment variables."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = environment(root, port, **extra)
    with (root / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(DOUBLE), "serve"], env=env, stdout=log, stderr=log
        )
    double = Double(port, root, env)
    try:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                if double.request("GET", "/api/version")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (root / "serve.log").read_text()
            assert time.monotonic() < deadline, (root / "serve.log").read_text()
            time.sleep(0.05)
        yield double
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)


@pytest.fixture
def double(tmp_path: Path) -> Iterator[Double]:
    with serving(tmp_path) as d:
        yield d


# -- the command line the boot tier's scripts use ------------------------------------------------


@pytest.mark.parametrize("flag", ["--version", "-v", "version"])
def test_version(tmp_path: Path, flag: str) -> None:
    result = subprocess.run(
        [sys.executable, str(DOUBLE), flag], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0
    assert result.stdout == f"ollama version is {ollama_double.VERSION}\n"


def test_ollama_host_defaults_to_ollamas_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert ollama_double.host() == ("127.0.0.1", 11434)
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.7:8080")
    assert ollama_double.host() == ("127.0.0.7", 8080)
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:11434")
    assert ollama_double.host() == ("127.0.0.1", 11434)


def test_pull_list_show(double: Double) -> None:
    missing = double.cli("show", "tinyllama")
    assert missing.returncode == 1 and "not found" in missing.stderr
    pulled = double.cli("pull", "tinyllama")
    assert pulled.returncode == 0 and pulled.stdout == "success\n", pulled.stderr
    manifest = double.root / "models/manifests/registry.ollama.ai/library/tinyllama/latest"
    assert manifest.is_file()
    assert double.cli("list").stdout == "tinyllama:latest\n"
    assert double.cli("show", "tinyllama").returncode == 0
    assert double.json("GET", "/api/double/pulls") == {"count": 1, "models": ["tinyllama"]}


def test_the_cli_without_a_server_says_so(tmp_path: Path) -> None:
    d = Double(free_port(), tmp_path, environment(tmp_path, free_port()))
    result = d.cli("list")
    assert result.returncode == 1 and "could not connect" in result.stderr


def test_pull_log_file(tmp_path: Path) -> None:
    log = tmp_path / "pulls.log"
    with serving(tmp_path / "d", OLLAMA_DOUBLE_PULL_LOG=str(log)) as d:
        d.json("POST", "/api/pull", {"model": "a:1"})
        d.json("POST", "/api/create", {"model": "b:1"})  # made, not pulled
        d.json("POST", "/api/pull", {"model": "c"})
        assert d.json("GET", "/api/double/pulls")["count"] == 2
        assert {m["name"] for m in d.json("GET", "/api/tags")["models"]} == {
            "a:1",
            "b:1",
            "c:latest",
        }
        assert d.request("DELETE", "/api/delete", {"model": "b:1"})[0] == 200
        assert d.request("DELETE", "/api/delete", {"model": "b:1"})[0] == 404
    assert log.read_text() == "a:1\nc\n"


# -- Ollama's allowed-hosts rule ----------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    ["", "localhost", "localhost:11434", "127.0.0.1:11434", "127.9.9.9", "[::1]:11434",
     "10.9.0.10:11434", "172.16.0.1", "192.168.1.50:11434", "0.0.0.0", "[fd00::1]:1",
     "box.local", "ollama.internal:11434", "a.localhost", socket.gethostname()],
)  # fmt: skip
def test_local_hosts_are_allowed(host: str) -> None:
    assert ollama_double.host_allowed(host)


@pytest.mark.parametrize(
    "host",
    ["ollama.example.org:11434", "203.0.113.7:11434", "8.8.8.8", "[2001:db8::1]:11434",
     "172.32.0.1", "localhost.example.org", "evil.local.example.org"],
)  # fmt: skip
def test_foreign_hosts_are_refused(host: str) -> None:
    assert not ollama_double.host_allowed(host)


def test_split_host_strips_the_port_as_go_does() -> None:
    assert ollama_double.split_host("a:1") == "a"
    assert ollama_double.split_host("[::1]:1") == "::1"
    assert ollama_double.split_host("::1") == "::1"  # no port: as it is
    assert ollama_double.split_host("a") == "a"


def test_on_loopback_a_foreign_host_gets_an_empty_403_and_is_recorded(double: Double) -> None:
    assert double.request("GET", "/api/tags", host="ollama.example.org:11434") == (403, b"")
    status, _ = double.request("GET", "/api/tags", host=f"localhost:{double.port}")
    assert status == 200
    requests = double.json("GET", "/api/double/requests")["requests"]
    assert [(r["host"], r["status"]) for r in requests if r["path"] == "/api/tags"] == [
        ("ollama.example.org:11434", 403),
        (f"localhost:{double.port}", 200),
    ]


def test_only_a_loopback_bind_checks_hosts() -> None:
    assert ollama_double.bound_to_loopback("127.0.0.1")
    assert ollama_double.bound_to_loopback("::1")
    assert not ollama_double.bound_to_loopback("0.0.0.0")
    assert not ollama_double.bound_to_loopback("10.9.0.10")


# -- the records ---------------------------------------------------------------------------------


def test_requests_are_routed_on_the_decoded_path_and_recorded_as_sent(double: Double) -> None:
    assert double.request("GET", "/api/%74ags?x=1")[0] == 200
    assert double.request("POST", "/api/nothing", {})[0] == 404
    assert double.request("HEAD", "/")[0] == 200
    requests = double.json("GET", "/api/double/requests")["requests"]
    # The version probes of the start, then these; never the /api/double/ ones.
    assert [(r["method"], r["path"], r["status"]) for r in requests][-3:] == [
        ("GET", "/api/%74ags?x=1", 200),
        ("POST", "/api/nothing", 404),
        ("HEAD", "/", 200),
    ]
    assert not [r for r in requests if r["path"].startswith("/api/double/")]


# -- inference --------------------------------------------------------------------------------------


def ndjson(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("path", "field"), [("/api/chat", "message"), ("/api/generate", "response")]
)
def test_streamed_and_whole_answers(double: Double, path: str, field: str) -> None:
    status, data = double.request("POST", path, {"model": "m"})
    assert status == 200
    lines = ndjson(data)
    assert len(lines) == ollama_double.STREAM_CHUNKS
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert all(field in line and line["model"] == "m" for line in lines)
    whole = double.json("POST", path, {"model": "m", "stream": False})
    assert whole["done"] is True and field in whole
    (stream,) = double.json("GET", "/api/double/streams")["streams"]
    assert stream == {
        "path": path,
        "sent": len(lines),
        "of": len(lines),
        "held": False,
        "done": True,
    }


def test_a_held_stream_ends_only_when_released(tmp_path: Path) -> None:
    with serving(tmp_path, OLLAMA_DOUBLE_HOLD_LAST="1") as d:
        conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=TIMEOUT)
        try:
            conn.request("POST", "/api/chat", json.dumps({"model": "m"}).encode())
            answer = conn.getresponse()
            first = [json.loads(answer.readline()) for _ in range(ollama_double.STREAM_CHUNKS - 1)]
            assert [line["done"] for line in first] == [False] * len(first)
            deadline = time.monotonic() + TIMEOUT
            while not (stream := d.json("GET", "/api/double/streams")["streams"][0])["held"]:
                assert time.monotonic() < deadline, stream
                time.sleep(0.02)
            assert stream["sent"] == stream["of"] - 1 and not stream["done"], stream
            assert d.json("POST", "/api/double/release") == {}
            (last,) = ndjson(answer.read())
        finally:
            conn.close()
        assert last["done"] is True
        (stream,) = d.json("GET", "/api/double/streams")["streams"]
        assert stream["done"] and not stream["held"]
        # A release that comes first lets the next held answer through without waiting.
        d.json("POST", "/api/double/release")
        status, data = d.request("POST", "/api/generate", {"model": "m"})
        assert status == 200 and len(ndjson(data)) == ollama_double.STREAM_CHUNKS


def test_embeddings_default_to_the_length_the_double_always_had(double: Double) -> None:
    answer = double.json("POST", "/api/embed", {"model": "e", "input": ["a", "b", "c"]})
    assert answer == {"model": "e", "embeddings": [ollama_double.EMBEDDING] * 3}
    assert double.json("POST", "/api/embed", {"model": "e", "input": "a"})["embeddings"] == [
        ollama_double.EMBEDDING
    ]
    assert double.json("POST", "/api/embeddings", {"model": "e", "prompt": "a"}) == {
        "embedding": ollama_double.EMBEDDING
    }


def test_the_embedding_length_is_set_by_the_environment(tmp_path: Path) -> None:
    with serving(tmp_path, OLLAMA_DOUBLE_EMBEDDING_LENGTH="768") as d:
        (vector,) = d.json("POST", "/api/embed", {"model": "e", "input": ["a"]})["embeddings"]
        assert len(vector) == 768 and vector[:4] == ollama_double.EMBEDDING
        assert len(d.json("POST", "/api/embeddings", {"prompt": "a"})["embedding"]) == 768


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_bad_embedding_length_stops_serve(tmp_path: Path, value: str) -> None:
    env = environment(tmp_path, free_port(), OLLAMA_DOUBLE_EMBEDDING_LENGTH=value)
    result = subprocess.run(
        [sys.executable, str(DOUBLE), "serve"], env=env, capture_output=True, text=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert result.returncode != 0 and "OLLAMA_DOUBLE_EMBEDDING_LENGTH" in result.stderr
