#!/usr/bin/env bash
# The main job: an offline self-test by default (original SAM vs transformers SamModel on a tiny seeded model).
# Any parity arguments replace the default, e.g. scripts/demo.sh convert sam-vit-base
source "$(dirname "$0")/bootstrap.sh"
if [ "$#" -eq 0 ]; then set -- convert sam-tiny-random; fi
exec parity "$@"
