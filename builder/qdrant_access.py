"""Each instance's own Qdrant credential, and the collections it may use.

Qdrant with ``jwt_rbac`` accepts, besides its API key, JSON Web Tokens signed with that key
(HS256) whose ``access`` claim limits what they may do. Each instance gets a token that lists
only its own collections, with read-write access: it can search, write and delete points
there and nowhere else, and cannot see, create or delete any collection. The API key itself
stays on the Qdrant hosts (and with the backups and the operator).

Open WebUI 0.12.4 in its multitenancy mode keeps everything in five collections per prefix
(retrieval/vector/dbs/qdrant_multitenancy.py); since a read-write token cannot create them, the
Qdrant host makes them ahead (hostconfig/qdrant.py), exactly as Open WebUI would.

Pure: a token is a function of the key and the claims (no issue time, and one fixed expiry),
so renders stay byte-identical; rotating the key replaces every token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from typing import Any

# Open WebUI's multitenancy collections: <prefix>_<suffix>.
SUFFIXES = ("memories", "knowledge", "files", "web-search", "hash-based")
# How Open WebUI makes each one (QDRANT_ON_DISK and QDRANT_HNSW_M at their defaults): one
# keyword index per tenant, no global HNSW graph, keyword indexes on two metadata fields.
HNSW = {"payload_m": 16, "m": 0}
INDEXES: tuple[dict[str, Any], ...] = (
    {
        "field_name": "tenant_id",
        "field_schema": {"type": "keyword", "is_tenant": True, "on_disk": False},
    },
    *(
        {"field_name": field, "field_schema": {"type": "keyword", "on_disk": False}}
        for field in ("metadata.hash", "metadata.file_id")
    ),
)

# Vector length of common Ollama embedding models, by name (and by name before the tag).
EMBEDDING_DIMENSIONS = {
    "nomic-embed-text": 768,
    "mxbai-embed-large": 1024,
    "bge-m3": 1024,
    "bge-large": 1024,
    "all-minilm": 384,
    "snowflake-arctic-embed": 1024,
    "snowflake-arctic-embed2": 1024,
    "paraphrase-multilingual": 768,
    "granite-embedding": 384,
    "granite-embedding:30m": 384,
    "granite-embedding:278m": 768,
    "embeddinggemma": 768,
    "qwen3-embedding": 4096,
    "qwen3-embedding:0.6b": 1024,
    "qwen3-embedding:4b": 2560,
    "qwen3-embedding:8b": 4096,
}


def known_dimensions(model: str) -> int | None:
    """The vector length of ``model`` if owuibuild knows it: the exact name, else its name
    without the tag (``latest`` and version tags keep their model's length)."""
    found = EMBEDDING_DIMENSIONS.get(model)
    if found is None:
        found = EMBEDDING_DIMENSIONS.get(model.split(":", 1)[0])
    return found


def collections(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}_{suffix}" for suffix in SUFFIXES)


def collection_config(size: int) -> dict[str, Any]:
    """The body of Qdrant's PUT /collections/{name}, as Open WebUI would send it."""
    return {"vectors": {"size": size, "distance": "Cosine", "on_disk": False}, "hnsw_config": HNSW}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _compact(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


# Every token expires at 2100-01-01T00:00:00Z: in effect never (rotating the key is how tokens
# end), but present, because Qdrant's JWT parser treats a token without `exp` as no JWT at all
# and refuses it (its own test_no_exp in src/common/auth/jwt_parser.rs).
EXPIRY = 4102444800


def claims(names: Sequence[str]) -> dict[str, Any]:
    return {"access": [{"collection": name, "access": "rw"} for name in names], "exp": EXPIRY}


def signed(api_key: str, doc: dict[str, Any]) -> str:
    """A JWT as Qdrant takes them (HS256, signed with its API key) carrying the claims ``doc``."""
    signing_input = f"{_b64(_compact({'alg': 'HS256', 'typ': 'JWT'}))}.{_b64(_compact(doc))}"
    signature = hmac.new(api_key.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def token(api_key: str, names: Sequence[str]) -> str:
    """A JWT (HS256, signed with Qdrant's API key) granting read-write access to ``names``."""
    return signed(api_key, claims(names))
