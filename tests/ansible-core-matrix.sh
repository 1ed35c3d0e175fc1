#!/usr/bin/env bash
# The unit tests and `ansible-test sanity` under every ansible-core that meta/runtime.yml's requires_ansible
# admits, each with a controller Python it supports (as root on Debian 12):
#   2.16, 2.17, 2.18, 2.19  this machine's Python 3.11 (KVMLM_CORE_PYTHON: the interpreter of $KVMLM_VENV)
#   2.20                    Python 3.13 in a Debian 13 (trixie) chroot: 2.20 needs 3.12 or newer
# Each version gets its own venv, $KVMLM_CORE_DIR/X.Y (default /opt/kvmlm/core; for 2.20 that path inside the
# chroot), holding the latest ansible-core X.Y.* from PyPI and what the unit tests import, and nothing that
# brings a second ansible-core (no ansible-lint, molecule, ansible). A venv is built again only when its
# requirements or its interpreter change (KVMLM_CORE_REBUILD=1 forces it, e.g. for a new patch release).
# Then, from that venv: `pytest tests/unit -q -p no:cacheprovider` and `KVMLM_VENV=<venv> bash tests/sanity.sh`.
#
# Usage: tests/ansible-core-matrix.sh [VERSION...]   (default: 2.16 2.17 2.18 2.19 2.20)
#        tests/ansible-core-matrix.sh --controller VERSION [--bind DIR]... -- COMMAND...
#            COMMAND (ansible-playbook ...) from VERSION's venv, with this repository as the collection
#            kvm.live_migration: a controller of that ansible-core, e.g. for tests/machines. For 2.20 it runs in
#            the chroot, which shares this machine's network; each DIR (absolute) is mounted there at its own
#            path, so inventories, keys and result files keep their names.
# Prints one line per version (ansible-core, Python, unit tests, sanity, seconds) and exits non-zero when any
# version failed. The logs stay in $KVMLM_CORE_SCRATCH/logs (default /var/tmp/kvmlm-core-matrix/logs).
#
# Sanity: the full set on the newest version (on Python 3.13) and on 2.19 (the version CI's own sanity stage and
# every other tool run); on 2.16, 2.17 and 2.18 the tests that read the collection through that ansible-core itself
# (compile, import, validate-modules, ansible-doc, runtime-metadata); the others (pylint, pep8, shellcheck, ...)
# check the code against the tool versions ansible-test pins, not against what the collection runs on, and take
# 240 s on 2.16 alone: so they stay out, to keep the matrix within CI's budget
# (README.md, "Tested versions", has the times). KVMLM_CORE_SANITY=full runs the full set everywhere.
#
# The chroot: a copy of the pristine trixie root that `tests/machines/machines.sh rootfs trixie` keeps,
# in $KVMLM_CORE_SCRATCH/trixie, with python3-venv, git and shellcheck added from deb.debian.org (the root's
# own apt proxy exists only while those machines run). It is made again when the pristine root changes.
# Each run enters it in a private mount namespace: /proc, /dev, the repository read-only at /src/kvmlm and
# the log directory; nothing stays mounted afterwards.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd -P)
all_versions=(2.16 2.17 2.18 2.19 2.20)
# Versions whose supported controller Pythons (2.20: 3.12-3.14) this machine's 3.11 is not among.
chroot_versions=" 2.20 "
# Sanity tests run on the versions that do not get the full set.
sanity_subset_tests="--test compile --test import --test validate-modules --test ansible-doc --test runtime-metadata"
declare -A sanity_subset=([2.16]=$sanity_subset_tests [2.17]=$sanity_subset_tests [2.18]=$sanity_subset_tests)
core_dir=${KVMLM_CORE_DIR:-/opt/kvmlm/core}
scratch=${KVMLM_CORE_SCRATCH:-/var/tmp/kvmlm-core-matrix}
chroot_root=$scratch/trixie
# openssh-client and python3-cryptography: a controller (--controller) reaches hosts over SSH and makes TLS
# certificates on localhost with the inventory's /usr/bin/python3.
chroot_packages="python3 python3-venv git shellcheck ca-certificates openssh-client python3-cryptography"
chroot_recipe=2  # bump when ensure_chroot changes, so the copy is made again
inside_logs=/var/tmp/kvmlm-core-matrix-logs  # where the chroot sees $scratch/logs
inside_repo=/src/kvmlm
inside_ca_bundle=/etc/ssl/kvmlm-host-ca-bundle.crt
for host_ca_bundle in "${PIP_CERT:-}" "${SSL_CERT_FILE:-}" /etc/ssl/certs/ca-certificates.crt; do
    [[ -f "$host_ca_bundle" ]] && break
