"""Section: the data volume and the state directories on it.

A host's state (databases, vectors, models, instance data) lives on a volume found by its
filesystem label and mounted at plan.DATA_MOUNT, so a replaced host picks it up again. The
filesystem is created only on an empty device (cloud-init fs_setup with partition 'auto' and
overwrite false: an existing filesystem, ours or anyone's, is never touched). The whole device
carries the filesystem, so no disk_setup partitioning is needed.

Also owns the small state-dir script every service section uses to create its directories:
on a host with a volume it refuses to create anything unless the volume is mounted.
"""

from __future__ import annotations

from ..plan import DATA_MOUNT, SCRIPT_DIR, HostPlan, Plan
from ..quoting import render_template
from ..secrets import Secrets
from . import Command, File, Part

ORDER = 5

STATE_DIR_SCRIPT = f"{SCRIPT_DIR}/state-dir.sh"
# systemd waits this long for the labelled volume before giving up on the mount.
DEVICE_TIMEOUT = "90s"


def state_dir_command(owner: str, mode: str, *dirs: str) -> Command:
    """The argv that creates ``dirs`` (parents first) owned by ``owner`` with ``mode``."""
    return ("/bin/sh", STATE_DIR_SCRIPT, owner, mode, *dirs)


def mount_options() -> str:
    # nofail: a missing volume must not drop the host into emergency mode (it stays
    # reachable over SSH); the services' RequiresMountsFor keeps them from starting instead.
    return f"defaults,nofail,x-systemd.device-timeout={DEVICE_TIMEOUT}"


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part:
    del plan, secrets
    volume = host.host.data_volume
    script = File(
        STATE_DIR_SCRIPT,
        render_template("state-dir.sh.j2", mount=DATA_MOUNT if volume else ""),
        permissions="0755",
    )
    if volume is None:
        return Part(name="datavolume", files=(script,))
    extra: dict[str, object] = {
        "mounts": [
            [f"LABEL={volume.label}", DATA_MOUNT, volume.filesystem, mount_options(), "0", "2"]
        ],
    }
    if volume.device is not None:
        extra["fs_setup"] = [
            {
                "label": volume.label,
                "filesystem": volume.filesystem,
                "device": volume.device,
                "partition": "auto",
                "overwrite": False,
            }
        ]
    return Part(name="datavolume", files=(script,), extra=extra)
