"""Did a lab guest arrive intact? ``python guest_intact.py STATE HOST NAME [TIMEOUT_S]`` (run by lab.sh guest-intact).

Reads the guest's serial logs under STATE (each hypervisor's /var/log/libvirt/qemu). The guest
(tests/lab/guest/dirtier.c) stamps every page it writes and sweeps its memory every 2 s. It is intact
on HOST when HOST's log shows one boot that kept counting, two full sweeps beyond the last line any
other host logged, and no bad page, mismatch, panic, BUG or Oops. Prints one line and exits 0 when
intact, 1 with the reason when not.
"""

from __future__ import annotations

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
    boots = {line.boot for line in lines + elsewhere}
    if len(boots) > 1:
        return "damaged", f"{name} booted more than once: {sorted(boots)}"
    counters = [line.tick for line in lines]
    if counters != sorted(set(counters)):
        return "damaged", f"{name}'s counter on {host} went back: it restarted"
    before = max((line.swept for line in elsewhere), default=0)
    if not lines or lines[-1].swept < before + SWEEPS_WANTED:
        return "waiting", f"{name} on {host} has not verified its memory {SWEEPS_WANTED} times yet"
    last_elsewhere = max((line.tick for line in elsewhere), default=None)
    if last_elsewhere is not None and not 1 <= lines[0].tick - last_elsewhere <= MAX_TICK_GAP:
        return "damaged", f"{name}'s counter jumped on arrival: {last_elsewhere} -> {lines[0].tick}"
    return "intact", (f"{name} intact on {host}: boot {lines[0].boot}, ticks {lines[0].tick}..{lines[-1].tick}, "
                      f"{lines[-1].swept - before} full memory sweeps there, 0 bad pages")


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
