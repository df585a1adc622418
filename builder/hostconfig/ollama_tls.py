"""Section: the TLS terminator in front of Ollama on each Ollama host.

Ollama has no TLS and no authentication, so it listens on loopback only (see ollama.py) and
Caddy, from the distribution's archive, serves it on the private address: HTTPS only (TLS 1.2
or later) with the host's certificate from the fleet CA, answers streamed to the client as
Ollama writes them, and, unless the blueprint allows instances to manage models, only the
inference and listing endpoints: anything else (pull, push, create, copy, delete, blobs) gets
403 and never reaches Ollama. Its configuration is Caddy's JSON, serialized from data here.

The package's own caddy.service (Caddyfile: port 80 on every address) never runs: an empty
unit file masks it before the package is installed, in a golden image too. Caddy runs as its
own unit instead, as the package's `caddy` user, with its admin endpoint off.
"""

from __future__ import annotations

import json
from typing import Any

from ..plan import OLLAMA_LOOPBACK, OLLAMA_PORT, SERVER_CERT, SERVER_KEY, HostPlan, Plan
from ..quoting import render_template
from ..secrets import Secrets
from . import UNIT_DIR, Command, File, Part, start_units

ORDER = 231

CADDY = "/usr/bin/caddy"
UNIT_NAME = "owui-ollama-tls.service"
UNIT = f"{UNIT_DIR}/{UNIT_NAME}"
CONFIG = "/etc/owuibuild/ollama-tls.json"
# An empty unit file masks the package's unit (systemd.unit(5)): it can never start.
PACKAGED_UNIT = f"{UNIT_DIR}/caddy.service"
CADDY_HOME = "/var/lib/caddy"  # the package's `caddy` user's home: Caddy's storage
# The copy of the host's key that only caddy reads (its certificate is SERVER_CERT).
TLS_KEY_DIR = "/etc/caddy/tls"
TLS_KEY = f"{TLS_KEY_DIR}/server.key"

# What an Open WebUI instance needs of Ollama: inference, embeddings and the model list.
# Paths match exactly, except the OpenAI-compatible routes under /v1/.
INFERENCE_PATHS = (
    "/",
    "/api/version",
    "/api/tags",
    "/api/ps",
    "/api/show",
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/v1/*",
)
REFUSED = {
    "error": "owuibuild: this Ollama endpoint is closed to instances; the blueprint's "
    "shared.ollama.allow_model_management opens it"
}


def upstream() -> str:
    return f"{OLLAMA_LOOPBACK}:{OLLAMA_PORT}"


def config(plan: Plan, host: HostPlan) -> dict[str, Any]:
    """Caddy's JSON configuration (its keys follow Caddy's own JSON structure)."""
    address = str(host.host.address)
    proxy: dict[str, Any] = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": upstream()}],
        # Every chunk to the client as soon as Ollama writes it: streamed answers stay streamed.
        "flush_interval": -1,
        # Ollama on loopback refuses a Host it does not take for local (its allowed-hosts
        # middleware); it is asked as what it is, its loopback address.
        "headers": {"request": {"set": {"Host": [upstream()]}}},
    }
    routes: list[dict[str, Any]]
    if plan.fleet.shared.ollama.allow_model_management:
        routes = [{"handle": [proxy]}]
    else:
        routes = [
            {"match": [{"path": list(INFERENCE_PATHS)}], "handle": [proxy], "terminal": True},
            {
                "handle": [
                    {
                        "handler": "static_response",
                        "status_code": 403,
                        "headers": {"Content-Type": ["application/json"]},
                        "body": json.dumps(REFUSED),
                    }
                ]
            },
        ]
    return {
        "admin": {"disabled": True, "config": {"persist": False}},
        "apps": {
            "http": {
                "servers": {
                    "ollama": {
                        "listen": [f"{address}:{OLLAMA_PORT}"],
                        # TCP only: no HTTP/3 listener on UDP, which the firewall keeps shut.
                        "protocols": ["h1", "h2"],
                        # Certificates come from the fleet CA, never from ACME; no port 80.
                        "automatic_https": {"disable": True},
                        # Clients dial the address and send no SNI: the certificate naming it.
                        "tls_connection_policies": [
                            {"protocol_min": "tls1.2", "default_sni": address}
                        ],
                        "routes": routes,
                    }
                }
            },
            "tls": {"certificates": {"load_files": [{"certificate": SERVER_CERT, "key": TLS_KEY}]}},
        },
    }


def config_text(plan: Plan, host: HostPlan) -> str:
    return json.dumps(config(plan, host), indent=2, sort_keys=True) + "\n"


def unit() -> str:
    return render_template("ollama-tls.service.j2", caddy=CADDY, config=CONFIG, home=CADDY_HOME)


def key_commands() -> tuple[Command, ...]:
    """The host's key, copied for caddy alone."""
    return (
        ("install", "-d", "-o", "root", "-g", "caddy", "-m", "0750", TLS_KEY_DIR),
        ("install", "-o", "caddy", "-g", "caddy", "-m", "0600", SERVER_KEY, TLS_KEY),
    )


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part | None:
    del secrets
    if "ollama" not in host.services:
        return None
    return Part(
        name="ollama-tls",
        packages=("caddy",),
        files=(
            File(PACKAGED_UNIT, "", install=True),
            File(UNIT, unit()),
            File(CONFIG, config_text(plan, host)),
        ),
        configure=(*key_commands(), start_units(UNIT_NAME, wait=False)),
        awaited=(UNIT_NAME,),
    )
