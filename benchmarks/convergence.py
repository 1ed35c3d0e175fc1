"""Convergence benchmark: plain libvirt against kvm.live_migration's policy, in the two-host lab.

Every run starts a fresh 512 MiB guest on hv1, migrates it to hv2 at a 64 MiB/s cap, and
records the total time, the downtime, the data sent and the passes. Times are also given as a
multiple of the workload's first pass (data sent in pass 1 / bandwidth, measured by sampling the
job every 0.1 s during the plain libvirt run). Policies:

  libvirt       migrateToURI3 peer-to-peer with libvirt's defaults (what ``virsh migrate --live --p2p`` does)
  libvirt-ac    the same with auto-converge (QEMU's throttle, 20 % + 10 % per step)
  ours-ac       kvm.live_migration.migrate's engine, auto-converge permitted, post-copy not
  ours-pc       the engine with post-copy permitted too

Then the transport rows: one idle 1 GiB guest, no bandwidth cap, moved by the engine over tcp, tls (QEMU's
TLS, the certificates lab.sh up issued with the hypervisor role), ssh (tunnelled through libvirt's
connection) and tls with 4 parallel connections, with the throughput and the ratio tls / tcp
(target: >= 0.8).

Run it as root on the lab machine: ``bash benchmarks/convergence.sh`` (brings the lab up and
down). It prints one table and the issue's targets with PASS/FAIL, and exits 1 if a target fails.
Inside a hypervisor the same file runs one migration: ``convergence.py --one POLICY NAME BOUND_S``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAB_SH = REPO / "tests" / "lab" / "lab.sh"
VENV = Path(os.environ.get("KVMLM_VENV", "/opt/kvmlm/venv"))
MIB = 1024 * 1024
BANDWIDTH_MIB = 64
MAX_DOWNTIME_MS = 500
DEST_URI = "qemu+ssh://hv2/system"
SAMPLE_S = 0.1

# name: (memory MiB, working set MiB, pages/s (-1 flat out), MiB filled at boot)
WORKLOADS = {
    "idle": (512, 384, 0, 384),
    "moderate": (512, 256, int(os.environ.get("KVMLM_BENCH_MODERATE_RATE", "11000")), 384),
    "heavy": (512, 384, 40000, 384),
    "hot-set": (512, int(os.environ.get("KVMLM_BENCH_HOT_MIB", "32")), -1, 384),
}
# Plain libvirt runs that never converge are cut off here (aborted, guest stays on hv1).
BOUND_S = {"libvirt": 60, "libvirt-ac": 200, "ours-ac": 200, "ours-pc": 200}
POLICIES = ("libvirt", "libvirt-ac", "ours-ac", "ours-pc")
# The transport rows: transport[-pN] (N parallel connections), the idle 1 GiB guest, no cap.
TRANSPORT_WORKLOAD = (1024, 768, 0, 768)  # 896 MiB left the guest kernel short: "deadlocked on memory"
TRANSPORTS = ("tcp", "tls", "ssh", "tls-p4")
TRANSPORT_BOUND_S = 120
TLS_TARGET = 0.8


# -- one migration, inside hv1 ------------------------------------------------------------------


class Sampler(threading.Thread):
    """Reads the job every 0.1 s on its own connection: pass 1's data and the highest throttle."""

    def __init__(self, libvirt, name):
        super().__init__(daemon=True)
        self.conn = libvirt.open("qemu:///system")
        self.domain = self.conn.lookupByName(name)
        self.libvirt = libvirt
        self.stop = threading.Event()
        self.pass1_bytes = 0
        self.max_throttle = 0
        self.passes = 0

    def run(self):
        while not self.stop.wait(SAMPLE_S):
            try:
                stats = self.domain.jobStats()
            except self.libvirt.libvirtError:
                return
            iteration = stats.get("memory_iteration", 0)
            self.passes = max(self.passes, iteration)
            if iteration == 1:
                self.pass1_bytes = max(self.pass1_bytes, stats.get("memory_processed", 0))
            self.max_throttle = max(self.max_throttle, stats.get("auto_converge_throttle", 0))


def plain_libvirt(libvirt, name, auto_converge, bound_s):
    source = libvirt.open("qemu:///system")
    monitor = libvirt.open("qemu:///system")
    destination = libvirt.open(DEST_URI)
    domain, watched = source.lookupByName(name), monitor.lookupByName(name)
    flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER | libvirt.VIR_MIGRATE_PERSIST_DEST
             | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
    if auto_converge:
        flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
    error = []

    def migrate():
        try:
            domain.migrateToURI3(DEST_URI, {libvirt.VIR_MIGRATE_PARAM_BANDWIDTH: BANDWIDTH_MIB}, flags)
        except libvirt.libvirtError as failure:
            error.append(str(failure))

    started = time.monotonic()
    thread = threading.Thread(target=migrate, daemon=True)
    thread.start()
    thread.join(bound_s)
    if thread.is_alive():
        watched.abortJob()
        thread.join(60)
        return {"outcome": f"not done in {bound_s} s", "time_ms": int((time.monotonic() - started) * 1000)}
    if error:
        return {"outcome": "failed", "error": error[0], "time_ms": int((time.monotonic() - started) * 1000)}
    stats = destination.lookupByName(name).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    return {"outcome": "completed", "time_ms": stats.get("time_elapsed"), "downtime_ms": stats.get("downtime"),
            "data_bytes": stats.get("data_processed"), "passes": stats.get("memory_iteration")}


