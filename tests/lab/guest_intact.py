"""Did a lab guest arrive intact? ``python guest_intact.py STATE HOST NAME [TIMEOUT_S]`` (run by lab.sh guest-intact).

Reads the guest's serial logs under STATE (each hypervisor's /var/log/libvirt/qemu). The guest
(tests/lab/guest/dirtier.c) stamps every page it writes and sweeps its memory every 2 s. It is intact
on HOST when HOST's log shows one boot that kept counting, two full sweeps beyond the last line any
other host logged, and no bad page, mismatch, panic, BUG or Oops. Prints one line and exits 0 when
intact, 1 with the reason when not.
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from pathlib import Path
from typing import NamedTuple

TICK = re.compile(r"KVMLM boot=(\w+) tick=(\d+) dirtied=\d+ swept=(\d+) bad=(\d+)")
DAMAGE = re.compile(r"Kernel panic|BUG: |Oops: |general protection fault|KVMLM error|KVMLM mismatch.*")
SWEEPS_WANTED = 2
MAX_TICK_GAP = 3  # ticks the switch-over may swallow


class Line(NamedTuple):
    boot: str
    tick: int
    swept: int
    bad: int


def serial_lines(text):
    """The counter lines of a guest's serial log, and the first sign of damage in it (a match, or None)."""
    lines = [Line(boot, int(tick), int(swept), int(bad)) for boot, tick, swept, bad in TICK.findall(text)]
    return lines, DAMAGE.search(text)


def ticks(path):
    """``serial_lines`` of one log file, with the damage as text."""
    lines, damage = serial_lines(path.read_text(errors="replace") if path.exists() else "")
    return lines, damage.group(0) if damage else None


def verdict(state, host, name):
    """(intact | damaged | waiting, what was found)."""
    here = Path(state) / host / "log" / "qemu" / f"{name}-serial.log"
    lines, damage = ticks(here)
    if damage or any(line.bad for line in lines):
        return "damaged", f"{name} on {host} is damaged: {damage or lines[-1]}"
    elsewhere = [line for log in sorted(Path(state).glob(f"*/log/qemu/{name}-serial.log")) if log != here
                 for line in ticks(log)[0]]
    if not lines:
        return "waiting", f"{name} has printed nothing on {host} yet"
    problem, arrived = journey_problem(lines, elsewhere, host)
    if problem:
        return "damaged", f"{name}: {problem}"
    before = max((line.swept for line in lines + elsewhere if line.tick < arrived), default=0)
    if lines[-1].swept < before + SWEEPS_WANTED:
        return "waiting", f"{name} on {host} has not verified its memory {SWEEPS_WANTED} times yet"
    first = next(line for line in lines if line.tick >= arrived)
    return "intact", (f"{name} intact on {host}: boot {first.boot}, ticks {first.tick}..{lines[-1].tick} since it "
                      f"arrived, {lines[-1].swept - before} full memory sweeps there, 0 bad pages")


def journey_problem(here, elsewhere, host):
    """(what is wrong: more than one boot, a restart on ``host``, or a bad arrival; the tick it last arrived at)."""
    boots = {line.boot for line in here + elsewhere}
    if len(boots) > 1:
        return f"booted more than once: {sorted(boots)}", None
    counters = [line.tick for line in here]
    if counters != sorted(set(counters)):
        return f"counter on {host} went back: it restarted", None
    return arrivals(here, elsewhere)


def arrivals(here, elsewhere):
    """(what is wrong with the guest's journey, or None; the first tick of its last stay on this host).

    The journey is every host's lines in counter order: a counter printed on two hosts means two copies ran, and
    each move to another host may swallow at most MAX_TICK_GAP ticks (the switch-over). A round trip (there and
    back) is a journey too.
    """
    journey = sorted([(line.tick, True) for line in here] + [(line.tick, False) for line in elsewhere])
    arrived = journey[0][0]
    for (earlier, was_here), (later, is_here) in itertools.pairwise(journey):
        if later == earlier:
            return f"counter {later} was printed on two hosts: two copies ran", arrived
        if was_here != is_here:
            if not 1 <= later - earlier <= MAX_TICK_GAP:
                return f"counter jumped on arrival: {earlier} -> {later}", arrived
            arrived = later
    if not journey[-1][1]:
        return "last lines are on another host: it does not run here", arrived
    return None, arrived


def main(state, host, name, timeout_s="30"):
    deadline = time.monotonic() + float(timeout_s)
    while True:
        outcome, message = verdict(state, host, name)
        if outcome == "intact":
            print(message)
            return 0
        if outcome == "damaged" or time.monotonic() > deadline:
            print(message, file=sys.stderr)
            return 1
        time.sleep(0.5)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