done

log() { echo "ansible-core-matrix.sh: $*" >&2; }
die() { log "$*"; exit 2; }

# What a version's venv holds: ansible-core and the unit tests' imports (pytest; jmespath for the filters;
# ansible-builder, which brings bindep, for test_awx; matplotlib for the benchmark's chart). libvirt-python is
# left out: it compiles against the machine's libvirt and only two tests, which compare the fake binding with
# the real one whatever ansible-core is, use it (they skip here and run in CI's unit stage).
requirements() {
    printf '%s\n' "ansible-core==$1.*" pytest jmespath ansible-builder matplotlib
}

# test_role_specs runs ansible-playbook with the json stdout callback, which is ansible.posix's (a dependency
# of the collection, galaxy.yml). Galaxy is not reachable from CI, so, as test-requirements.txt does with the
# whole `ansible` package, it comes from the community package built for the same ansible-core: only the
# ansible.posix collection is taken out of that package's wheel (installing the package would add 470 MB and
# 40,000 files to each venv).
# The roles' collections (community.crypto, community.general) come the same way, for --controller.
declare -A community_package=([2.16]=9 [2.17]=10 [2.18]=11 [2.19]=12 [2.20]=13)
collections_from_package=(ansible/posix community/crypto community/general)

install_collections() {
    local version=$1 venv=$2 download=$2/.download
    "$venv/bin/python" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --dest "$download" "ansible==${community_package[$version]}.*" >>"$venv/pip.log" 2>&1 || return 1
    "$venv/bin/python" - "$download"/ansible-*.whl "${collections_from_package[@]}" <<'PY' || return 1
import sys
import sysconfig
import zipfile

wheel_path, names = sys.argv[1], sys.argv[2:]
prefixes = tuple(f"ansible_collections/{name}/" for name in names)
with zipfile.ZipFile(wheel_path) as wheel:
    members = [member for member in wheel.namelist() if member.startswith(prefixes)]
    if not members:
        sys.exit(f"{wheel_path} holds none of {names}")
    wheel.extractall(sysconfig.get_paths()["purelib"], members)
PY
    rm -rf -- "$download"
}

# ensure_venv VERSION PYTHON: build $core_dir/VERSION unless it holds these requirements for this interpreter.
ensure_venv() {
    local version=$1 python=$2 venv=$core_dir/$1 wanted
    wanted="$(requirements "$version")
collections: ${collections_from_package[*]} from ansible==${community_package[$version]}.*
python: $("$python" -c 'import sys; print(sys.version.split()[0], sys.executable)')"
    if [[ "${KVMLM_CORE_REBUILD:-0}" != 1 && -x "$venv/bin/python" &&
        "$(cat "$venv/.kvmlm-requirements" 2>/dev/null)" == "$wanted" ]]; then
        return 0
    fi
    log "building $venv"
    rm -rf -- "$venv"
    mkdir -p "$core_dir"
    "$python" -m venv "$venv"
    requirements "$version" >"$venv/requirements.txt"
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$venv/requirements.txt" \
        >"$venv/pip.log" 2>&1 || ! install_collections "$version" "$venv"; then
        tail -n 30 "$venv/pip.log" >&2
        rm -rf -- "$venv"
        die "could not build ansible-core $version's venv"
    fi
    printf '%s\n' "$wanted" >"$venv/.kvmlm-requirements"
}

