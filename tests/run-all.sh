#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root on Debian 12):
#   dependencies (the backports stack: QEMU 10.0 / libvirt 11.3) -> lint -> unit tests -> mutation testing of the
#   ownership settlement (tests/mutation.py) -> the Python floor (vermin)
#   -> module-side unit tests under Python 3.9 and 3.13 -> collection
#   build -> docs and changelog (tests/docs, tests/changelog.py) -> ansible-test sanity -> ansible-lint -> integration tests in the two-hypervisor lab (brought
#   up and torn down by the tests) -> the molecule scenario (the same lab, driven by molecule)
#   -> real systemd hosts of Debian 11, 12 and 13 (tests/machines: prepare_hosts from a fresh install, migrations
#   across the generations, evacuation and rolling maintenance; every playbook by its FQCN from a controller with
#   the ansible package and the collection installed from its tarball, variables in group_vars). The bookworm machine runs Debian 12's own QEMU 7.2 /
#   libvirt 9.0, so CI no longer swaps this machine's packages for a stock stage: `KVMLM_STACK=stock bash
#   tests/install-deps.sh` and `pytest tests/integration -m stock` run the lab's tests marked "stock" on it by hand.
# Exits non-zero as soon as one stage fails. On the backports stack no test may be an expected failure.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
export KVMLM_VENV=${KVMLM_VENV:-/opt/kvmlm/venv}
export PATH="$KVMLM_VENV/bin:$PATH"
cd "$repo"

export NO_COLOR=1 PY_COLORS=0 ANSIBLE_NOCOLOR=1
started=$SECONDS
tests_passed=0
tests_xfailed=0
stage() { printf '\n=== %s (at %d s)\n' "$*" $((SECONDS - started)); }

# Runs pytest and adds the tests it passed (and expected failures) to the totals printed at the end.
run_pytest() {
    local log
    log=$(mktemp)
    pytest "$@" | tee "$log"
    last_passed=$(grep -Eo '[0-9]+ passed' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
    last_xfailed=$(grep -Eo '[0-9]+ xfailed' "$log" | tail -1 | grep -Eo '[0-9]+' || echo 0)
    tests_passed=$((tests_passed + last_passed))
    tests_xfailed=$((tests_xfailed + last_xfailed))
    rm -f "$log"
}

run_lab_tests() {
    bash tests/lab/lab.sh down >/dev/null 2>&1 || true
    run_pytest tests/integration -q -rxs --durations=12 -p no:cacheprovider --rootdir tests/integration -c /dev/null \
        -o console_output_style=classic
    bash tests/lab/lab.sh check-clean
}

stage "dependencies"
bash tests/install-deps.sh

stage "ruff"
ruff check .

stage "unit tests"
run_pytest tests/unit -q -p no:cacheprovider

stage "mutation testing: every condition of ownership.py flipped in turn fails a unit test"
python tests/mutation.py plugins/module_utils/ownership.py

stage "python floor: vermin over the modules and module_utils (Python 3.9, RHEL 9's)"
bash tests/python-floor.sh

stage "module-side unit tests under Python 3.9 and 3.13 (chroots of Debian 11 and 13)"
unit_pythons_log=$(mktemp)
bash tests/unit-pythons.sh bullseye trixie | tee "$unit_pythons_log"
while read -r n; do
    tests_passed=$((tests_passed + n))
done < <(sed -n '/^=== module-side unit tests under/,$p' "$unit_pythons_log" | grep -Eo '[0-9]+ passed' | grep -Eo '[0-9]+')
rm -f "$unit_pythons_log"
bash tests/machines/machines.sh down >/dev/null  # the package proxy, if building a root started it

stage "collection build"
bash tests/build.sh

stage "docs and changelog: links, examples against the built collection, filters, ansible-doc; fragments"
python tests/changelog.py check
run_pytest tests/docs -q -p no:cacheprovider --rootdir tests/docs -c /dev/null

stage "ansible-test sanity"
bash tests/sanity.sh

# 2.19 is the venv's own: the unit and sanity stages above ran it.
stage "ansible-core matrix: unit tests and sanity under 2.16, 2.17, 2.18 and 2.20 (on Python 3.13 in a trixie chroot)"
bash tests/ansible-core-matrix.sh 2.16 2.17 2.18 2.20

stage "ansible-lint"
ansible-lint

stage "integration tests (lab, backports stack: $(qemu-system-x86_64 --version | head -1))"
run_lab_tests
if [ "$last_xfailed" -gt 0 ]; then
    echo "run-all.sh: $last_xfailed expected failure(s) on the backports stack, where none is allowed" >&2
    exit 1
fi

stage "molecule: the lab scenario (extensions/molecule/default)"
molecule test
tests_passed=$((tests_passed + 1))  # the molecule scenario

stage "real hosts: systemd machines of Debian 11, 12 and 13, from a user's controller (the ansible package, the tarball)"
bash tests/machines/machines.sh down >/dev/null 2>&1 || true
run_pytest tests/machines -q -rxs -s --durations=12 -p no:cacheprovider --rootdir tests/machines -c /dev/null \
    -o console_output_style=classic
bash tests/machines/machines.sh check-clean


printf '\n=== every stage passed in %d s\n' $((SECONDS - started))
if [ "$tests_xfailed" -gt 0 ]; then
    echo "tests: $tests_passed passed, 0 failed, $tests_xfailed expected failures (lab limitations named above)"
else
    echo "tests: $tests_passed passed, 0 failed"
fi