def ours(name, allow_post_copy, bound_s, transport="tcp", bandwidth_mib=BANDWIDTH_MIB, parallel=None):
    # Only the worker inside a hypervisor imports the engine (from the PYTHONPATH the controller passes).
    from ansible_collections.kvm.live_migration.plugins.module_utils.connection import Hypervisor  # noqa: PLC0415
    from ansible_collections.kvm.live_migration.plugins.module_utils.errors import MigrationError  # noqa: PLC0415
    from ansible_collections.kvm.live_migration.plugins.module_utils.migration import MigrationRunner  # noqa: PLC0415
    from ansible_collections.kvm.live_migration.plugins.module_utils.request import MigrationRequest  # noqa: PLC0415

    request = MigrationRequest(name=name, dest_uri=DEST_URI, transport=transport, allow_insecure=transport == "tcp",
                               bandwidth_mib=bandwidth_mib, max_downtime_ms=MAX_DOWNTIME_MS, timeout_s=bound_s,
                               allow_post_copy=allow_post_copy, parallel_connections=parallel)
    try:
        with (Hypervisor("qemu:///system") as source, Hypervisor("qemu:///system", events=True) as monitor,
              Hypervisor(DEST_URI) as destination):
            result = MigrationRunner(source, monitor, destination, request).run()
    except MigrationError as error:
        return {"outcome": "failed", "error": str(error)}
    actions = [f"{action['what']}@{action['pass']}" + ("" if action["value"] is None else f"={action['value']}")
               for action in result.actions]
    return {"outcome": result.status, "time_ms": result.total_time_ms, "downtime_ms": result.downtime_ms,
            "data_bytes": result.data_sent_bytes, "passes": result.passes, "strategy": result.strategy,
            "actions": actions, "prediction": (result.prediction or {}).get("strategy"),
            "predicted_ratio": (result.prediction or {}).get("ratio")}


def run_one(policy, name, bound_s):
    import libvirt  # noqa: PLC0415 - the worker runs inside a hypervisor, the controller needs no binding

    libvirt.registerErrorHandler(lambda _context, _error: None, None)
    sampler = Sampler(libvirt, name)
    sampler.start()
    if policy.startswith("libvirt"):
        outcome = plain_libvirt(libvirt, name, policy == "libvirt-ac", bound_s)
    elif policy.startswith("transport-"):
        transport, _dash, parallel = policy.removeprefix("transport-").partition("-p")
        outcome = ours(name, False, bound_s, transport=transport, bandwidth_mib=0,
                       parallel=int(parallel) if parallel else None)
    else:
        outcome = ours(name, policy == "ours-pc", bound_s)
    sampler.stop.set()
    sampler.join(5)
    outcome.update(pass1_bytes=sampler.pass1_bytes, max_throttle=sampler.max_throttle)
    outcome.setdefault("passes", sampler.passes)
    print(json.dumps(outcome))


# -- the matrix, from the controller ---------------------------------------------------------------


def lab(*args, timeout=600):
    return subprocess.run(["bash", str(LAB_SH), *args], check=True, capture_output=True, text=True,
                          timeout=timeout).stdout


def remove_guest(name):
    for host in ("hv1", "hv2"):
        subprocess.run(["bash", str(LAB_SH), "exec", host, "sh", "-c",
                        f"virsh -q destroy {name}; virsh -q undefine {name}"], capture_output=True, check=False)


def other_qemu_processes():
    found = subprocess.run(["pgrep", "-c", "-f", "qemu-system"], capture_output=True, text=True, check=False)
    return int(found.stdout.strip() or 0)


def migrate_once(workload, policy, index, bound_s=None):
    name = f"bench{index}"
    memory, working_set, rate, touch = TRANSPORT_WORKLOAD if workload == "idle-1g" else WORKLOADS[workload]
    bound_s = bound_s or BOUND_S[policy]
    lab("guest-start", "hv1", name, str(memory), str(working_set), str(rate), str(touch))
    time.sleep(3)  # let the workload reach its steady rate
    collections = subprocess.run(["bash", str(REPO / "tests" / "lab" / "collection-path.sh")], check=True,
                                 capture_output=True, text=True).stdout.strip()
    try:
        output = lab("exec", "hv1", "env", f"PYTHONPATH={collections}", str(VENV / "bin" / "python"), __file__,
                     "--one", policy, name, str(bound_s), timeout=bound_s + 180)
        run = json.loads(output.strip().splitlines()[-1])
        if run["outcome"] == "completed":
            run["intact"] = arrived_intact(name)
        return run
    finally:
        remove_guest(name)


