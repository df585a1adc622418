#!/usr/bin/env bash
# Usage: openwebui-image.sh IMAGE_REF OPENWEBUI_VERSION
#
# Build an Open WebUI image from tests/infra/openwebui.Dockerfile and tag it
# IMAGE_REF. The image carries a label with a hash of its inputs (the Dockerfile,
# the Open WebUI and torch versions, the base image ref); when an image with that
# ref and that label exists, nothing is built. A cold build takes a few minutes.
set -euo pipefail

[[ $# -eq 2 ]] || { echo "usage: $0 IMAGE_REF OPENWEBUI_VERSION" >&2; exit 2; }
IMAGE_REF=$1
OPENWEBUI_VERSION=$2

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE="${OWUIBUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/owuibuild}"
DOCKERFILE="$HERE/openwebui.Dockerfile"
BASE_IMAGE="${OWUIBUILD_BASE_IMAGE:-local/debian:bookworm}"
TORCH_VERSION="${OWUIBUILD_TORCH_VERSION:-2.13.0}"
CA_BUNDLE="${OWUIBUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
LABEL=org.owuibuild.recipe

# The Debian engine is 20.10 and no buildx plugin is available: use the legacy builder.
export DOCKER_BUILDKIT=0

log() { echo "openwebui-image: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# One build at a time (CI warms this in the background while tests may ask for it too).
mkdir -p "$CACHE"
exec 7>"$CACHE/.openwebui-image.lock"
flock 7

recipe=$( { cat "$DOCKERFILE"; echo "open-webui=$OPENWEBUI_VERSION torch=$TORCH_VERSION base=$BASE_IMAGE"; } \
          | sha256sum | cut -c1-16)

current=$(docker image inspect --format "{{ index .Config.Labels \"$LABEL\" }}" "$IMAGE_REF" 2>/dev/null || true)
if [[ $current == "$recipe" ]]; then
  log "$IMAGE_REF is up to date (recipe $recipe)"
  exit 0
fi
[[ -z $current ]] || log "$IMAGE_REF has recipe '$current', want $recipe: rebuilding"

start=$SECONDS
bash "$HERE/base-image.sh" "$BASE_IMAGE"

# A CPU build of torch, as the host's pip sees it, for the image's Python (Debian 12: CPython 3.11).
wheels="$CACHE/wheels"
mkdir -p "$wheels"
shopt -s nullglob
torch_wheels=("$wheels"/torch-"$TORCH_VERSION"*-cp311-cp311-*x86_64.whl)
if (( ${#torch_wheels[@]} == 0 )); then
  log "fetching torch==$TORCH_VERSION with the host's pip"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_28_x86_64 \
    -d "$wheels" "torch==$TORCH_VERSION"
  torch_wheels=("$wheels"/torch-"$TORCH_VERSION"*-cp311-cp311-*x86_64.whl)
fi
(( ${#torch_wheels[@]} > 0 )) || die "no torch $TORCH_VERSION wheel for cp311 in $wheels"
torch_wheel=${torch_wheels[-1]}
[[ $torch_wheel == *+cpu* ]] || log "WARNING: $(basename "$torch_wheel") is not a +cpu build; pip will pull CUDA libraries into the image"

[[ -r $CA_BUNDLE ]] || die "CA bundle $CA_BUNDLE not readable (set OWUIBUILD_CA_BUNDLE)"

mkdir -p "$CACHE/tmp"
ctx=$(mktemp -d "$CACHE/tmp/openwebui-ctx.XXXXXX")
trap 'rm -rf "$ctx"' EXIT
mkdir "$ctx/wheels"
cp "$DOCKERFILE" "$ctx/Dockerfile"
cp "$CA_BUNDLE" "$ctx/ca-certificates.crt"
ln "$torch_wheel" "$ctx/wheels/" 2>/dev/null || cp "$torch_wheel" "$ctx/wheels/"

log "building $IMAGE_REF (open-webui $OPENWEBUI_VERSION, $(basename "$torch_wheel"), recipe $recipe)"
docker build --force-rm \
  --build-arg "BASE_IMAGE=$BASE_IMAGE" \
  --build-arg "OPENWEBUI_VERSION=$OPENWEBUI_VERSION" \
  --label "$LABEL=$recipe" \
  --tag "$IMAGE_REF" \
  "$ctx" >"$ctx/build.log" 2>&1 || { tail -n 40 "$ctx/build.log" >&2; die "docker build failed"; }

# Drop the build stage and any image this one replaced (untagged images with our labels only).
docker image prune --force --filter label=org.owuibuild.image=openwebui-build >/dev/null || true
docker image prune --force --filter label=org.owuibuild.image=openwebui >/dev/null || true
log "built $IMAGE_REF in $((SECONDS - start))s"
