#!/usr/bin/env bash
# Redraws docs/images/convergence-heavy.png from a real lab run: the demo (tests/lab/demo.sh: lab up, a guest
# on hv1, playbooks/migrate.yml to hv2, memory verified, lab down) with the heavy guest of the benchmark
# (40,000 random pages/s over 384 MiB, about twice what the 64 MiB/s cap carries), auto-converge permitted,
# post-copy not; then benchmarks/convergence_chart.py draws the result. As root on the lab machine, ~3 min.
#   bash benchmarks/convergence-chart.sh [OUTPUT.png]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
export KVMLM_VENV=${KVMLM_VENV:-/opt/kvmlm/venv}
output=${1:-$repo/docs/images/convergence-heavy.png}
result=${output%.png}.json
KVMLM_DEMO_DIRTY_MIB=384 KVMLM_DEMO_PAGES_PER_S=40000 KVMLM_DEMO_RESULT=$result bash "$repo/tests/lab/demo.sh"
"$KVMLM_VENV/bin/python" "$repo/benchmarks/convergence_chart.py" "$result" "$output"
