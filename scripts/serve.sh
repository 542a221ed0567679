#!/usr/bin/env bash
# Install what is missing, then run the server on its defaults: port 8001,
# SQLite and cell state in /var/lib/cellbox (or $CELLBOX_DATA_DIR), runc.
# Extra arguments go to `cellbox serve` (e.g. --host 0.0.0.0 --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install.sh
exec "${CELLBOX_VENV:-.venv}/bin/cellbox" serve "$@"
