#!/usr/bin/env bash
# Build the heavy test artifacts side by side, ahead of the tests that need them: the boot
# tier's Debian 13 VM image, the Debian 13 tools root filesystem (cloud-init 25.1,
# PostgreSQL 17), the local Debian base image and the Open WebUI image. Most of that time is
# downloads and disk, so it overlaps well with the CPU-bound pure tests; .ci/run starts it in
# the background before `make test`. Every script locks and caches on its own, so a test that
# asks for an artifact while it is being built waits for it instead of building it twice.
# Exits non-zero when any build failed (each one's log tail is printed).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OPENWEBUI_VERSION=${OWUIBUILD_OPENWEBUI_VERSION:-0.12.4}
export DOCKER_BUILDKIT=0

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
declare -A jobs=()

start() {
	local name=$1
	shift
	"$@" >"$logs/$name.log" 2>&1 &
	jobs[$name]=$!
}

start vm-image bash "$HERE/vm-image.sh"
start trixie-tools bash "$HERE/trixie-tools.sh"
start openwebui-image bash "$HERE/openwebui-image.sh" \
	"ghcr.io/open-webui/open-webui:v$OPENWEBUI_VERSION" "$OPENWEBUI_VERSION"

failed=0
for name in "${!jobs[@]}"; do
	if wait "${jobs[$name]}"; then
		echo "prewarm: $name ready"
	else
		echo "prewarm: $name FAILED:"
		tail -n 30 "$logs/$name.log"
		failed=1
	fi
done
exit "$failed"
