#!/usr/bin/env bash
# Build the heavy test artifacts side by side, ahead of the tests that need them: the boot
# tier's Debian 13 VM image and, from it, the two-VM fleet's golden images
# (tests/boot/golden.py: the real `owuibuild bake`), the Debian 13 tools root filesystem
# (cloud-init 25.1, PostgreSQL 17), the local Debian base image and the Open WebUI image. The
# pure tests are single-threaded, so this overlaps well with them; .ci/run starts it in the
# background (after `make setup`, whose venv the bake uses) before `make test`. Every script locks and caches on its own, so a test that
# asks for an artifact while it is being built waits for it instead of building it twice.
# Exits non-zero when any build failed (each one's log tail is printed).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PYTHON=$REPO/.venv/bin/python
[ -x "$PYTHON" ] || PYTHON=python3
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

# shellcheck disable=SC2317  # run through start()
fleet_images() {
	OWUIBUILD_VM_SUITE=trixie bash "$HERE/vm-image.sh" &&
		(cd "$REPO" && "$PYTHON" tests/boot/golden.py)
}

start fleet-images fleet_images
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
