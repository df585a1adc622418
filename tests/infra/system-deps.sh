#!/usr/bin/env bash
# Install the Debian packages listed in .ci/apt-packages.txt that are missing,
# then make sure Docker (with Compose v2) is up. Idempotent: when everything is
# already there it only checks, in about a second.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LIST="${OWUIBUILD_APT_PACKAGES:-$HERE/../../.ci/apt-packages.txt}"

log() { echo "system-deps: $*" >&2; }

# One package per line; '#' starts a comment.
mapfile -t wanted < <(sed -e 's/#.*//' "$LIST" | tr -s '[:space:]' '\n' | sed '/^$/d' | sort -u)

missing=()
for pkg in "${wanted[@]}"; do
  if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null)" != installed ]]; then
    missing+=("$pkg")
  fi
done

if (( ${#missing[@]} > 0 )); then
  log "installing: ${missing[*]}"
  [[ $(id -u) -eq 0 ]] || { log "ERROR: must run as root to install packages"; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  apt_get() { apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0 "$@"; }

  # Without systemd as PID 1, postinst scripts that start services (postgresql,
  # redis-server, docker.io) fail. Forbid service starts during the install;
  # the tests start what they need themselves.
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi

  apt_get update -q
  apt_get install -y -q "${missing[@]}"
else
  log "all ${#wanted[@]} packages are installed"
fi

bash "$HERE/docker-up.sh"
