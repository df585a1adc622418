"""Section: the host's trust in the fleet's seeds, on every host.

Only the fleet may change a host. Each host keeps, from its first boot, the fleet's public
seed-signing key (PEM, for `openssl pkeyutl -pubin`) and a record of the seed it applied
(written by the hosts target, which alone knows the seed's generation and replacement key).
The verifier (data/seed_verify.py) is written by the install steps, so a golden image has it:
given a mounted cidata volume, it says whether this host may take that seed (see its exit
codes). The live converge that would apply a verified seed is not built yet. Only on platforms
whose seed medium can be swapped under a running host (plan.seeds_swappable): on a cloud the
key and the verifier would have nothing to check, and the bytes count against its user-data
limit.

The key is no secret, but it is the fleet's: a new key means every host must be replaced,
so the key file is not ``live``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from ..plan import SCRIPT_DIR, HostPlan, Plan
from ..secrets import Secrets
from ..seed_manifest import PUBLIC_KEY_PATH
from ..seed_signing import public_pem
from . import File, Part

ORDER = 2

VERIFIER = f"{SCRIPT_DIR}/seed-verify"


@cache
def verifier_script() -> str:
    return resources.files("owuibuild").joinpath("data/seed_verify.py").read_text("utf-8")


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part | None:
    del host
    if not plan.seeds_swappable:
        return None
    return Part(
        name="seed-trust",
        packages=("openssl",),  # the verifier checks signatures with it
        files=(
            File(VERIFIER, verifier_script(), "0755", install=True),
            File(PUBLIC_KEY_PATH, public_pem(secrets[plan.seed_signing_key.name])),
        ),
    )
