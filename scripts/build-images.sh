#!/usr/bin/env bash
# Build parity's images with the tags every entry point uses (parity/<env>:<hash16>, parity/host/images.py), parents
# first, skipping tags the engine already has. Default: every image. Examples:
#   scripts/build-images.sh                      # all images
#   scripts/build-images.sh sam transformers     # these (and base, their parent)
#   PARITY_OS_IMAGE="$(scripts/make-os-image.sh)" scripts/build-images.sh   # no registry: debootstrapped OS image
#   PARITY_BUILD_ARG_CUDA_OPS=0 scripts/build-images.sh detectron2          # CPU-only detectron2 image
# The host's CA bundle ($PARITY_CA_BUNDLE, $PIP_CERT or $SSL_CERT_FILE) is written into the build context first
# (images/ca/host-ca.crt). Needs a Docker engine (scripts/docker-engine.sh) and the docker SDK (host .venv).
source "$(dirname "$0")/bootstrap.sh"
if [ "$#" -eq 0 ]; then set -- --all; fi
exec python -m parity.host.images build "$@"
