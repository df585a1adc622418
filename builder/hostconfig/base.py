"""Section: the base every host gets: name, time zone, the admin user, SSH hardening and
unattended security upgrades."""

from __future__ import annotations

from ..plan import HostPlan, Plan
from ..secrets import Secrets
from . import File, Part

ORDER = 0


def sshd_config(plan: Plan) -> str:
    return "\n".join(
        [
            "# owuibuild: keys only, no root, only the admin user",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin no",
            "PubkeyAuthentication yes",
            f"AllowUsers {plan.fleet.admin.user}",
            "X11Forwarding no",
            "",
        ]
    )


AUTO_UPGRADES = 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n'


def part(plan: Plan, host: HostPlan, secrets: Secrets) -> Part:
    del secrets
    admin = plan.fleet.admin
    return Part(
        name="base",
        packages=("unattended-upgrades",),
        files=(
            File("/etc/ssh/sshd_config.d/50-owuibuild.conf", sshd_config(plan)),
            File("/etc/apt/apt.conf.d/20auto-upgrades", AUTO_UPGRADES),
        ),
        extra={
            "hostname": host.name,
            "preserve_hostname": False,
            "manage_etc_hosts": True,
            "timezone": plan.fleet.os.timezone,
            "disable_root": True,
            "ssh_pwauth": False,
            "users": [
                {
                    "name": admin.user,
                    "groups": ["sudo"],
                    "shell": "/bin/bash",
                    "sudo": "ALL=(ALL) NOPASSWD:ALL",
                    "lock_passwd": True,
                    "ssh_authorized_keys": list(admin.ssh_authorized_keys),
                }
            ],
        },
    )
