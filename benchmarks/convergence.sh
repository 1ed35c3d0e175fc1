#!/usr/bin/env bash
# Runs the convergence benchmark (benchmarks/convergence.py) in a fresh lab and tears it down.
# As root on the lab machine; prints a table and the targets, exits 1 when a target fails.
#   bash benchmarks/convergence.sh [--workloads idle,heavy] [--policies libvirt,ours-ac]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export KVMLM_VENV=${KVMLM_VENV:-/opt/kvmlm/venv}
lab="$repo/tests/lab/lab.sh"
[ -x "$KVMLM_VENV/bin/python" ] || bash "$repo/tests/install-deps.sh"
"$lab" down >/dev/null 2>&1 || true
trap '"$lab" down' EXIT
"$lab" up
"$KVMLM_VENV/bin/python" "$repo/benchmarks/convergence.py" "$@"
