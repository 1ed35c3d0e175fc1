#!/usr/bin/env bash
# The module-side unit tests under the managed hosts' Pythons: Debian 11's 3.9 (bullseye, the floor that
# tests/config.yml declares) and Debian 13's 3.13 (trixie). Module-side means what runs on the hosts
# (plugins/module_utils, plugins/modules): `pytest -m module_side`, every test file of tests/unit but the
# controller-side ones listed in tests/unit/conftest.py (CONTROLLER_SIDE_TESTS).
#
#   bash tests/unit-pythons.sh [SUITE...]    SUITE: bullseye (3.9), bookworm (3.11), trixie (3.13);
#                                            default: bullseye trixie
#
# Each suite runs in a chroot of its own Debian: a copy, made once, of `tests/machines/machines.sh rootfs SUITE`
# (a pristine debootstrap root that is never touched itself) in /var/tmp/kvmlm-pythons/SUITE, with a venv of
# pytest, cryptography and jmespath from PyPI (pip itself is run from a wheel: the root has no python3-venv
# or pip, and apt is not needed). Made again when the pristine root or the list below changes; remove the
# directory to start afresh. The repository is bind-mounted read-only at /repo, and so is the controller's
# `ansible` package: ansible-core >= 2.16 does not install on 3.9, and the ansible.module_utils a module runs
# with on a host are the controller's anyway (they travel inside the module). Mounts live in a private mount
# and PID namespace, so nothing is left behind, whatever happens.
#
# Exits non-zero when a suite fails or selects no test; prints pytest's closing line for each suite.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${KVMLM_VENV:-/opt/kvmlm/venv}
base=${KVMLM_PYTHONS_DIR:-/var/tmp/kvmlm-pythons}
# What the module-side tests import besides the standard library and ansible.module_utils. The floor suite
# pairs 3.9 with the cryptography of RHEL 9 (36): before 42, certificates have no not_valid_*_utc
# (tlsfiles._timestamp's other path).
declare -A cryptography=([bullseye]="cryptography==36.0.*")
requirements_of() { echo "pytest ${cryptography[$1]:-cryptography} jmespath"; }
recipe=1  # bump when the way a root is made below changes
suites=("$@")
[ ${#suites[@]} -gt 0 ] || suites=(bullseye trixie)

log() { printf 'unit-pythons: %s\n' "$*" >&2; }
die() { printf 'unit-pythons: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (chroot, mounts)"
ansible_pkg=$("$venv/bin/python" -c 'import ansible, os; print(os.path.dirname(ansible.__file__))') ||
    die "no ansible in $venv (run tests/install-deps.sh)"
mkdir -p "$base"

# Makes $base/SUITE (once per pristine root and recipe): the copy, a venv at /opt/kvmlm-tests with the requirements.
prepare_root() {
    local suite=$1 pristine root stamp_file stamp pyver requirements
    read -ra requirements <<<"$(requirements_of "$suite")"
    pristine=$(bash "$repo/tests/machines/machines.sh" rootfs "$suite") || die "machines.sh rootfs $suite failed"
    [ -x "$pristine/usr/bin/python3" ] || die "$pristine (machines.sh rootfs $suite) has no python3"
    root=$base/$suite
    stamp_file=$base/$suite.stamp
    # A rebuilt pristine root is a new directory (machines.sh moves it into place): its inode and time change.
    stamp="recipe=$recipe pristine=$pristine $(stat -c 'inode=%i mtime=%Y' "$pristine") requirements=${requirements[*]}"
    if [ -x "$root/opt/kvmlm-tests/bin/python" ] && [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ]; then
        echo "$root"
        return 0
    fi
    log "$suite: copying $pristine to $root and installing ${requirements[*]} (once)"
    rm -rf "$root" "$root.tmp" "$stamp_file"
    cp -a "$pristine" "$root.tmp"
    # pip inside reaches PyPI over this machine's network (a chroot shares it): its name servers and CA bundle.
    cp -L /etc/resolv.conf "$root.tmp/etc/resolv.conf"
    cp -L /etc/ssl/certs/ca-certificates.crt "$root.tmp/etc/ssl/kvmlm-host-ca.crt"
    pyver=$(chroot "$root.tmp" /usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    mkdir -p "$root.tmp/tmp/kvmlm-wheels"
    "$venv/bin/pip" download -q --no-deps --only-binary=:all: --python-version "$pyver" \
        -d "$root.tmp/tmp/kvmlm-wheels" pip >&2 || die "could not download a pip wheel for Python $pyver"
    # shellcheck disable=SC2016  # the script in single quotes expands its own variables, in the chroot
    chroot "$root.tmp" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        PIP_CERT=/etc/ssl/kvmlm-host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
        /bin/sh -euc '
            python3 -m venv --without-pip /opt/kvmlm-tests
            wheel=$(ls /tmp/kvmlm-wheels/pip-*.whl)
            # pip below Python 3.10 reads its install locations from distutils, which Debian 11 splits out
            # (python3-distutils); sysconfig._PIP_USE_SYSCONFIG (the switch pip leaves to distributors) says
            # sysconfig, whose paths for a venv are the same.
            /opt/kvmlm-tests/bin/python -c "import runpy, sys, sysconfig
sysconfig._PIP_USE_SYSCONFIG = True
sys.path.insert(0, sys.argv.pop(1))
runpy.run_module(\"pip\", run_name=\"__main__\", alter_sys=True)" "$wheel" install -q --no-cache-dir "$@"
            rm -rf /tmp/kvmlm-wheels
        ' sh "${requirements[@]}" >&2 || die "$suite: installing ${requirements[*]} in the chroot failed"
    mv "$root.tmp" "$root"
    echo "$stamp" >"$stamp_file"
    echo "$root"
}

# Runs pytest -m module_side in the chroot; its output goes to stdout, its exit status is returned.
run_suite() {
    local root=$1
    mkdir -p "$root/repo" "$root/opt/kvmlm-controller/ansible"
    # shellcheck disable=SC2016  # the script in single quotes expands its own variables, in the namespace
    unshare --mount --pid --fork --propagation private -- /bin/bash -euc '
        root=$1 repo=$2 ansible_pkg=$3
        mount --bind "$repo" "$root/repo"
        mount -o remount,bind,ro "$root/repo"
        mount --bind "$ansible_pkg" "$root/opt/kvmlm-controller/ansible"
        mount -o remount,bind,ro "$root/opt/kvmlm-controller/ansible"
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount -t tmpfs tmpfs "$root/tmp"
        # Not exec: bash stays PID 1 of the namespace and reaps what the tests abandon (the children
        # hostfacts.probe_kvm gives up on); when it exits, the kernel kills whatever is left in the namespace.
        # (bash would exec a last simple command itself: hence the status kept.)
        status=0
        chroot "$root" /usr/bin/env -i PATH=/opt/kvmlm-tests/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
            LANG=C.UTF-8 PYTHONPATH=/opt/kvmlm-controller PYTHONDONTWRITEBYTECODE=1 NO_COLOR=1 PY_COLORS=0 \
            /bin/sh -c "cd /repo && exec python -m pytest tests/unit -m module_side -q -p no:cacheprovider \
                -o console_output_style=classic" || status=$?
        exit "$status"
    ' bash "$root" "$repo" "$ansible_pkg"
}

failed=()
summary=()
for suite in "${suites[@]}"; do
    exec 9>"$base/$suite.lock"
    flock 9  # one run per suite at a time: they share the root
    started=$SECONDS
    root=$(prepare_root "$suite")
    prepared=$((SECONDS - started))
    python=$(chroot "$root" /opt/kvmlm-tests/bin/python -c 'import platform; print(platform.python_version())')
    versions=$(chroot "$root" /opt/kvmlm-tests/bin/python -c \
        'from importlib.metadata import version as v; print(", ".join(p + " " + v(p) for p in ("pytest", "cryptography", "jmespath")))')
    ansible_version=$("$venv/bin/python" -c 'from ansible.release import __version__; print(__version__)')
    printf '\n=== %s: Python %s (%s; ansible-core %s module_utils)\n' "$suite" "$python" "$versions" "$ansible_version"
    log_file=$(mktemp)
    status=0
    run_suite "$root" | tee "$log_file" || status=$?
    closing=$(grep -E '^=*.* in [0-9.]+s' "$log_file" | tail -1 | sed -E 's/^=+ //; s/ =+$//' || true)
    passed=$(grep -Eo '[0-9]+ passed' <<<"$closing" | grep -Eo '[0-9]+' || echo 0)
    rm -f "$log_file"
    exec 9>&-
    if [ "$status" -eq 0 ] && [ "$passed" -eq 0 ]; then
        status=5  # pytest's own "no tests ran"; never a pass
    fi
    line="$suite (Python $python): ${closing:-no closing line from pytest}; $((SECONDS - started)) s (root ready in $prepared s)"
    summary+=("$line")
    if [ "$status" -ne 0 ]; then
        failed+=("$suite")
        printf 'unit-pythons: %s FAILED (pytest exit %s)\n' "$suite" "$status" >&2
    fi
done

printf '\n=== module-side unit tests under the hosts'"'"' Pythons\n'
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "unit-pythons: failed: ${failed[*]}" >&2
    exit 1
fi
