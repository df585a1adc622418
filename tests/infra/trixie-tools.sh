#!/usr/bin/env bash
# Build (once) and cache a Debian 13 (trixie) root filesystem holding the tools the tests need
# from that release: cloud-init 25.1 (its own schema, for the validators tier) and PostgreSQL 17
# (for the services tier's major-version test), with systemd so that it can run as a container.
#
# Built like the boot tier's base image (tests/infra/vm-image.sh): mmdebstrap minbase into a
# directory. Nothing in it starts at build time (mmdebstrap forbids service starts), and the
# package's default cluster is dropped: tests make the clusters they need.
#
# Output folder: $OWUIBUILD_CACHE/trixie-tools/trixie-<hash of this recipe>/ where
# OWUIBUILD_CACHE defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/owuibuild. It holds root/ (the
# tree, to run with chroot) and tools.env. With --docker-image, the tree is also imported into
# Docker (once) as owuibuild-test/trixie-tools:<hash>.
# On success it prints KEY=VALUE lines (and keeps them in tools.env):
#   OWUIBUILD_TRIXIE_ROOT, OWUIBUILD_TRIXIE_RECIPE[, OWUIBUILD_TRIXIE_IMAGE]
#
# Environment:
#   OWUIBUILD_CACHE          cache root (see above)
#   OWUIBUILD_DEBIAN_MIRROR  optional mirror URL passed to mmdebstrap
#
# Needs: root (mmdebstrap root mode keeps file ownership), mmdebstrap, flock, sha256sum; docker
# for --docker-image.
set -euo pipefail

SUITE=trixie
PACKAGES=(
	cloud-init
	python3-yaml
	postgresql-17
	postgresql-common
	systemd
	systemd-sysv
	dbus
	procps
	ca-certificates
)

log() { printf 'trixie-tools: %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}

want_image=no
case "${1:-}" in
"") ;;
--docker-image) want_image=yes ;;
*) die "usage: $0 [--docker-image]" ;;
esac

for tool in mmdebstrap flock sha256sum; do
	command -v "$tool" >/dev/null 2>&1 || die "missing tool: $tool (tests/infra/system-deps.sh installs it)"
done
[ "$(id -u)" -eq 0 ] || die "must run as root (mmdebstrap root mode keeps file ownership)"

script_path=$(readlink -f "${BASH_SOURCE[0]}")
cache_root=${OWUIBUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/owuibuild}
mirror=${OWUIBUILD_DEBIAN_MIRROR:-}

# The recipe is this script plus the inputs that change its output.
recipe=$(
	{
		cat "$script_path"
		printf 'suite=%s\nmirror=%s\n' "$SUITE" "$mirror"
	} | sha256sum | cut -c1-16
)
out_dir="$cache_root/trixie-tools/$SUITE-$recipe"
image="owuibuild-test/trixie-tools:$recipe"

mkdir -p "$cache_root/trixie-tools"
exec 9>"$cache_root/trixie-tools/.lock"
flock 9

if [ ! -f "$out_dir/tools.env" ] || [ "${OWUIBUILD_TRIXIE_REBUILD:-0}" = 1 ]; then
	work=$(mktemp -d "$cache_root/trixie-tools/.build.XXXXXX")
	trap 'rm -rf "$work"' EXIT
	start=$(date +%s)
	include=$(
		IFS=,
		echo "${PACKAGES[*]}"
	)
	# The package would create 17/main under /var/lib/postgresql; the tests make their own.
	# $1 is the tree being built, expanded by mmdebstrap when the hook runs.
	# shellcheck disable=SC2016
	no_default_cluster='mkdir -p "$1/etc/postgresql-common/createcluster.d" && echo "create_main_cluster = false" >"$1/etc/postgresql-common/createcluster.d/00-test.conf"'
	mm_args=(
		--variant=minbase
		--include="$include"
		--dpkgopt='path-exclude=/usr/share/doc/*'
		--dpkgopt='path-include=/usr/share/doc/*/copyright'
		--dpkgopt='path-exclude=/usr/share/man/*'
		--aptopt='APT::Install-Recommends "false"'
		--essential-hook="$no_default_cluster"
		"$SUITE"
		"$work/root"
	)
	[ -n "$mirror" ] && mm_args+=("$mirror")
	log "mmdebstrap $SUITE -> $work/root"
	mmdebstrap --quiet "${mm_args[@]}" </dev/null >&2
	[ -x "$work/root/usr/lib/postgresql/17/bin/initdb" ] || die "no PostgreSQL 17 in the tree"
	[ -z "$(ls -A "$work/root/etc/postgresql" 2>/dev/null)" ] || die "a default cluster was created"
	# No machine-id: systemd makes one when the tree boots as a container.
	: >"$work/root/etc/machine-id"
	rm -rf "$work/root"/var/lib/apt/lists/*
	rm -rf "$out_dir"
	mv "$work" "$out_dir"
	trap - EXIT
	printf 'OWUIBUILD_TRIXIE_ROOT=%s\nOWUIBUILD_TRIXIE_RECIPE=%s\n' "$out_dir/root" "$recipe" \
		>"$out_dir/tools.env"
	log "built in $(($(date +%s) - start)) s: $out_dir"
else
	log "cached: $out_dir"
fi

cat "$out_dir/tools.env"
if [ "$want_image" = yes ]; then
	command -v docker >/dev/null 2>&1 || die "docker not found (tests/infra/system-deps.sh installs it)"
	if ! docker image inspect "$image" >/dev/null 2>&1; then
		log "docker import -> $image"
		tar -C "$out_dir/root" -c . | docker import \
			--change 'ENV container=docker' \
			--change 'CMD ["/lib/systemd/systemd"]' \
			- "$image" >/dev/null
	fi
	printf 'OWUIBUILD_TRIXIE_IMAGE=%s\n' "$image"
fi