# count WORD LOG: the number pytest's summary line gives for WORD (passed, failed, skipped, error).
count() { grep -Eo "[0-9]+ $1" "$2" | tail -n 1 | grep -Eo '[0-9]+' || echo 0; }

# run_version VERSION PYTHON LOGDIR [SHOWN_LOGDIR]: one version's venv, unit tests and sanity; appends its
# line to LOGDIR/results.tsv and returns non-zero when something failed. SHOWN_LOGDIR: LOGDIR as the messages
# name it (the chroot's log directory is $scratch/logs outside).
run_version() {
    local version=$1 python=$2 logs=$3 shown=${4:-$3} venv=$core_dir/$1 started=$SECONDS
    local unit_log=$logs/$1-unit.log sanity_log=$logs/$1-sanity.log
    local core pyver unit_rc=0 sanity_rc=0 unit_s sanity_s what passed failed skipped errors sanity
    local -a subset=()
    ensure_venv "$version" "$python"
    core=$("$venv/bin/python" -c 'import ansible.release; print(ansible.release.__version__)')
    pyver=$("$venv/bin/python" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
    if [[ "${KVMLM_CORE_SANITY:-}" != full && -n "${sanity_subset[$version]:-}" ]]; then
        read -r -a subset <<<"${sanity_subset[$version]}"
        what=$(printf '%s\n' "${subset[@]}" | grep -v '^--test$' | paste -sd ' ' -)
    else
        what=full
    fi

    log "ansible-core $core (Python $pyver): unit tests (log $shown/$version-unit.log)"
    local t=$SECONDS
    (cd "$repo" && PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest tests/unit -q -p no:cacheprovider) \
        >"$unit_log" 2>&1 || unit_rc=$?
    unit_s=$((SECONDS - t))
    passed=$(count passed "$unit_log") failed=$(count failed "$unit_log")
    skipped=$(count skipped "$unit_log") errors=$(count error "$unit_log")
    if [[ $unit_rc -ne 0 ]]; then
        tail -n 40 "$unit_log" >&2
        [[ "$failed" -gt 0 || "$errors" -gt 0 ]] || failed=1  # pytest failed before its summary
    fi

    log "ansible-core $core (Python $pyver): sanity, $what (log $shown/$version-sanity.log)"
    t=$SECONDS
    KVMLM_VENV=$venv bash "$repo/tests/sanity.sh" "${subset[@]}" >"$sanity_log" 2>&1 || sanity_rc=$?
    sanity_s=$((SECONDS - t))
    if [[ $sanity_rc -eq 0 ]]; then sanity=pass; else sanity=FAIL; grep -E '^ERROR|FAILED' "$sanity_log" | head -n 40 >&2 || true; fi

    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$core" "$pyver" "$passed" "$((failed + errors))" "$skipped" \
        "$sanity" "$what" "$unit_s" "$sanity_s" "$((SECONDS - started))" >>"$logs/results.tsv"
    [[ $unit_rc -eq 0 && $sanity_rc -eq 0 ]]
}

# in_chroot ROOT CMD...: CMD inside ROOT as root, with a clean environment, /proc, /dev, the repository
# (read-only), the log directory and the directories of KVMLM_CHROOT_BINDS (colon-separated, at their own
# paths) mounted in a mount namespace of its own, so nothing outlives it.
in_chroot() {
    local root=$1
    shift
    mkdir -p "$root$inside_repo" "$root$inside_logs" "$scratch/logs"
    # pip inside trusts what this machine trusts (the way out to PyPI may present a certificate that only
    # this machine's bundle holds): through pip.conf too, since ansible-test runs pip with an environment of
    # its own.
    cp -f "$host_ca_bundle" "$root$inside_ca_bundle"
    cp --remove-destination /etc/resolv.conf "$root/etc/resolv.conf"  # pip and apt resolve as this machine does
    printf '[global]\ncert = %s\n' "$inside_ca_bundle" >"$root/etc/pip.conf"
    # shellcheck disable=SC2016 # the inner bash expands them
    unshare --mount --propagation private -- bash -euo pipefail -c '
        root=$1 repo=$2 logs=$3 inside_repo=$4 inside_logs=$5 ca_bundle=$6 binds=$7
        shift 7
        mount -t proc proc "$root/proc"
        mount --rbind /dev "$root/dev"
        mount --bind "$repo" "$root$inside_repo"
        mount -o remount,bind,ro "$root$inside_repo"
        mount --bind "$logs" "$root$inside_logs"
        IFS=: read -r -a extra <<<"$binds"
        for dir in "${extra[@]}"; do
            mkdir -p "$root$dir"
            mount --bind "$dir" "$root$dir"
        done
        exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
            PIP_CERT="$ca_bundle" SSL_CERT_FILE="$ca_bundle" REQUESTS_CA_BUNDLE="$ca_bundle" \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "$@"
    ' in_chroot "$root" "$repo" "$scratch/logs" "$inside_repo" "$inside_logs" "$inside_ca_bundle" \
        "${KVMLM_CHROOT_BINDS:-}" "$@"
}

# ensure_chroot: $chroot_root, a copy of the pristine trixie root with what the matrix needs installed.
ensure_chroot() {
    local pristine stamp tmp=$chroot_root.tmp
    [[ -f "$repo/tests/machines/machines.sh" ]] || die "tests/machines/machines.sh (which keeps the trixie root) is missing"
    pristine=$(bash "$repo/tests/machines/machines.sh" rootfs trixie) || die "no trixie root from machines.sh rootfs"
    stamp="recipe=$chroot_recipe pristine=$(cat "$pristine.stamp" 2>/dev/null) $(stat -c %Y "$pristine") packages=$chroot_packages"
    [[ "$(cat "$chroot_root.stamp" 2>/dev/null)" == "$stamp" && -x "$chroot_root/usr/bin/python3" ]] && return 0
    if grep -qF " $scratch/" /proc/self/mountinfo; then
        die "something is still mounted under $scratch; unmount it first"
    fi
    log "copying $pristine to $chroot_root and installing $chroot_packages"
    rm -rf -- "$chroot_root" "$tmp" "$chroot_root.stamp"
    mkdir -p "$scratch"
    cp -a "$pristine" "$tmp"
    # The pristine root's apt goes through the machines' proxy; a chroot reaches the archive directly.
    rm -f "$tmp"/etc/apt/apt.conf.d/01proxy*
    printf '%s\n' 'Acquire::Check-Valid-Until "false";' >"$tmp/etc/apt/apt.conf.d/99kvmlm-core-matrix"
    in_chroot "$tmp" sh -c "apt-get update -q && apt-get install -y -q --no-install-recommends $chroot_packages \
        && apt-get clean" >"$scratch/chroot.log" 2>&1 ||
        { tail -n 30 "$scratch/chroot.log" >&2; die "could not install $chroot_packages in the trixie chroot (log $scratch/chroot.log)"; }
    mv "$tmp" "$chroot_root"
    printf '%s\n' "$stamp" >"$chroot_root.stamp"
}

host_python() {
    local venv=${KVMLM_VENV:-/opt/kvmlm/venv}
    if [[ -n "${KVMLM_CORE_PYTHON:-}" ]]; then
        echo "$KVMLM_CORE_PYTHON"
    elif [[ -x "$venv/bin/python" ]]; then
        "$venv/bin/python" -c 'import sys; print(sys._base_executable)'
    else
        command -v python3
    fi
}

# Inside the chroot: tests/ansible-core-matrix.sh --inside VERSION LOGDIR (run by the outer script; LOGDIR is
# where the logs are seen outside).
if [[ "${1:-}" == --inside ]]; then
    run_version "$2" /usr/bin/python3 "$inside_logs" "$3"
    exit
fi

# run_controller VERSION PYTHON CMD...: CMD with VERSION's venv first on PATH and this repository as the
# collection kvm.live_migration (a collection path of its own, beside the venv's collections).
run_controller() {
    local version=$1 python=$2 farm
    shift 2
    ensure_venv "$version" "$python" >&2
    farm=$(mktemp -d)
    mkdir -p "$farm/ansible_collections/kvm"
    ln -s "$repo" "$farm/ansible_collections/kvm/live_migration"
    PATH="$core_dir/$version/bin:$PATH" ANSIBLE_COLLECTIONS_PATH=$farm "$@" || { local rc=$?; rm -rf -- "$farm"; return "$rc"; }
    rm -rf -- "$farm"
}

if [[ "${1:-}" == --inside-controller ]]; then
    shift
    version=$1
    shift
    export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0
    run_controller "$version" /usr/bin/python3 "$@"
    exit
fi

if [[ "${1:-}" == --controller ]]; then
    version=${2:-}
    [[ " ${all_versions[*]} " == *" $version "* ]] || die "--controller needs a version of ${all_versions[*]}, not '$version'"
    shift 2
    binds=()
    while [[ "${1:-}" == --bind ]]; do
        [[ "${2:-}" == /* && -d "${2:-}" ]] || die "--bind needs an existing absolute directory, not '${2:-}'"
        binds+=("$2")
        shift 2
    done
    [[ "${1:-}" == -- ]] && shift
    [[ $# -gt 0 ]] || die "--controller $version: give the command after --"
    if [[ "$chroot_versions" == *" $version "* ]]; then
        [[ "$(id -u)" -eq 0 ]] || die "run as root (ansible-core $version runs in a chroot)"
        ensure_chroot
        KVMLM_CHROOT_BINDS=$(IFS=:; echo "${binds[*]}") \
            in_chroot "$chroot_root" bash "$inside_repo/tests/ansible-core-matrix.sh" --inside-controller "$version" "$@"
    else
        run_controller "$version" "$(host_python)" "$@"
    fi
    exit
fi

versions=("$@")
[[ ${#versions[@]} -gt 0 ]] || versions=("${all_versions[@]}")
for version in "${versions[@]}"; do
    [[ " ${all_versions[*]} " == *" $version "* ]] || die "unknown ansible-core version '$version': use ${all_versions[*]}"
done
[[ "$(id -u)" -eq 0 ]] || die "run as root (the 2.20 run enters a chroot)"

mkdir -p "$scratch/logs"
results=$scratch/logs/results.tsv
: >"$results"
started=$SECONDS
failed_versions=()
python=$(host_python)
for version in "${versions[@]}"; do
    if [[ "$chroot_versions" == *" $version "* ]]; then
        ensure_chroot
        in_chroot "$chroot_root" bash "$inside_repo/tests/ansible-core-matrix.sh" --inside "$version" "$scratch/logs" ||
            failed_versions+=("$version")
    else
        run_version "$version" "$python" "$scratch/logs" || failed_versions+=("$version")
    fi
    if ! grep -q "^$version\." "$results"; then  # it failed before it could report
        printf '%s\t?\t0\t1\t0\tFAIL\t-\t0\t0\t0\n' "$version" >>"$results"
    fi
done

printf '\n%-12s %-8s %-35s %-28s %s\n' ansible-core Python "unit tests" seconds sanity
total_passed=0 total_failed=0
while IFS=$'\t' read -r core pyver passed failed skipped sanity what unit_s sanity_s seconds; do
    printf '%-12s %-8s %-35s %-28s %s\n' "$core" "$pyver" "$passed passed, $failed failed, $skipped skipped" \
        "$seconds (unit $unit_s, sanity $sanity_s)" "$sanity ($what)"
    total_passed=$((total_passed + passed)) total_failed=$((total_failed + failed))
done <"$results"
printf 'ansible-core matrix: %d versions in %d s\n' "${#versions[@]}" $((SECONDS - started))
if [[ ${#failed_versions[@]} -gt 0 ]]; then
    log "failed: ${failed_versions[*]} (logs in $scratch/logs)"
    exit 1
fi
