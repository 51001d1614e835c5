#!/usr/bin/env bash
# Installs what bench/run.py needs: beanstalkd and redis-server from Debian,
# and the Python clients and matplotlib into the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"

missing=()
command -v beanstalkd >/dev/null 2>&1 || missing+=(beanstalkd)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
        apt-get update
        apt-get install -y --no-install-recommends "${missing[@]}"
    fi
fi

"$VENV/bin/python" -m pip install --quiet -r bench/requirements.txt
