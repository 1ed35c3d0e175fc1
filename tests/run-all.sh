#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root on Debian 12):
#   dependencies -> lint -> unit tests -> collection build -> ansible-test sanity -> ansible-lint
#   -> integration tests in the two-hypervisor lab (brought up and torn down by the tests)
#   -> the molecule scenario (the same lab, driven by molecule).
# Exits non-zero as soon as one stage fails.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
export KVMLM_VENV=${KVMLM_VENV:-/opt/kvmlm/venv}
export PATH="$KVMLM_VENV/bin:$PATH"
cd "$repo"

stage() { printf '\n=== %s\n' "$*"; }

stage "dependencies"
bash tests/install-deps.sh

stage "ruff"
ruff check .

stage "unit tests"
pytest tests/unit -q -p no:cacheprovider

stage "collection build"
bash tests/build.sh

stage "ansible-test sanity"
bash tests/sanity.sh

stage "ansible-lint"
ansible-lint

stage "integration tests (lab)"
bash tests/lab/lab.sh down >/dev/null 2>&1 || true
pytest tests/integration -q -p no:cacheprovider --rootdir tests/integration -c /dev/null -o console_output_style=classic
bash tests/lab/lab.sh check-clean

stage "molecule: the lab scenario (extensions/molecule/default)"
molecule test