def arrived_intact(name):
    """Whether the guest verified its memory twice on hv2 with no bad page, crash or restart
    (``lab.sh guest-intact``: the lab guest stamps every page it writes, tests/lab/guest/dirtier.c)."""
    return subprocess.run(["bash", str(LAB_SH), "guest-intact", "hv2", name], capture_output=True,
                          check=False).returncode == 0


def first_pass_s(runs, workload):
    """Pass 1's data / bandwidth, from the plain libvirt run (sampled every 0.1 s)."""
    reference = runs.get((workload, "libvirt"), {}).get("pass1_bytes") or max(
        run.get("pass1_bytes", 0) for (name, _policy), run in runs.items() if name == workload)
    return reference / (BANDWIDTH_MIB * MIB) if reference else None


def table(runs):
    header = (f"{'workload':<9} {'policy':<11} {'outcome':<17} {'time s':>7} {'x pass1':>7} {'downtime':>8} "
              f"{'sent MiB':>8} {'passes':>6} {'thr %':>5}  strategy / actions")
    lines = [header, "-" * len(header)]
    for (workload, policy), run in runs.items():
        first = first_pass_s(runs, workload)
        seconds = run.get("time_ms", 0) / 1000
        ratio = f"{seconds / first:.2f}" if first else "-"
        downtime = "-" if run.get("downtime_ms") is None else f"{run['downtime_ms']} ms"
        sent = "-" if run.get("data_bytes") is None else f"{run['data_bytes'] / MIB:.0f}"
        crashed = "GUEST DAMAGED ON HV2 (crash or memory mismatch)" if run.get("intact") is False else None
        notes = " ".join(filter(None, [run.get("strategy"), " ".join(run.get("actions", [])), run.get("error"),
                                       crashed]))
        lines.append(f"{workload:<9} {policy:<11} {run['outcome']:<17} {seconds:>7.1f} {ratio:>7} {downtime:>8} "
                     f"{sent:>8} {run.get('passes') or 0:>6} {run.get('max_throttle', 0):>5}  {notes}")
    return "\n".join(lines)


def targets(runs):
    """(description, measured, limit, passed) of the issue's targets."""
    checks = []

    def time_s(workload, policy):
        run = runs.get((workload, policy))
        return None if run is None or run["outcome"] != "completed" else run["time_ms"] / 1000

    def bound(workload, policy):
        return runs[(workload, policy)]["time_ms"] / 1000 if (workload, policy) in runs else None

    idle_first = first_pass_s(runs, "idle")
    checks.append(("idle, ours-ac: time <= 1.1 x first pass", time_s("idle", "ours-ac"),
                   idle_first and 1.1 * idle_first))
    for workload in ("heavy", "hot-set"):
        checks.append((f"{workload}, ours-ac: time <= 0.4 x libvirt auto-converge", time_s(workload, "ours-ac"),
                       bound(workload, "libvirt-ac") and 0.4 * bound(workload, "libvirt-ac")))
    heavy_first = first_pass_s(runs, "heavy")
    checks.append(("heavy, ours-pc: time <= 1.2 x first pass", time_s("heavy", "ours-pc"),
                   heavy_first and 1.2 * heavy_first))
    checks.append(("moderate, ours-pc: time <= 0.75 x plain libvirt", time_s("moderate", "ours-pc"),
                   bound("moderate", "libvirt") and 0.75 * bound("moderate", "libvirt")))
    results = [(text, measured, limit, measured is not None and limit is not None and measured <= limit)
               for text, measured, limit in checks]
    for (workload, policy), run in runs.items():
        if policy.startswith("ours") and run["outcome"] == "completed":
            downtime = run.get("downtime_ms")
            results.append((f"{workload}, {policy}: downtime <= {MAX_DOWNTIME_MS} ms", downtime, MAX_DOWNTIME_MS,
                            downtime is not None and downtime <= MAX_DOWNTIME_MS))
    return results


def transport_rows(transports, first_index):
    """{transport: run} for the idle 1 GiB guest, uncapped, over each transport."""
    runs = {}
    for offset, transport in enumerate(transports):
        print(f"bench: idle 1 GiB / {transport} ...", file=sys.stderr, flush=True)
        runs[transport] = migrate_once("idle-1g", f"transport-{transport}", first_index + offset, TRANSPORT_BOUND_S)
    return runs


