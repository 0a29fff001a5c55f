#!/usr/bin/env bash
# Runs gpukit_driver_test.py (Python's unittest; Debian's python3, standard
# library only) against deploy/gpukit from the runfiles.
set -euo pipefail
export PYTHONDONTWRITEBYTECODE=1
exec python3 tests/deploy/gpukit_driver_test.py deploy/gpukit
