#!/usr/bin/env bash
# Install what is missing, then run the whole test suite against real runc cells.
# Extra arguments go to pytest (e.g. -k lifecycle).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec "${CELLBOX_VENV:-.venv}/bin/python" -m pytest "$@"
