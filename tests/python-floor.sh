#!/usr/bin/env bash
# The managed hosts' Python floor, checked statically: what runs on a host (plugins/modules and
# plugins/module_utils) must run on Python 3.9 (RHEL 9's system Python; declared in tests/config.yml).
# vermin reads the standard library calls and language features each file needs and exits 1 when one needs
# more than 3.9 (zip(strict=), datetime.UTC, dataclass(slots=/kw_only=), match, ...).
#
# What vermin does not see is covered elsewhere: newer syntax and PEP 604/585 annotations without
# `from __future__ import annotations` by ruff (py39 per-file target and FA102, pyproject.toml); `X | Y` evaluated at
# run time (an alias, isinstance) only by running the module-side unit tests under 3.9 (tests/unit-pythons.sh).
# (vermin's union-types feature is not used: it flags every annotation, `from __future__ import annotations` or not.)
# Annotations are not evaluated by these files (no get_type_hints); --eval-annotations holds them to 3.9 all the same.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${KVMLM_VENV:-/opt/kvmlm/venv}
floor=3.9
cd "$repo"

# --violations: list only what breaks the target; with -t=3.9- the exit status is 1 when a file needs more.
# --no-parse-comments: a "# novermin" comment cannot silence a line that 3.9 would not run.
status=0
"$venv/bin/vermin" --no-tips --violations --eval-annotations --no-parse-comments -t="$floor-" \
    plugins/module_utils plugins/modules || status=$?
if [ "$status" -ne 0 ]; then
    echo "python-floor: plugins/modules and plugins/module_utils need more than Python $floor (above)" >&2
    exit "$status"
fi
echo "python-floor: plugins/modules and plugins/module_utils run on Python $floor"
