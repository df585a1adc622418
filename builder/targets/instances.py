"""Target: each instance's bundle, ``instances/<name>/compose.yaml`` and its env file (0600).

The same bundle is embedded in the user-data of the host that runs the instance; both come
from owuibuild.bundle, so they cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..bundle import COMPOSE_FILE, compose_yaml, env_file, env_file_name
from ..plan import Plan
from ..secrets import Secrets
from . import Artifact


def render(plan: Plan, secrets: Secrets) -> Iterable[Artifact]:
    for inst in plan.instances:
        base = f"instances/{inst.name}"
        yield Artifact(f"{base}/{COMPOSE_FILE}", compose_yaml(plan, inst).encode())
        yield Artifact(
            f"{base}/{env_file_name(inst)}", env_file(plan, inst, secrets).encode(), secret=True
        )
