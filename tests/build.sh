#!/usr/bin/env bash
# Build the collection artifact and check that nothing from the development
# tree leaks into it (tests, CI glue, benchmarks, lab state, venvs, caches).
#
# Usage: tests/build.sh [OUTPUT_DIR]
#   The tarball is written to OUTPUT_DIR when given (and kept), otherwise to a
#   temporary directory that is removed on exit.
# Environment:
#   KVMLM_VENV  venv holding ansible-core (default /opt/kvmlm/venv)
set -euo pipefail

repo_root=$(cd "$(dirname "$0")/.." && pwd -P)
venv=${KVMLM_VENV:-/opt/kvmlm/venv}
ansible_galaxy="$venv/bin/ansible-galaxy"

if [[ ! -x "$ansible_galaxy" ]]; then
    echo "build.sh: $ansible_galaxy not found; set KVMLM_VENV to a venv with ansible-core" >&2
    exit 2
fi

if [[ $# -ge 1 ]]; then
    out=$1
    mkdir -p "$out"
else
    out=$(mktemp -d "${TMPDIR:-/tmp}/kvmlm-build.XXXXXX")
    trap 'rm -rf -- "$out"' EXIT
fi

# ansible-galaxy reads galaxy.yml from the collection directory it is given;
# --force replaces a tarball of the same version left in OUTPUT_DIR.
"$ansible_galaxy" collection build --force --output-path "$out" "$repo_root"

shopt -s nullglob
tarballs=("$out"/kvm-live_migration-*.tar.gz)
shopt -u nullglob
if [[ ${#tarballs[@]} -ne 1 ]]; then
    echo "build.sh: expected one kvm-live_migration tarball in $out, found ${#tarballs[@]}" >&2
    exit 1
fi
tarball=${tarballs[0]}

members=$(tar -tzf "$tarball" | sed -e 's|^\./||' -e '/^$/d')

# Paths (relative to the collection root) that must never be shipped.
forbidden='^(tests|\.ci|benchmarks|extensions|lab-state|\.venv|\.ansible|\.git)(/|$)|^(DEVELOPERS\.md|pyproject\.toml|test-requirements\.txt|\.ansible-lint|\.yamllint)$|(^|/)(__pycache__|\.pytest_cache|\.ruff_cache)(/|$)|\.pyc$|\.tar\.gz$'
if leaked=$(grep -E "$forbidden" <<<"$members"); then
    echo "build.sh: $tarball contains paths that build_ignore should exclude:" >&2
    while IFS= read -r line; do
        printf '  %s\n' "$line"
    done <<<"$leaked" >&2
    exit 1
fi

for required in MANIFEST.json FILES.json meta/runtime.yml LICENSE; do
    if ! grep -qxF "$required" <<<"$members"; then
        echo "build.sh: $tarball lacks $required" >&2
        exit 1
    fi
done

files=$(tar -tvzf "$tarball" | grep -c '^-' || true)
echo "build.sh: $(basename "$tarball") OK: $files files ($(wc -l <<<"$members") entries)"
