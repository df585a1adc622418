"""Section: the front door, HTTPS for the instances of a host (blueprint: front_door).

Caddy, from the distribution's archive, serves every instance of the host by the host name of
its url: HTTPS only (TLS 1.2 or later), HTTP redirected to HTTPS, HSTS, websockets upgraded
(Caddy's reverse proxy does that by itself), answers streamed as the instance writes them,
long reads for slow answers, the blueprint's upload limit (413 beyond it) and X-Forwarded-For,
-Proto and -Host set by Caddy alone: a client's own are dropped. Each instance publishes its
port on loopback only, where Caddy dials it. Certificates come from the fleet CA (tls:
internal: one certificate naming all the host's instance host names) or from an ACME CA (tls:
acme), whose account and certificates Caddy keeps on the data volume, so a replaced host
neither asks again nor meets the CA's rate limits. Its configuration is Caddy's JSON,
serialized from data here.

Caddy runs as the package's `caddy` user in a unit of its own (the package's caddy.service is
masked, see ollama_tls.py), allowed to bind ports 80 and 443 and nothing more.
"""

from __future__ import annotations

import json
from typing import Any

from ..plan import DATA_MOUNT, HTTP_PORT, HTTPS_PORT, LOOPBACK, HostPlan, InstancePlan, Plan
from ..quoting import plain_words, render_template
from ..secrets import Secrets
from . import UNIT_DIR, Command, File, Part, start_units
from .ollama_tls import CADDY, PACKAGED_UNIT, TLS_KEY_DIR

ORDER = 232

UNIT_NAME = "owui-front-door.service"
UNIT = f"{UNIT_DIR}/{UNIT_NAME}"
CONFIG = "/etc/owuibuild/front-door.json"
# Caddy's admin endpoint: only on a socket in the unit's own runtime directory (0700, caddy's),
# for the unit's reload (a converge's new instance or certificate, without dropping a request).
RUNTIME_DIR = "owui-front-door"
ADMIN_SOCKET = f"/run/{RUNTIME_DIR}/admin.sock"
ADMIN_ADDRESS = f"unix/{ADMIN_SOCKET}"
# Caddy's storage (ACME account and certificates, OCSP staples, locks), on the data volume.
STORAGE = f"{DATA_MOUNT}/caddy"
# tls: internal: the certificate the fleet CA issued for the host's instance host names, and
# its key: as generated (root only), and the copy that only caddy reads.
CERT = "/etc/owuibuild/tls/front-door.crt"
KEY = "/etc/owuibuild/tls/front-door.key"
CADDY_KEY = f"{TLS_KEY_DIR}/front-door.key"
# tls: acme with a private ACME directory: the CA its HTTPS certificate chains to.
ACME_DIRECTORY_CA = "/etc/owuibuild/tls/acme-directory-ca.crt"
LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"

MIB = 1024 * 1024
HSTS = "max-age=31536000"
# A chat answer may take minutes to start on a busy CPU-only Ollama, and a stream may pause
# between tokens: no read of the instance's answer is cut short before this.
READ_TIMEOUT = "15m"
WRITE_TIMEOUT = "15m"  # an upload near the limit over a slow link
DIAL_TIMEOUT = "5s"
HEADER_TIMEOUT = "30s"  # a client's request headers; no slow-loris holds a connection
IDLE_TIMEOUT = "5m"
# The headers Caddy's reverse proxy sets from what it sees (it drops a client's own, since no
# client is a trusted proxy); Open WebUI trusts them from this proxy only (FORWARDED_ALLOW_IPS).
FORWARDED = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host")


def larger_than(limit: int) -> str:
    """An RE2 pattern that matches exactly the decimal numbers greater than ``limit``."""
    digits = str(limit)
    longer = f"[1-9][0-9]{{{len(digits)},}}"
    same_length = [
        f"{digits[:i]}[{int(d) + 1}-9][0-9]{{{len(digits) - i - 1}}}"
        for i, d in enumerate(digits)
        if d != "9"
    ]
    return "^0*(" + "|".join([longer, *same_length]) + ")$"


def too_large(max_bytes: int) -> dict[str, Any]:
    """The route that answers 413 to a request that declares a body over the limit, before any
    of it is read: Caddy's own body limit (kept for chunked bodies, which declare no length)
    only breaks the connection to the instance, which clients see as 502."""
    return {
        "match": [{"header_regexp": {"Content-Length": {"pattern": larger_than(max_bytes)}}}],
        "handle": [
            {
                "handler": "static_response",
                "status_code": 413,
                # No Connection: close: over HTTP/2 it makes Go's server drop the whole
                # connection while the client still sends, and the answer is lost. Go closes
                # an HTTP/1.1 connection itself when much of a body is left unread.
                "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
                "body": f"owuibuild front door: the request is over the upload limit of "
                f"{max_bytes // MIB} MiB (front_door.max_upload_mb)\n",
            }
        ],
        "terminal": True,
    }


def upstream(inst: InstancePlan) -> str:
    return f"{LOOPBACK}:{inst.port}"


