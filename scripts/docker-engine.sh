#!/usr/bin/env bash
# Make sure a Docker engine answers (`docker info`). Idempotent: when one already answers, it does nothing.
# Otherwise, as root, it installs Debian's docker.io if dockerd is missing and starts dockerd in the background
# (log: ${PARITY_DOCKERD_LOG:-/var/log/dockerd.log}), then waits up to ${PARITY_DOCKERD_WAIT:-60} s for it to answer.
# When it cannot, it prints one line on stderr and exits non-zero (1: no engine and not allowed to start one,
# 2: the start failed). Called by .ci/run before the tests that need an engine.
set -euo pipefail

LOG="${PARITY_DOCKERD_LOG:-/var/log/dockerd.log}"
WAIT_S="${PARITY_DOCKERD_WAIT:-60}"

fail() { echo "docker-engine: $2" >&2; exit "$1"; }

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
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
    exit 0
  fi
  if ! pgrep -x dockerd >/dev/null 2>&1; then
    fail 2 "dockerd exited at start ($(tail -n 1 "$LOG" 2>/dev/null || echo "no log at $LOG"))"
  fi
  sleep 1
done
fail 2 "dockerd did not answer within ${WAIT_S}s (log: $LOG: $(tail -n 1 "$LOG" 2>/dev/null))"
