#!/usr/bin/env bash
# Build (once) and cache a Debian base VM image for the boot tier: Debian 13 (trixie) by
# default, the release new fleets target; OWUIBUILD_VM_SUITE=bookworm builds Debian 12's.
#
# The image is what a stock Debian "genericcloud" image would be to cloud-init:
# a systemd system with cloud-init (NoCloud in its datasource list), netplan with
# the systemd-networkd backend (the renderer Debian cloud images use),
# systemd-resolved, openssh-server without host keys, sudo, locales and
# cloud-guest-utils. It has NO users or passwords of its own: the seed
# configures everything.
#
# It is built without loop mounts: mmdebstrap into a directory, `mkfs.ext4 -d`
# into a raw file, that file placed as partition 1 of an MBR disk, then
# `qemu-img convert` to a compressed qcow2. The kernel and initrd are copied
# next to it, because tests boot with -kernel/-initrd (there is no bootloader).
#
# Output folder: $OWUIBUILD_CACHE/vm-image/<hash of this recipe>/ where
# OWUIBUILD_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/owuibuild.
# On success it prints KEY=VALUE lines (and writes them to image.env):
#   OWUIBUILD_VM_DIR, OWUIBUILD_VM_DISK, OWUIBUILD_VM_KERNEL,
#   OWUIBUILD_VM_INITRD, OWUIBUILD_VM_ROOT
#
# Environment:
#   OWUIBUILD_CACHE          cache root (see above)
#   OWUIBUILD_DEBIAN_MIRROR  optional mirror URL passed to mmdebstrap
#                            (default: mmdebstrap's own default)
#   OWUIBUILD_VM_SUITE       Debian suite to build (default trixie)
#   OWUIBUILD_VM_REBUILD=1   ignore the cache and rebuild
#
# Needs: root (mmdebstrap root mode, so that file ownership is kept),
# mmdebstrap, e2fsprogs (mkfs.ext4 -d), fdisk (sfdisk), qemu-utils, flock.
set -euo pipefail

SUITE=${OWUIBUILD_VM_SUITE:-trixie}
case "$SUITE" in bookworm | trixie) ;; *)
	echo "vm-image: unsupported suite: $SUITE" >&2
	exit 1
	;;
esac
DISK_SIZE_MIB=8192 # virtual size; the qcow2 only stores what is used
PART_START_MIB=1

# ifupdown is deliberately absent: with it, cloud-init would pick its
# first-priority "eni" renderer; Debian cloud images use netplan+networkd.
PACKAGES=(
	linux-image-amd64
	systemd-sysv
	systemd-resolved
	udev
	dbus
	cloud-init
	cloud-guest-utils
	netplan.io
	iproute2
	locales
	openssh-server
	sudo
	ca-certificates
	e2fsprogs
	fdisk
	apt-utils
	curl
	gnupg
	less
	procps
	iputils-ping
	netbase
	python3-apt
	ncurses-term
)

log() { printf 'vm-image: %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

for tool in mmdebstrap mkfs.ext4 sfdisk qemu-img flock sha256sum; do
	command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool"
done
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap root mode keeps file ownership)"

script_path=$(readlink -f "${BASH_SOURCE[0]}")
cache_root=${OWUIBUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/owuibuild}
mirror=${OWUIBUILD_DEBIAN_MIRROR:-}

# The recipe is this script plus the inputs that change its output.
recipe_hash=$(
	{
		cat "$script_path"
		printf 'suite=%s\nmirror=%s\n' "$SUITE" "$mirror"
	} | sha256sum | cut -c1-16
)
out_dir="$cache_root/vm-image/$SUITE-$recipe_hash"

print_result() {
	cat "$out_dir/image.env"
}

mkdir -p "$cache_root/vm-image"
exec 9>"$cache_root/vm-image/.lock"
flock 9

if [ -f "$out_dir/image.env" ] && [ "${OWUIBUILD_VM_REBUILD:-0}" != 1 ]; then
	log "cached: $out_dir"
	print_result
	exit 0
fi

