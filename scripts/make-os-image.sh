#!/usr/bin/env bash
# Make the OS base image for parity's images without any image registry: debootstrap a minimal Debian with Python 3,
# venv and pip, then `docker import` it. Prints the tag on stdout (the only line on stdout), e.g.
#
#   OS_IMAGE="$(scripts/make-os-image.sh)"
#   scripts/build-images.sh --os-image "$OS_IMAGE" base sam        # or: export PARITY_OS_IMAGE="$OS_IMAGE"
#
# The tag is parity/os:<suite>-<hash12>, the hash taken over this recipe (suite, variant, package list, mirror,
# architecture), so the same recipe always names the same image and the script skips the work when the engine already
# holds it (idempotent). debootstrap itself is not bit-reproducible (the mirror moves on within a suite): the image
# carries labels with the suite's Release date and the Python version it got. Needs root, debootstrap (installed from
# apt when missing) and a Docker engine (scripts/docker-engine.sh). ~2 min, ~300 MB.
#
# Settings (environment): PARITY_OS_SUITE (bookworm), PARITY_OS_MIRROR (http://deb.debian.org/debian).
set -euo pipefail

SUITE="${PARITY_OS_SUITE:-bookworm}"
MIRROR="${PARITY_OS_MIRROR:-http://deb.debian.org/debian}"
VARIANT=minbase
INCLUDE=python3,python3-venv,python3-pip,ca-certificates
ARCH="$(dpkg --print-architecture 2>/dev/null || echo amd64)"

fail() { echo "make-os-image: $1" >&2; exit 2; }

RECIPE="suite=$SUITE variant=$VARIANT include=$INCLUDE mirror=$MIRROR arch=$ARCH"
HASH="$(printf '%s' "$RECIPE" | sha256sum | cut -c1-12)"
TAG="parity/os:${SUITE}-${HASH}"

command -v docker >/dev/null 2>&1 || fail "no docker client (scripts/docker-engine.sh installs and starts an engine)"
docker info >/dev/null 2>&1 || fail "no Docker engine answers (run scripts/docker-engine.sh first)"
if docker image inspect "$TAG" >/dev/null 2>&1; then
  echo "$TAG"
  exit 0
fi
[ "$(id -u)" = 0 ] || fail "debootstrap needs root"
if ! command -v debootstrap >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap) >&2 \
    || fail "debootstrap is not installed and apt-get could not install it"
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/parity-os.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
ROOTFS="$WORK/rootfs"
echo "make-os-image: debootstrap $RECIPE (~2 min)" >&2
if ! debootstrap --variant="$VARIANT" --arch="$ARCH" --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1; then
  fail "debootstrap failed: $(tail -n 1 "$WORK/debootstrap.log")"
fi
PYVER="$(chroot "$ROOTFS" python3 -c 'import platform; print(platform.python_version())')" \
  || fail "the debootstrapped system has no working python3"
RELEASE_DATE="$(sed -n 's/^Date: //p' "$ROOTFS"/var/lib/apt/lists/*_Release 2>/dev/null | head -n 1 || true)"
[ -n "$RELEASE_DATE" ] || RELEASE_DATE="$(date -u -R)"
# No package lists or caches in the image; apt in a Dockerfile runs `apt-get update` first anyway.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/tmp/* "$ROOTFS"/var/log/*

tar -C "$ROOTFS" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  --change "LABEL parity.os.recipe=\"$RECIPE\"" \
  --change "LABEL parity.os.release-date=\"$RELEASE_DATE\"" \
  --change "LABEL parity.os.python=\"$PYVER\"" \
  - "$TAG" >/dev/null || fail "docker import failed"
echo "$TAG"
