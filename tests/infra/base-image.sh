#!/usr/bin/env bash
# Build the local Debian base image (default local/debian:bookworm) if it is missing.
# No container registry can be reached, so every test image starts FROM this one:
# a minbase bookworm tree made by mmdebstrap and imported into Docker.
set -euo pipefail

IMAGE="${1:-local/debian:bookworm}"
SUITE="${OWUIBUILD_DEBIAN_SUITE:-bookworm}"
CACHE="${OWUIBUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/owuibuild}"

log() { echo "base-image: $*" >&2; }

# One build at a time (CI warms this in the background while tests may ask for it too).
mkdir -p "$CACHE"
exec 8>"$CACHE/.base-image.lock"
flock 8

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  log "$IMAGE already exists"
  exit 0
fi

command -v mmdebstrap >/dev/null || { log "ERROR: mmdebstrap not found (tests/infra/system-deps.sh installs it)"; exit 1; }
mkdir -p "$CACHE/tmp"
rootfs=$(mktemp -d "$CACHE/tmp/rootfs.XXXXXX")
trap 'rm -rf "$rootfs"' EXIT

start=$SECONDS
log "building $IMAGE with mmdebstrap ($SUITE, minbase)"
# Without a mirror argument mmdebstrap uses Debian's default mirror; set
# OWUIBUILD_DEBIAN_MIRROR to use another one.
mmdebstrap --quiet --variant=minbase "$SUITE" "$rootfs" ${OWUIBUILD_DEBIAN_MIRROR:+"$OWUIBUILD_DEBIAN_MIRROR"} </dev/null
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  - "$IMAGE" >/dev/null
log "built $IMAGE in $((SECONDS - start))s"