def site(plan: Plan, inst: InstancePlan) -> dict[str, Any]:
    """The route that serves one instance, by the host name of its url."""
    assert inst.server_name is not None  # validation: a front door's instances have a url
    door = plan.front_door
    assert door is not None
    proxy: dict[str, Any] = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": upstream(inst)}],
        # Every chunk to the client as soon as the instance writes it: streamed answers and
        # server-sent events stay streamed.
        "flush_interval": -1,
        "transport": {
            "protocol": "http",
            "dial_timeout": DIAL_TIMEOUT,
            "read_timeout": READ_TIMEOUT,
            "write_timeout": WRITE_TIMEOUT,
        },
    }
    return {
        "match": [{"host": [inst.server_name]}],
        "handle": [
            {
                "handler": "subroute",
                "routes": [
                    {
                        "handle": [
                            {
                                "handler": "headers",
                                "response": {"set": {"Strict-Transport-Security": [HSTS]}},
                            }
                        ]
                    },
                    too_large(door.max_upload_mb * MIB),
                    {
                        "handle": [
                            {"handler": "request_body", "max_size": door.max_upload_mb * MIB},
                            proxy,
                        ]
                    },
                ],
            }
        ],
        "terminal": True,
    }


# A request for a host name the front door does not serve (a stray DNS name, a Host header
# another name's TLS session carries): 421, never an instance, and never a quiet 200.
MISDIRECTED = {
    "handle": [
        {
            "handler": "static_response",
            "status_code": 421,
            "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
            "body": "owuibuild front door: no instance is served at this host name\n",
        }
    ]
}


def _tls(plan: Plan, host: HostPlan) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the server's automatic_https, the tls app)."""
    door = plan.front_door
    assert door is not None
    if door.tls == "internal":
        # Redirects stay automatic; certificates come from the fleet CA, never from ACME.
        return (
            {"skip_certificates": list(plan.front_door_certificates[host.name])},
            {"certificates": {"load_files": [{"certificate": CERT, "key": CADDY_KEY}]}},
        )
    acme = door.acme
    assert acme is not None
    issuer: dict[str, Any] = {
        "module": "acme",
        "ca": acme.directory or LETS_ENCRYPT,
        "email": acme.email,
    }
    if acme.directory_ca is not None:
        issuer["trusted_roots_pem_files"] = [ACME_DIRECTORY_CA]
    return {}, {"automation": {"policies": [{"issuers": [issuer]}]}}


def config(plan: Plan, host: HostPlan) -> dict[str, Any]:
    """Caddy's JSON configuration (its keys follow Caddy's own JSON structure)."""
    address = str(host.host.address)
    automatic, tls_app = _tls(plan, host)
    return {
        "admin": {"listen": ADMIN_ADDRESS, "config": {"persist": False}},
        "storage": {"module": "file_system", "root": STORAGE},
        "apps": {
            "http": {
                "http_port": HTTP_PORT,
                "https_port": HTTPS_PORT,
                "servers": {
                    "front_door": {
                        # The private address only; Caddy's automatic redirects (and ACME's
                        # HTTP challenge) listen on port 80 of the same address.
                        "listen": [f"{address}:{HTTPS_PORT}"],
                        # TCP only: no HTTP/3 listener on UDP, which the firewall keeps shut.
                        "protocols": ["h1", "h2"],
                        "read_header_timeout": HEADER_TIMEOUT,
                        "idle_timeout": IDLE_TIMEOUT,
                        "automatic_https": automatic,
                        "tls_connection_policies": [{"protocol_min": "tls1.2"}],
                        "routes": [*(site(plan, i) for i in host.instances), MISDIRECTED],
                    }
                },
            },
            "tls": tls_app,
        },
    }


def config_text(plan: Plan, host: HostPlan) -> str:
    return json.dumps(config(plan, host), indent=2, sort_keys=True) + "\n"


def unit() -> str:
    return render_template(
        "front-door.service.j2",
        caddy=CADDY,
        config=CONFIG,
        storage=STORAGE,
        home=STORAGE,
        runtime_dir=plain_words(RUNTIME_DIR),
        reload=plain_words(
            CADDY, "reload", "--config", CONFIG, "--address", ADMIN_ADDRESS, "--force"
        ),
    )


def key_commands(internal: bool) -> tuple[Command, ...]:
    """Caddy's storage on the data volume, and the front door's key copied for caddy alone."""
    storage = ("install", "-d", "-o", "caddy", "-g", "caddy", "-m", "0700", STORAGE)
    if not internal:
        return (storage,)
    return (
        storage,
        ("install", "-d", "-o", "root", "-g", "caddy", "-m", "0750", TLS_KEY_DIR),
        ("install", "-o", "caddy", "-g", "caddy", "-m", "0600", KEY, CADDY_KEY),
    )


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part | None:
    door = plan.front_door
    if door is None or not host.instances:
        return None
    files = [
        File(PACKAGED_UNIT, "", install=True),
        File(UNIT, unit()),
        # The instances it serves, and a certificate naming them: Caddy reloads both.
        File(CONFIG, config_text(plan, host), live=True, reader=UNIT_NAME),
    ]
    internal = door.tls == "internal"
    if internal:
        issued = secrets.tls.front_doors[host.name]
        files += [
            File(CERT, issued.cert, live=True, reader=UNIT_NAME),
            File(KEY, issued.key, "0600", live=True, reader=UNIT_NAME),
        ]
    elif door.acme is not None and door.acme.directory_ca is not None:
        files.append(File(ACME_DIRECTORY_CA, door.acme.directory_ca))
    return Part(
        name="front-door",
        packages=("caddy",),
        files=tuple(files),
        # The key's copy again before a converge reloads Caddy for a new certificate.
        live_configure=(*key_commands(internal), start_units(UNIT_NAME, wait=False)),
        awaited=(UNIT_NAME,),
    )
