#!/usr/bin/env bash
# The test suite. First run builds the torch layer and the environments (~4 min); later runs reuse them by pin hash.
source "$(dirname "$0")/bootstrap.sh"
exec python -m pytest "$@"
