"""Section: Qdrant on the shared host.

The pinned musl release (static, so it runs on Debian 12 and Ubuntu 24.04 alike) from the
blueprint's mirror or upstream, checksum verified before it is extracted; a `qdrant` system
user; a configuration with absolute storage and snapshot paths on the data volume, the
private address, HTTPS only with the host's certificate from the fleet CA (cluster peers too,
verified against the fleet CA), telemetry off and the API key from the secrets (so the file is
0600, owned by qdrant); and a hardened unit that restarts on failure.
"""

from __future__ import annotations

import json
from typing import Any

from .. import artifacts, qdrant_access, yamldump
from ..plan import (
    DATA_MOUNT,
    FLEET_CA,
    QDRANT_DATA,
    QDRANT_PORT,
    SCRIPT_DIR,
    SERVER_CERT,
    SERVER_KEY,
    HostPlan,
    Plan,
)
from ..quoting import QuotingError, render_template, systemd_word
from ..secrets import Secrets
from . import UNIT_DIR, Command, File, Part, start_units
from ._release import install, system_user
from .datavolume import state_dir_command

ORDER = 220

BINARY = "/usr/local/bin/qdrant"
CONFIG = "/etc/qdrant/config.yaml"
UNIT = "/etc/systemd/system/qdrant.service"
STORAGE = f"{QDRANT_DATA}/storage"
SNAPSHOTS = f"{QDRANT_DATA}/snapshots"
# The copy of the host's key that only qdrant reads (its certificate is SERVER_CERT).
TLS_KEY_DIR = "/etc/qdrant/tls"
TLS_KEY = f"{TLS_KEY_DIR}/server.key"
# The instances' collections, made by the first node (see qdrant_access).
COLLECTIONS_UNIT_NAME = "owui-qdrant-collections.service"
COLLECTIONS_UNIT = f"{UNIT_DIR}/{COLLECTIONS_UNIT_NAME}"
COLLECTIONS_SCRIPT = f"{SCRIPT_DIR}/qdrant-collections.sh"
# `api-key: <key>` for curl's --header @file; handed to the unit with LoadCredential=.
KEY_FILE = "/etc/owuibuild/qdrant/api-key.header"
CREDENTIAL = "qdrant-api-key.header"


def artifact(plan: Plan) -> artifacts.Artifact:
    q = plan.fleet.shared.qdrant
    found = artifacts.qdrant(q.version, q.sha256)
    if found is None:  # validation refuses unpinned versions
        raise ValueError(f"qdrant {q.version} has no sha256")
    return found


def config(plan: Plan, secrets: Secrets, host: HostPlan) -> dict[str, Any]:
    """Qdrant's config file. Keys follow Qdrant's own config/config.yaml."""
    storage: dict[str, Any] = {"storage_path": STORAGE, "snapshots_path": SNAPSHOTS}
    doc: dict[str, Any] = {
        "log_level": "INFO",
        "storage": storage,
        "service": {
            "host": str(host.host.address),
            "http_port": QDRANT_PORT,
            "grpc_port": None,  # gRPC off: Open WebUI uses HTTP, and the firewall opens only it
            "api_key": secrets[plan.qdrant_api_key.name],
            "enable_cors": False,
            "enable_tls": True,
            # Tokens signed with api_key, each limited to one instance's collections.
            "jwt_rbac": True,
        },
        # ca_cert verifies cluster peers; clients authenticate with the API key, not a certificate.
        "tls": {"cert": SERVER_CERT, "key": TLS_KEY, "ca_cert": FLEET_CA},
        "telemetry_disabled": True,
    }
    cluster = plan.qdrant_cluster
    if cluster is not None:
        storage["collection"] = {"replication_factor": cluster.replication_factor}
        doc["cluster"] = {
            "enabled": True,
            "p2p": {"port": cluster.p2p_port, "enable_tls": True},
            "consensus": {"tick_period_ms": 100},
        }
    return doc


def key_commands() -> tuple[Command, ...]:
    """The host's key, copied for qdrant alone."""
    return (
        ("install", "-d", "-o", "root", "-g", "qdrant", "-m", "0750", TLS_KEY_DIR),
        ("install", "-o", "qdrant", "-g", "qdrant", "-m", "0600", SERVER_KEY, TLS_KEY),
    )


def key_header(plan: Plan, secrets: Secrets) -> str:
    key = secrets[plan.qdrant_api_key.name]
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise QuotingError("the Qdrant API key holds a control character; it cannot be a header")
    return f"api-key: {key}\n"


def makes_collections(plan: Plan, host: HostPlan) -> bool:
    """The first Qdrant node makes the collections (a cluster shares them)."""
    return host.host == plan.qdrant_hosts[0]


def _body(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True)


def collections_script(plan: Plan) -> str:
    return render_template(
        "qdrant-collections.sh.j2",
        url=plan.qdrant_url,
        fleet_ca=FLEET_CA,
        credential=CREDENTIAL,
        collections=[c for i in plan.instances for c in i.qdrant_collections],
        collection=_body(qdrant_access.collection_config(plan.embedding_dimensions)),
        indexes=[_body(i) for i in qdrant_access.INDEXES],
    )


def collections_unit() -> str:
    return render_template(
        "qdrant-collections.service.j2",
        credential=systemd_word(CREDENTIAL),
        key_file=KEY_FILE,
        script=COLLECTIONS_SCRIPT,
    )


def collections_files(plan: Plan, secrets: Secrets) -> tuple[File, ...]:
    return (
        File(KEY_FILE, key_header(plan, secrets), permissions="0600", defer=True),
        File(
            COLLECTIONS_SCRIPT,
            collections_script(plan),
            permissions="0755",
            live=True,
            reader=COLLECTIONS_UNIT_NAME,  # runs again: makes a new instance's collections
        ),
        File(COLLECTIONS_UNIT, collections_unit()),
    )


def peer_args(plan: Plan, host: HostPlan) -> list[str]:
    """Cluster mode: the first node announces its URI, the others bootstrap from it."""
    cluster = plan.qdrant_cluster
    if cluster is None:
        return []
    if host.host == cluster.bootstrap:
        return ["--uri", cluster.peer_url(host.host)]
    return [
        "--bootstrap",
        cluster.peer_url(cluster.bootstrap),
        "--uri",
        cluster.peer_url(host.host),
    ]


def unit(plan: Plan, host: HostPlan) -> str:
    return render_template(
        "qdrant.service.j2",
        mount=DATA_MOUNT,
        binary=BINARY,
        config=CONFIG,
        state=QDRANT_DATA,
        peer_args=peer_args(plan, host),
    )


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part | None:
    if "qdrant" not in host.services:
        return None
    script, install_command = install(plan, artifact(plan), files=[("qdrant", BINARY)])
    makes = makes_collections(plan, host)
    units = ("qdrant.service", *((COLLECTIONS_UNIT_NAME,) if makes else ()))
    return Part(
        name="qdrant",
        packages=("ca-certificates", "curl"),
        files=(
            script,
            File(UNIT, unit(plan, host)),
            File(
                CONFIG,
                yamldump.dump(config(plan, secrets, host)),
                permissions="0600",
                owner="qdrant:qdrant",
                defer=True,
            ),
            *(collections_files(plan, secrets) if makes else ()),
        ),
        install=(install_command,),
        configure=(
            state_dir_command("qdrant", "0750", QDRANT_DATA, STORAGE, SNAPSHOTS),
            *key_commands(),
            start_units(*units, wait=False),
        ),
        awaited=units,
        extra={"users": [system_user("qdrant", QDRANT_DATA)]},
    )
