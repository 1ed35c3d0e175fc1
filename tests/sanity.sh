#!/usr/bin/env bash
# Run `ansible-test sanity` over the working tree.
#
# ansible-test only works on a collection that sits at
# .../ansible_collections/<namespace>/<name>, while this repository's root is
# the collection root wherever it is cloned. So the files git knows about
# (tracked, plus untracked ones that .gitignore does not exclude, so work not
# yet committed is checked too) are copied into
# $TMP/ansible_collections/kvm/live_migration and ansible-test runs there.
#
# Usage: tests/sanity.sh [extra ansible-test sanity arguments]
#   e.g. tests/sanity.sh --test validate-modules
# Environment:
#   KVMLM_VENV         venv holding ansible-core (default /opt/kvmlm/venv); ansible-test runs
#                      with that venv's Python version (tests/ansible-core-matrix.sh passes the
#                      venv of each ansible-core version it tests)
#   KVMLM_SANITY_KEEP  set to 1 to keep the laid-out copy (path is printed)
#
# --venv (rather than --requirements, or --docker) is used: ansible-test runs
# from a private virtualenv and builds one more per sanity test, under
# ~/.ansible/test/venv/, from its own pinned requirement files (pylint,
# yamllint, voluptuous, ...), reusing them on later runs. --requirements would
# pip-install ansible-test's pins into KVMLM_VENV itself and downgrade or clash
# with the tools installed there (ansible-lint, yamllint, ...), and --docker
# needs a container daemon that neither the developers' machines nor CI run.
# The first run needs PyPI (through pip's usual configuration); later runs
# reuse the cached venvs.
#
# ansible-test creates every venv without pip and bootstraps pip with a
# get-pip.py it downloads from ci-files.testing.ansible.com, which is not
# reachable from here, unless ~/.ansible/test/cache/get_pip_<version>.py
# already exists. install_get_pip_shim puts a small stand-in there that takes
# pip from the interpreter's own ensurepip and then lets that pip install the
# exact pip version ansible-test asked for from the package index. A real
# get-pip.py found there is left alone.
set -euo pipefail

repo_root=$(cd "$(dirname "$0")/.." && pwd -P)
venv=${KVMLM_VENV:-/opt/kvmlm/venv}
ansible_test="$venv/bin/ansible-test"

if [[ ! -x "$ansible_test" ]]; then
    echo "sanity.sh: $ansible_test not found; set KVMLM_VENV to a venv with ansible-core" >&2
    exit 2
fi
if ! git -C "$repo_root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "sanity.sh: $repo_root is not a git work tree" >&2
    exit 2
fi

# The venv's Python version (3.11 for the default venv): ansible-test's --python.
python_version=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
shim_marker='# kvm.live_migration get-pip stand-in'

install_get_pip_shim() {
    local pip_version cache_file
    # The pip version ansible-test bootstraps into its venvs (23.1.2 for
    # ansible-core 2.16 and 2.17, 24.2 for 2.18 and 2.19, 25.2 for 2.20); the
    # cache file name embeds it.
    pip_version=$("$venv/bin/python" - "$python_version" <<'PY'
import sys

from ansible_test._internal.host_configs import NativePythonConfig
from ansible_test._internal.python_requirements import get_venv_packages

print(get_venv_packages(NativePythonConfig(version=sys.argv[1], path=sys.executable))["pip"])
PY
    )
    cache_file="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
    if [[ -f "$cache_file" ]] && ! grep -qxF "$shim_marker" "$cache_file"; then
        return 0  # a real get-pip.py, downloaded by hand
    fi
    mkdir -p "$(dirname "$cache_file")"
    cat >"$cache_file.tmp" <<PY
$shim_marker
# Written by tests/sanity.sh. ansible-test runs this as get-pip.py:
#   python quiet_pip.py --disable-pip-version-check pip==X --no-setuptools --no-wheel
"""Install pip into the running interpreter without downloading get-pip.py."""
import importlib.util
import subprocess
import sys

args = sys.argv[1:]
skip = {"--no-setuptools", "--no-wheel"}
pip_args = [arg for arg in args if arg not in skip]
had_setuptools = importlib.util.find_spec("setuptools") is not None

# ensurepip installs the pip (and, before Python 3.12, setuptools) wheels that
# ship with the interpreter; no network is involved.
subprocess.run([sys.executable, "-m", "ensurepip", "--default-pip"], check=True, stdout=subprocess.DEVNULL)
# That pip then installs what ansible-test asked for, from the package index.
subprocess.run([sys.executable, "-m", "pip", "install", "--upgrade", "--force-reinstall", *pip_args], check=True)
importlib.invalidate_caches()
if "--no-setuptools" in args and not had_setuptools and importlib.util.find_spec("setuptools") is not None:
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", "setuptools"], check=True)
PY
    mv -f "$cache_file.tmp" "$cache_file"
}

install_get_pip_shim

work=$(mktemp -d "${TMPDIR:-/tmp}/kvmlm-sanity.XXXXXX")
cleanup() {
    if [[ "${KVMLM_SANITY_KEEP:-0}" == 1 ]]; then
        echo "sanity.sh: kept $work" >&2
    else
        rm -rf -- "$work"
    fi
}
trap cleanup EXIT

dest="$work/ansible_collections/kvm/live_migration"
mkdir -p "$dest"

# Copy each file git lists. A path still in the index but deleted from the
# work tree is skipped: sanity checks what is on disk.
copied=0
while IFS= read -r -d '' path; do
    if [[ -e "$repo_root/$path" || -L "$repo_root/$path" ]]; then
        mkdir -p "$dest/$(dirname -- "$path")"
        cp -P -- "$repo_root/$path" "$dest/$path"
        copied=$((copied + 1))
    fi
done < <(git -C "$repo_root" ls-files -z --cached --others --exclude-standard --deduplicate)
echo "sanity.sh: laid out $copied files in $dest"

# The venv first on PATH: ansible-test resolves `python3.11` (the venv's
# version) there, and the private sanity venvs are then created from the same
# interpreter.
export PATH="$venv/bin:$PATH"
cd "$dest"
# ansible-test exits non-zero when any sanity test fails; set -e passes it on.
"$ansible_test" sanity --python "$python_version" --color no --venv "$@"
