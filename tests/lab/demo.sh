#!/usr/bin/env bash
# The main job, end to end on one Debian 12 machine (as root): install what is needed, bring up
# the two-hypervisor lab, start a guest on hv1 that keeps dirtying memory, live-migrate it to hv2
# with playbooks/migrate.yml, print the result, check that the guest runs on with its memory intact
# (its own stamp check, swept twice on hv2), and tear the lab down again.
#
# Guest workload (override with the environment): KVMLM_DEMO_DIRTY_MIB MiB working set,
# KVMLM_DEMO_PAGES_PER_S random pages rewritten per second, KVMLM_DEMO_BANDWIDTH MiB/s cap.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
export KVMLM_VENV=${KVMLM_VENV:-/opt/kvmlm/venv}
lab="$repo/tests/lab/lab.sh"
dirty_mib=${KVMLM_DEMO_DIRTY_MIB:-256}
pages_per_s=${KVMLM_DEMO_PAGES_PER_S:-4000}
bandwidth=${KVMLM_DEMO_BANDWIDTH:-64}
result_file=${KVMLM_DEMO_RESULT:-$repo/migration-result.json}

bash "$repo/tests/install-deps.sh"
"$lab" down >/dev/null 2>&1 || true
trap '"$lab" down' EXIT
"$lab" up

echo "demo: starting guest 'demo' on hv1 (512 MiB, rewriting $pages_per_s pages/s of $dirty_mib MiB)"
"$lab" guest-start hv1 demo 512 "$dirty_mib" "$pages_per_s"

echo "demo: migrating 'demo' from hv1 to hv2 at $bandwidth MiB/s over TLS (lab.sh up ran prepare_hosts)"
PATH="$KVMLM_VENV/bin:$PATH" ANSIBLE_COLLECTIONS_PATH=$(bash "$repo/tests/lab/collection-path.sh") \
    ansible-playbook -i "$("$lab" inventory)" "$repo/playbooks/migrate.yml" \
    -e migrate_guest=demo -e migrate_source=hv1 -e migrate_destination=hv2 \
    -e "migrate_bandwidth=$bandwidth" \
    -e "migrate_result_file=$result_file"

echo "demo: guests per hypervisor after the migration:"
for host in hv1 hv2; do
    printf '  %s: %s\n' "$host" "$("$lab" exec "$host" virsh -q list --name | xargs)"
done
"$KVMLM_VENV/bin/python" - "$result_file" <<'PY'
import json
import sys

migration = json.load(open(sys.argv[1]))["migration"]
print(f"demo: full result in {sys.argv[1]}")
print(f"{'pass':>4} {'time ms':>8} {'remaining MiB':>14} {'dirty MiB/s':>12} {'sent MiB/s':>11} {'ratio':>6}")
for entry in migration["timeline"]:
    if not entry["sampled"]:  # the pass went by between two polls
        when = "-" if entry["time_ms"] is None else entry["time_ms"]
        print(f"{entry['pass']:>4} {when:>8} {'(between polls)':>14}")
        continue
    ratio = "-" if entry["ratio"] is None else f"{entry['ratio']:.2f}"
    print(f"{entry['pass']:>4} {entry['time_ms']:>8} {entry['remaining_bytes'] / 2**20:>14.1f} "
          f"{entry['dirty_rate_bps'] / 2**20:>12.1f} {entry['transfer_rate_bps'] / 2**20:>11.1f} {ratio:>6}")
print(f"status={migration['status']} owner={migration['owner']} transport={migration['transport']} total={migration['total_time_ms']} ms "
      f"downtime={migration['downtime_ms']} ms sent={migration['data_sent_bytes'] / 2**20:.0f} MiB "
      f"passes={migration['passes']}")
PY
# The guest stamps every page it writes and sweeps its memory every 2 s (tests/lab/guest/dirtier.c).
intact=$("$lab" guest-intact hv2 demo)
echo "demo: $intact"
