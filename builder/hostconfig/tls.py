"""Section: the fleet CA's certificate on every host, and a service host's own certificate.

Every host gets the CA's public certificate (FLEET_CA): instance containers mount it to verify
PostgreSQL and Redis, and the backup timer verifies Qdrant with it. A host that runs instances
gets the script that makes CA_BUNDLE (the system's CA bundle plus the fleet CA) for the
containers' HTTPS clients; each instance's unit runs it before it starts. A host that runs a
shared service gets its server certificate and key from the fleet CA (owuibuild.pki),
root-only; each service section installs the copy of the key its service reads, owned by that
service alone.
"""

from __future__ import annotations

from ..plan import (
    CA_BUNDLE,
    FLEET_CA,
    SCRIPT_DIR,
    SERVER_CERT,
    SERVER_KEY,
    SYSTEM_CA_BUNDLE,
    HostPlan,
    Plan,
)
from ..quoting import render_template
from ..secrets import Secrets
from . import File, Part

ORDER = 20

BUNDLE_SCRIPT = f"{SCRIPT_DIR}/ca-bundle.sh"


def bundle_script() -> str:
    return render_template(
        "ca-bundle.sh.j2", system=SYSTEM_CA_BUNDLE, fleet_ca=FLEET_CA, bundle=CA_BUNDLE
    )


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part:
    files = [File(FLEET_CA, secrets.tls.ca_cert)]
    if host.runs_docker:
        files.append(File(BUNDLE_SCRIPT, bundle_script(), "0755"))
    if host.name in plan.certificate_hosts:
        issued = secrets.tls.hosts[host.name]
        files += [File(SERVER_CERT, issued.cert), File(SERVER_KEY, issued.key, "0600")]
    return Part(
        name="tls",
        # the system's CA bundle, which the instances' bundle starts from
        packages=("ca-certificates",) if host.runs_docker else (),
        files=tuple(files),
    )