def throughput_mib_s(run):
    if run.get("outcome") != "completed" or not run.get("time_ms"):
        return None
    return run["data_bytes"] / MIB / (run["time_ms"] / 1000)


def transport_table(runs):
    header = (f"{'transport':<10} {'outcome':<12} {'time s':>7} {'sent MiB':>8} {'MiB/s':>7} {'x tcp':>6} "
              f"{'downtime':>8}")
    lines = [header, "-" * len(header)]
    tcp = throughput_mib_s(runs.get("tcp", {}))
    for transport, run in runs.items():
        speed = throughput_mib_s(run)
        relative = f"{speed / tcp:.2f}" if speed and tcp else "-"
        sent = "-" if run.get("data_bytes") is None else f"{run['data_bytes'] / MIB:.0f}"
        downtime = "-" if run.get("downtime_ms") is None else f"{run['downtime_ms']} ms"
        damaged = " GUEST DAMAGED ON HV2" if run.get("intact") is False else ""
        lines.append(f"{transport:<10} {run['outcome']:<12} {run.get('time_ms', 0) / 1000:>7.1f} {sent:>8} "
                     f"{'-' if speed is None else f'{speed:.0f}':>7} {relative:>6} {downtime:>8}"
                     f"{damaged}{' ' + run['error'] if run.get('error') else ''}")
    return "\n".join(lines)


def transport_targets(runs):
    tcp = throughput_mib_s(runs.get("tcp", {}))
    results = []
    for transport in (name for name in runs if name.startswith("tls")):  # tls, and tls-pN: the lever if CPU-bound
        speed = throughput_mib_s(runs[transport])
        ratio = speed / tcp if speed and tcp else None
        results.append((f"idle 1 GiB, no cap: {transport} >= {TLS_TARGET} x tcp throughput", ratio, TLS_TARGET,
                        ratio is not None and ratio >= TLS_TARGET))
    for transport, run in runs.items():
        arrived = run.get("outcome") == "completed" and run.get("intact") is True
        results.append((f"idle 1 GiB over {transport}: completed, guest intact on hv2", float(arrived), 1.0, arrived))
    return results


def report(results):
    failed = 0
    for text, measured, limit, passed in results:
        failed += not passed
        shown = "-" if measured is None else f"{measured:.2f}" if measured < 10 else f"{measured:.1f}"  # noqa: PLR2004
        shown_limit = "-" if limit is None else f"{limit:.2f}" if limit < 10 else f"{limit:.1f}"  # noqa: PLR2004
        print(f"{'PASS' if passed else 'FAIL'}  {text}: {shown} (limit {shown_limit})")
    return failed


def main_matrix(workloads, policies, transports):
    if os.geteuid() != 0:
        sys.exit("run as root: the lab needs namespaces and libvirtd")
    if other_qemu_processes():
        sys.exit("other QEMU processes are running: the benchmark needs the machine to itself")
    runs = {}
    migrate_once("idle", "libvirt", 0)  # warm-up: the first migration after the lab comes up is slower
    index = 1
    for workload in workloads:
        for policy in policies:
            print(f"bench: {workload} / {policy} ...", file=sys.stderr, flush=True)
            runs[(workload, policy)] = migrate_once(workload, policy, index)
            index += 1
    transport_runs = transport_rows(transports, index)
    failed = 0
    if runs:
        print(f"512 MiB guests, hv1 -> hv2, {BANDWIDTH_MIB} MiB/s cap, budget {MAX_DOWNTIME_MS} ms for ours "
              "(libvirt's default limit is 300 ms)")
        print(table(runs))
        print()
        failed += report(targets(runs))
    if transport_runs:
        print()
        print("Transports: idle 1 GiB guest (768 MiB touched), hv1 -> hv2, no bandwidth cap, the engine (ours-ac)")
        print(transport_table(transport_runs))
        print()
        failed += report(transport_targets(transport_runs))
    Path(os.environ.get("KVMLM_BENCH_RESULT", "/var/tmp/kvmlm-convergence.json")).write_text(
        json.dumps({**{f"{w}/{p}": run for (w, p), run in runs.items()},
                    **{f"idle-1g/{t}": run for t, run in transport_runs.items()}}, indent=1))
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--one", nargs=3, metavar=("POLICY", "NAME", "BOUND_S"))
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--transports", default=",".join(TRANSPORTS),
                        help="transport rows to run (tcp, tls, ssh, tls-pN); empty for none")
    args = parser.parse_args()
    if args.one:
        policy, name, bound_s = args.one
        run_one(policy, name, int(bound_s))
        return 0
    lists = [list(filter(None, value.split(","))) for value in (args.workloads, args.policies, args.transports)]
    return main_matrix(*lists)


if __name__ == "__main__":
    sys.exit(main())
