"""Section: Ollama on the shared host.

The pinned release archive (bin/ollama and lib/ollama) from the blueprint's mirror or
upstream, checksum verified before it is extracted; an `ollama` system user whose home and
models are on the data volume; a hardened unit bound to loopback (instances reach it through
its TLS terminator, see ollama_tls.py) with the blueprint's tuning; and owui-ollama-models.service, a oneshot started without blocking that
pulls the models with retries (models already present, e.g. baked into the image, are kept).
"""

from __future__ import annotations

from .. import artifacts
from ..plan import DATA_MOUNT, OLLAMA_DATA, OLLAMA_LOOPBACK, OLLAMA_PORT, SCRIPT_DIR, HostPlan, Plan
from ..quoting import render_template
from ..secrets import Secrets
from . import File, Part, start_units
from ._release import install, system_user
from .datavolume import state_dir_command

ORDER = 230

BINARY = "/usr/local/bin/ollama"
LIBRARIES = "/usr/local/lib/ollama"  # next to bin/, where the binary looks for its runners
MODELS = f"{OLLAMA_DATA}/models"
UNIT = "/etc/systemd/system/ollama.service"
MODELS_UNIT_NAME = "owui-ollama-models.service"
MODELS_UNIT = f"/etc/systemd/system/{MODELS_UNIT_NAME}"
MODELS_SCRIPT = f"{SCRIPT_DIR}/ollama-models.sh"
# Device groups the GPU runtimes need (/dev/kfd and /dev/dri for ROCm).
GPU_GROUPS = {"none": (), "nvidia": (), "amd": ("render", "video")}


def artifact(plan: Plan) -> artifacts.Artifact:
    o = plan.fleet.shared.ollama
    found = artifacts.ollama(o.version, o.sha256)
    if found is None:  # validation refuses unpinned versions
        raise ValueError(f"ollama {o.version} has no sha256")
    return found


def listen(host: HostPlan) -> str:
    del host  # every Ollama host listens on loopback: only its TLS terminator faces the network
    return f"{OLLAMA_LOOPBACK}:{OLLAMA_PORT}"


def environment(plan: Plan, host: HostPlan) -> list[str]:
    o = plan.fleet.shared.ollama
    return [
        f"HOME={OLLAMA_DATA}",
        f"OLLAMA_HOST={listen(host)}",
        f"OLLAMA_MODELS={MODELS}",
        f"OLLAMA_KEEP_ALIVE={o.keep_alive}",
        f"OLLAMA_NUM_PARALLEL={o.num_parallel}",
        f"OLLAMA_MAX_LOADED_MODELS={o.max_loaded_models}",
    ]


def unit(plan: Plan, host: HostPlan) -> str:
    return render_template(
        "ollama.service.j2",
        mount=DATA_MOUNT,
        binary=BINARY,
        state=OLLAMA_DATA,
        environment=environment(plan, host),
        private_devices=plan.fleet.shared.ollama.gpu == "none",
    )


def models_unit(host: HostPlan) -> str:
    return render_template(
        "ollama-models.service.j2",
        environment=[f"HOME={OLLAMA_DATA}", f"OLLAMA_HOST={listen(host)}"],
        script=MODELS_SCRIPT,
    )


# Where a golden image keeps baked models: not under the data volume's mount point, which
# would hide them once the volume is mounted.
BAKED_MODELS = "/usr/local/share/ollama/models"


def models_script(plan: Plan) -> str:
    return render_template(
        "ollama-models.sh.j2",
        binary=BINARY,
        models=list(plan.ollama_models),
        baked=BAKED_MODELS,
        models_dir=MODELS,
    )


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part | None:
    del secrets
    if "ollama" not in host.services:
        return None
    script, install_command = install(
        plan, artifact(plan), files=[("bin/ollama", BINARY)], trees=[("lib/ollama", LIBRARIES)]
    )
    groups = GPU_GROUPS[plan.fleet.shared.ollama.gpu]
    return Part(
        name="ollama",
        packages=("ca-certificates", "curl"),
        files=(
            script,
            File(UNIT, unit(plan, host)),
            File(MODELS_UNIT, models_unit(host)),
            File(MODELS_SCRIPT, models_script(plan), permissions="0755", live=True),
        ),
        install=(install_command,),
        configure=(
            state_dir_command("ollama", "0750", OLLAMA_DATA, MODELS),
            start_units("ollama.service", wait=False),
        ),
        # Pulls what the blueprint lists now (a converge's new models too); a model already
        # there is only checked.
        live_configure=(("systemctl", "start", "--no-block", MODELS_UNIT_NAME),),
        awaited=("ollama.service",),
        extra={"users": [system_user("ollama", OLLAMA_DATA, groups)]},
    )
