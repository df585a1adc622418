"""Each instance's own Qdrant credential (owuibuild.qdrant_access): a token signed with the
server's key, limited to the instance's five collections, which the Qdrant host makes ahead."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import BLUEPRINTS, Rendered
from owuibuild import qdrant_access
from owuibuild.diagnostics import Severity
from owuibuild.hostconfig import qdrant
from owuibuild.pipeline import compile_blueprint
from owuibuild.targets.hosts import unpack_user_data

pytestmark = pytest.mark.unit


def decode(token: str, key: str) -> dict[str, Any]:
    """The claims of ``token`` after checking its HS256 signature with ``key``, as Qdrant does."""
    header, payload, signature = token.split(".")

    def unpad(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    expected = hmac.new(key.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(unpad(signature), expected), "bad signature"
    assert json.loads(unpad(header)) == {"alg": "HS256", "typ": "JWT"}
    claims: dict[str, Any] = json.loads(unpad(payload))
    return claims


def env_of(rendered: Rendered, name: str) -> dict[str, str]:
    lines = rendered.text(f"instances/{name}/{name}.env").splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


@pytest.fixture
def fleet(render_example: Callable[[str], Rendered]) -> Rendered:
    return render_example("multi-host.yml")


def test_each_instance_holds_a_token_for_its_own_collections_only(fleet: Rendered) -> None:
    key = fleet.secrets["qdrant.api_key"]  # type: ignore[index]
    tokens = set()
    for inst in fleet.plan.instances:  # type: ignore[attr-defined]
        token = env_of(fleet, inst.name)["QDRANT_API_KEY"]
        assert token != key
        claims = decode(token, key)
        prefix = env_of(fleet, inst.name)["QDRANT_COLLECTION_PREFIX"]
        assert claims == {
            "access": [
                {"collection": f"{prefix}_{suffix}", "access": "rw"}
                for suffix in ("memories", "knowledge", "files", "web-search", "hash-based")
            ],
            # Qdrant refuses a token without an expiry; this one is 2100-01-01.
            "exp": 4102444800,
        }
        tokens.add(token)
        with pytest.raises(AssertionError, match="bad signature"):
            decode(token, key + "x")  # the check can fail
    assert len(tokens) == len(fleet.plan.instances)  # type: ignore[attr-defined]


def test_the_server_key_stays_off_the_instance_hosts(fleet: Rendered) -> None:
    key = fleet.secrets["qdrant.api_key"]  # type: ignore[index]
    plan = fleet.plan
    for host in plan.docker_hosts:  # type: ignore[attr-defined]
        assert not host.services
        assert key.encode() not in unpack_user_data(fleet.files[f"hosts/{host.name}/user-data"])
    for path, data in fleet.files.items():
        if path.startswith("instances/"):
            assert key.encode() not in data, path
    # where it is: Qdrant's configuration and the collections' credential
    shared = unpack_user_data(fleet.files[f"hosts/{plan.shared.name}/user-data"])  # type: ignore[attr-defined]
    assert key.encode() in shared


def test_qdrant_takes_tokens_and_its_first_node_makes_every_collection(fleet: Rendered) -> None:
    plan, secrets = fleet.plan, fleet.secrets
    config = qdrant.config(plan, secrets, plan.shared)  # type: ignore[arg-type, attr-defined]
    assert config["service"]["jwt_rbac"] is True
    script = qdrant.collections_script(plan)  # type: ignore[arg-type]
    for inst in plan.instances:  # type: ignore[attr-defined]
        for name in inst.qdrant_collections:
            assert f" {name}" in script
    body = json.dumps(qdrant_access.collection_config(768), separators=(",", ":"), sort_keys=True)
    assert f"--data '{body}'" in script
    assert '"is_tenant":true' in script and "metadata.file_id" in script
    part = qdrant.part(plan, plan.shared, secrets)  # type: ignore[arg-type, attr-defined]
    assert part is not None and qdrant.COLLECTIONS_UNIT_NAME in part.awaited
    header = next(f for f in part.files if f.path == qdrant.KEY_FILE)
    assert header.permissions == "0600" and header.content.startswith("api-key: ")


def test_only_the_first_node_of_a_cluster_makes_them(
    render_example: Callable[[str], Rendered],
) -> None:
    scale = render_example("scale-out.yml")
    plan = scale.plan
    makers = [
        h.name
        for h in plan.hosts  # type: ignore[attr-defined]
        if "qdrant" in h.services and qdrant.makes_collections(plan, h)  # type: ignore[arg-type]
    ]
    assert makers == [plan.qdrant_hosts[0].name]  # type: ignore[attr-defined]


def test_tokens_are_stable_and_follow_the_key() -> None:
    names = qdrant_access.collections("math")
    assert qdrant_access.token("k" * 32, names) == qdrant_access.token("k" * 32, names)
    assert qdrant_access.token("k" * 32, names) != qdrant_access.token("j" * 32, names)


@pytest.mark.parametrize(
    ("model", "size"),
    [("nomic-embed-text", 768), ("nomic-embed-text:latest", 768), ("bge-m3", 1024),
     ("qwen3-embedding:0.6b", 1024), ("all-minilm:l6-v2", 384), ("my-embedder", None)],
)  # fmt: skip
def test_known_vector_lengths(model: str, size: int | None) -> None:
    assert qdrant_access.known_dimensions(model) == size


def test_an_unknown_embedding_model_needs_its_vector_length(tmp_path: Path) -> None:
    path = tmp_path / "seed-example.yml"
    shutil.copy(BLUEPRINTS / "seed-example.yml", path)
    text = path.read_text().replace(
        "embedding_model: nomic-embed-text", "embedding_model: my-embedder"
    )
    path.write_text(text)
    compiled = compile_blueprint(path)
    (err,) = [d for d in compiled.diagnostics if d.severity is Severity.ERROR]
    assert err.path == ("shared", "ollama", "embedding_model")
    assert "embedding_dimensions" in (err.hint or "")
    path.write_text(
        text.replace(
            "embedding_model: my-embedder",
            "embedding_model: my-embedder\n    embedding_dimensions: 512",
        )
    )
    compiled = compile_blueprint(path)
    assert compiled.ok
    assert compiled.plan is not None and compiled.plan.embedding_dimensions == 512
