"""Draw one migration's convergence from the migrate module's result: what was left per pass, what the
downtime limit lets through at the measured transfer rate, the throttle, and the module's actions.

    python benchmarks/convergence_chart.py RESULT.json OUT.png [--title TEXT]

RESULT.json is what `migrate_result_file` (playbooks/migrate.yml) or the demo writes: {"migration": {...}}.
`bash benchmarks/convergence-chart.sh` runs a heavy guest through the demo and redraws docs/images/.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on the lab machine
import matplotlib.pyplot as plt

MIB = 1024 * 1024
ACTION_COLOURS = {"set_downtime": "tab:green", "auto_converge": "tab:orange", "post_copy": "tab:purple",
                  "wait": "tab:gray", "abort": "tab:red"}


def sampled_passes(timeline):
    """The passes the module measured (a pass that went by between two polls has no numbers)."""
    # pass 1 has no dirty rate yet, and QEMU then reports the limit itself as its expected downtime
    return [entry for entry in timeline if entry.get("sampled") and entry.get("transfer_rate_bps")
            and entry.get("expected_downtime_ms") is not None and entry.get("ratio") is not None]


def left_mib(entry):
    """What QEMU would still have to send if it stopped the guest now: its expected downtime at the pass's
    transfer rate. (``remaining_bytes`` at the last poll of a pass is nearly nothing: the pages the guest
    dirtied meanwhile join the count only at the next pass's start.)"""
    return entry["transfer_rate_bps"] * entry["expected_downtime_ms"] / 1000 / MIB


def fits_limit_mib(entry):
    """Data the downtime limit lets through at the pass's transfer rate: the pass can end below this line."""
    if not entry.get("transfer_rate_bps") or entry.get("downtime_limit_ms") is None:
        return None
    return entry["transfer_rate_bps"] * entry["downtime_limit_ms"] / 1000 / MIB


def draw(migration, title=None):
    """A matplotlib figure of one migration's passes and actions."""
    passes = sampled_passes(migration.get("timeline") or [])
    if not passes:
        raise ValueError("the result has no sampled pass to draw")
    seconds = [entry["time_ms"] / 1000 for entry in passes]
    figure, remaining_axis = plt.subplots(figsize=(9, 4.8), dpi=110)
    remaining_axis.plot(seconds, [left_mib(entry) for entry in passes], "o-", color="tab:blue",
                        label="memory left to send (MiB, QEMU's expected downtime x transfer rate)")
    for entry, second in zip(passes, seconds, strict=True):
        remaining_axis.annotate(str(entry["pass"]), (second, left_mib(entry)), fontsize=7,
                                textcoords="offset points", xytext=(0, 5), ha="center", color="tab:blue")
    limit = [fits_limit_mib(entry) for entry in passes]
    remaining_axis.step(seconds, [value if value is not None else float("nan") for value in limit], where="post",
                        color="tab:green", linestyle="--", label="what the downtime limit lets through (MiB)")
    remaining_axis.set_xlabel("time since the start (s), at each pass's last poll; numbers are passes")
    remaining_axis.set_ylabel("MiB (log scale)")
    remaining_axis.set_yscale("log")
    remaining_axis.text(0.01, 0.02, "the guest stops for the switch-over once the blue point falls below the "
                        "green line", transform=remaining_axis.transAxes, fontsize=7, color="dimgray")
    throttle_axis = remaining_axis.twinx()
    throttle_axis.plot(seconds, [entry.get("throttle_pct") or 0 for entry in passes], color="tab:orange", alpha=0.5,
                       drawstyle="steps-post", label="QEMU's throttle (%)")
    throttle_axis.set_ylim(0, 105)
    throttle_axis.set_ylabel("throttle %")
    _mark_actions(remaining_axis, migration.get("actions") or [])
    lines = remaining_axis.get_legend_handles_labels()
    more = throttle_axis.get_legend_handles_labels()
    remaining_axis.legend(lines[0] + more[0], lines[1] + more[1], loc="center", fontsize=7)
    remaining_axis.set_title(title or _summary(migration), fontsize=9)
    figure.tight_layout()
    return figure


def _mark_actions(axis, actions):
    for action in actions:
        if action.get("time_ms") is None:
            continue
        colour = ACTION_COLOURS.get(action["what"], "black")
        second = action["time_ms"] / 1000
        axis.axvline(second, color=colour, linestyle=":", linewidth=1)
        label = action["what"] if action.get("value") is None else f"{action['what']}={action['value']}"
        axis.annotate(label, (second, 0.5), xycoords=("data", "axes fraction"), xytext=(2, 0),
                      textcoords="offset points", rotation=90, fontsize=7, color=colour, va="center")


def _summary(migration):
    parts = [f"{migration.get('status')} on {migration.get('owner')}", f"strategy {migration.get('strategy')}"]
    if migration.get("total_time_ms") is not None:
        parts.append(f"{migration['total_time_ms'] / 1000:.1f} s")
    if migration.get("downtime_ms") is not None:
        parts.append(f"downtime {migration['downtime_ms']} ms")
    if migration.get("passes") is not None:
        parts.append(f"{migration['passes']} passes")
    return ", ".join(parts)


def draw_policies(curves, title):
    """Memory left over time, one line per policy: {policy: [(s, MiB left)]} (the benchmark's sampler)."""
    figure, axis = plt.subplots(figsize=(9, 4.8), dpi=110)
    for policy, series in sorted(curves.items()):
        seconds, left = zip(*series, strict=True)
        axis.plot(seconds, left, label=policy, linewidth=1.8 if policy.startswith("ours") else 1.0)
    axis.set_xlabel("time since the start (s)")
    axis.set_ylabel("memory left to send (MiB), every 0.5 s")
    axis.set_ylim(bottom=0)
    axis.legend(fontsize=8, ncol=2)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure


def draw_lost_work(lost):
    """The guest's work lost per policy and workload: {(workload, policy): seconds or None}."""
    workloads = sorted({workload for workload, _policy in lost})
    policies = sorted({policy for _workload, policy in lost})
    figure, axis = plt.subplots(figsize=(10, 4.8), dpi=110)
    width = 0.8 / max(1, len(policies))
    for index, policy in enumerate(policies):
        values = [lost.get((workload, policy)) for workload in workloads]
        axis.bar([position + index * width for position in range(len(workloads))],
                 [value or 0 for value in values], width, label=policy)
    axis.set_xticks([position + 0.4 - width / 2 for position in range(len(workloads))], workloads)
    axis.set_ylabel("guest work lost (s of its own work; median)")
    axis.set_title("What the guest paid: work lost to throttling and post-copy's page faults", fontsize=9)
    axis.legend(fontsize=7, ncol=3)
    figure.tight_layout()
    return figure


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", type=Path, help="the module's result as JSON ({'migration': ...})")
    parser.add_argument("output", type=Path, help="the PNG to write")
    parser.add_argument("--title")
    args = parser.parse_args(argv)
    loaded = json.loads(args.result.read_text())
    figure = draw(loaded.get("migration", loaded), args.title)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output)
    print(f"convergence_chart: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
