"""Section: the fleet CA's certificate on every host, and a service host's own certificate.

Every host that runs instances gets the CA's public certificate (FLEET_CA): their containers
mount it to verify the shared services. A host that runs a shared service also gets its server certificate
and key from the fleet CA (owuibuild.pki), root-only; each service section installs the copy
of the key its service reads, owned by that service alone.
"""

from __future__ import annotations

from ..plan import FLEET_CA, SERVER_CERT, SERVER_KEY, HostPlan, Plan
from ..secrets import Secrets
from . import File, Part

ORDER = 20


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part | None:
    files = [File(FLEET_CA, secrets.tls.ca_cert)] if host.runs_docker else []
    if host.name in plan.certificate_hosts:
        issued = secrets.tls.hosts[host.name]
        files += [File(SERVER_CERT, issued.cert), File(SERVER_KEY, issued.key, "0600")]
    return Part(name="tls", files=tuple(files)) if files else None
