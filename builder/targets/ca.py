"""Target: fleet-ca.crt, the fleet CA's public certificate, for clients that must trust the
fleet's services (0644: it holds no secret). Its key never leaves the CA file."""

from __future__ import annotations

from collections.abc import Iterable

from ..plan import Plan
from ..secrets import Secrets
from . import Artifact

CA_FILE = "fleet-ca.crt"


def render(plan: Plan, secrets: Secrets) -> Iterable[Artifact]:
    yield Artifact(CA_FILE, secrets.tls.ca_cert.encode())
