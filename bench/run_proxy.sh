#!/usr/bin/env bash
# The proxy benchmark, from a clean machine: Debian peers (haproxy, nginx, wrk), plot deps, then the run.
# All traffic stays on 127.0.0.1. Extra arguments go to bench/proxy_bench.py (e.g. --repeat 1 --duration 5).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
for tool in haproxy nginx wrk taskset; do
    command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if ((${#need[@]})); then
    packages=()
    for tool in "${need[@]}"; do
        case "$tool" in
            taskset) packages+=(util-linux) ;;
            *) packages+=("$tool") ;;
        esac
    done
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"
fi

PYTHON=${PYTHON:-.venv/bin/python}
"$PYTHON" -c "import matplotlib" 2>/dev/null || "$PYTHON" -m pip install -q -r bench/requirements.txt
exec "$PYTHON" bench/proxy_bench.py "$@"
