#!/usr/bin/env bash
# Install everything cellbox needs on Debian 12, as root. Safe to run again:
# system packages are installed only when missing, the virtualenv is reused.
#   CELLBOX_VENV   where the virtualenv goes (default: .venv in the checkout)
#   PYTHON         interpreter for the server (default: python3, must be >= 3.11)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (cells are containers; runc and loop mounts need root)" >&2
    exit 1
fi

packages=()
need() { # need <package> <file or command>...
    local pkg=$1; shift
    for probe in "$@"; do
        if [ ! -e "$probe" ] && ! command -v "$probe" >/dev/null 2>&1; then
            packages+=("$pkg"); return
        fi
    done
}
need runc runc
need golang-github-containers-common /usr/share/containers/seccomp.json   # the default seccomp profile
need python3 /usr/bin/python3                                             # the cells' interpreter
need e2fsprogs mkfs.ext4                                                  # each cell's disk
need mount mount
need util-linux mountpoint
need util-linux nsenter
need procps pgrep
need git git                                                              # cells have git
need nodejs node                                                          # the javascript kernel
need ca-certificates /etc/ssl/certs

PYTHON=${PYTHON:-python3}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    packages+=(python3)
elif ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    packages+=(python3-venv)
fi

if [ ${#packages[@]} -gt 0 ]; then
    echo "install.sh: installing ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "install.sh: $PYTHON is older than 3.11; set PYTHON to a newer interpreter" >&2
    exit 1
}

VENV=${CELLBOX_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
echo "install.sh: ready ($VENV/bin/cellbox)"