work=$(mktemp -d "$cache_root/vm-image/.build.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

root="$work/root"
start=$(date +%s)

include=$(
	IFS=,
	echo "${PACKAGES[*]}"
)

mm_args=(
	--variant=minbase
	--include="$include"
	--dpkgopt='path-exclude=/usr/share/doc/*'
	--dpkgopt='path-include=/usr/share/doc/*/copyright'
	--dpkgopt='path-exclude=/usr/share/man/*'
	--dpkgopt='path-exclude=/usr/share/locale/*'
	--dpkgopt='path-include=/usr/share/locale/locale.alias'
	--aptopt='APT::Install-Recommends "false"'
	"$SUITE"
	"$root"
)
[ -n "$mirror" ] && mm_args+=("$mirror")

log "mmdebstrap $SUITE -> $root"
mmdebstrap "${mm_args[@]}" >&2
chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service ssh.service >&2

# Locales: Debian's locale-gen ignores its arguments and only builds what
# /etc/locale.gen lists, so cloud-init's default (en_US.UTF-8) must be listed
# and built here, or its locale module fails in update-locale.
sed -i 's/^# *\(en_US.UTF-8 UTF-8\)/\1/' "$root/etc/locale.gen"
grep -q '^en_US.UTF-8 UTF-8' "$root/etc/locale.gen" || die "en_US.UTF-8 missing from locale.gen"
chroot "$root" locale-gen >&2
printf 'LANG=C.UTF-8\n' >"$root/etc/default/locale"

# --- make it look like a freshly captured cloud image ---------------------
# Datasources: NoCloud first (seed ISO labelled cidata), then ConfigDrive,
# and None as the fallback so that a missing seed is visible, not a hang.
cat >"$root/etc/cloud/cloud.cfg.d/90_dpkg.cfg" <<'EOF'
# Written by tests/infra/vm-image.sh
datasource_list: [ NoCloud, ConfigDrive, None ]
EOF

# No host keys, no machine-id, no cloud-init state: cloud-init and systemd
# create them on first boot (what `cloud-init clean --machine-id` leaves).
rm -f "$root"/etc/ssh/ssh_host_*
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
rm -rf "$root/var/lib/cloud" "$root"/var/log/cloud-init*
rm -rf "$root"/var/lib/apt/lists/*
: >"$root/etc/hostname"

# The test harness's uplink (tests/infra/vm.py UPLINK_MAC): a second NIC, on QEMU's user-mode
# network, that a multi-VM test adds for ssh and the package mirror, while the seed's own
# network-config drives the fleet NIC. Only that MAC matches, so a guest without it is
# configured by its seed alone. The two /1 routes beat the fleet's default route without
# touching it; the fleet's own subnet stays on the fleet NIC (a longer prefix).
cat >"$root/etc/systemd/network/05-owuibuild-test-uplink.network" <<'EOF'
# Written by tests/infra/vm-image.sh (test harness only)
[Match]
MACAddress=52:54:00:aa:00:01

[Network]
Address=10.0.2.15/24
DNS=10.0.2.3
Domains=~.
IPv6AcceptRA=no

[Route]
Destination=0.0.0.0/1
Gateway=10.0.2.2

[Route]
Destination=128.0.0.0/1
Gateway=10.0.2.2
EOF

# Root filesystem by label so the fstab does not depend on the disk bus.
cat >"$root/etc/fstab" <<'EOF'
# Written by tests/infra/vm-image.sh
LABEL=rootfs / ext4 defaults,discard,errors=remount-ro 0 1
EOF

# systemd-resolved owns resolv.conf (it is a dangling link inside the chroot
# until resolved runs in the guest).
ln -sfn ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

# --- kernel and initrd -----------------------------------------------------
kernel=$(find "$root/boot" -maxdepth 1 -name 'vmlinuz-*' | sort | tail -n1)
initrd=$(find "$root/boot" -maxdepth 1 -name 'initrd.img-*' | sort | tail -n1)
if [ -z "$kernel" ] || [ -z "$initrd" ]; then
	die "no kernel/initrd in $root/boot"
fi
cp "$kernel" "$work/vmlinuz"
cp "$initrd" "$work/initrd.img"
chmod 0644 "$work/vmlinuz" "$work/initrd.img"

# --- disk ------------------------------------------------------------------
part_mib=$((DISK_SIZE_MIB - PART_START_MIB))
log "mkfs.ext4 -d (${part_mib} MiB partition)"
truncate -s "${part_mib}M" "$work/rootfs.ext4"
mkfs.ext4 -q -F -L rootfs -E root_owner=0:0 -d "$root" "$work/rootfs.ext4" >&2
rm -rf "$root"

truncate -s "${DISK_SIZE_MIB}M" "$work/disk.raw"
printf 'label: dos\nstart=%s, type=83, bootable\n' "$((PART_START_MIB * 2048))" |
	sfdisk --quiet "$work/disk.raw" >&2
dd if="$work/rootfs.ext4" of="$work/disk.raw" bs=1M seek="$PART_START_MIB" \
	conv=notrunc,sparse status=none
rm -f "$work/rootfs.ext4"

log "qemu-img convert -> qcow2"
qemu-img convert -c -f raw -O qcow2 "$work/disk.raw" "$work/disk.qcow2"
rm -f "$work/disk.raw"

# --- publish atomically ----------------------------------------------------
rm -rf "$out_dir"
mkdir -p "$out_dir"
mv "$work/disk.qcow2" "$work/vmlinuz" "$work/initrd.img" "$out_dir/"
cat >"$out_dir/image.env.tmp" <<EOF
OWUIBUILD_VM_DIR=$out_dir
OWUIBUILD_VM_DISK=$out_dir/disk.qcow2
OWUIBUILD_VM_KERNEL=$out_dir/vmlinuz
OWUIBUILD_VM_INITRD=$out_dir/initrd.img
OWUIBUILD_VM_ROOT=/dev/vda1
EOF
mv "$out_dir/image.env.tmp" "$out_dir/image.env"
log "built in $(($(date +%s) - start)) s: $out_dir"
print_result
