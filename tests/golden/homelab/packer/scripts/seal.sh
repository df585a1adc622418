#!/bin/sh
# owuibuild: seal a golden image before it is captured.
#
# Run as root through sudo by the build user, as the very last step of a Packer build:
# as the qemu builder's shutdown_command (with --poweroff), or as the last provisioner for
# builders that stop the VM through their API. It removes what only the build needed, so the
# image boots like a fresh cloud image and cloud-init configures it from the host's seed:
#   - cloud-init state, logs, seed and machine-id (cloud-init clean --logs --machine-id --seed);
#   - the SSH host keys (each host makes its own at first boot);
#   - the build's timer stamps: a persistent timer (dpkg-db-backup, fstrim, ...) whose stamp
#     dates from the bake would catch up at every host's first boot, days later, in the middle of
#     its setup; without one, its first run is scheduled from that boot, as on a fresh image;
#   - the build user (the one that called sudo) and cloud-init's sudoers file for it;
# and it tells cloud-init that this image has its packages: its package module (which runs
# `apt-get update` whenever a seed lists packages) is left out of the boot, so a golden host
# needs no package source. The seed's first runcmd step checks the packages are all there.
# It is not left in the image: it deletes itself.
set -eu

build_user=${SUDO_USER:-}

cloud-init clean --logs --machine-id --seed
python3 - <<'EOF'
import yaml

with open("/etc/cloud/cloud.cfg") as fh:
    modules = yaml.safe_load(fh)["cloud_final_modules"]

def name(entry):
    return (entry if isinstance(entry, str) else entry[0]).replace("-", "_")

kept = [m for m in modules if name(m) != "package_update_upgrade_install"]
with open("/etc/cloud/cloud.cfg.d/95-owuibuild-golden.cfg", "w") as fh:
    fh.write("# Written by owuibuild when this golden image was sealed: its packages are baked in.\n")
    yaml.safe_dump({"cloud_final_modules": kept}, fh, default_flow_style=False)
EOF
rm -f /etc/ssh/ssh_host_*
rm -f /var/lib/systemd/timers/stamp-*
rm -f /etc/sudoers.d/90-cloud-init-users
if [ -n "$build_user" ] && [ "$build_user" != root ] && id "$build_user" >/dev/null 2>&1; then
	# --force: the build user is still logged in (this script runs in its session).
	userdel --force --remove "$build_user" 2>/dev/null || userdel --force "$build_user"
fi
rm -rf /tmp/owuibuild
rm -f -- "$0"
sync

if [ "${1:-}" = --poweroff ]; then
	shutdown -P now
fi
