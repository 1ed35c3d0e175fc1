"""The policies the convergence benchmark compares kvm.live_migration with, re-implemented from their published
algorithms and defaults (../shared/anchors.md summarises them; no code is copied). Each is pure: it reads one poll
of libvirt's job statistics and returns what to do; the benchmark's worker applies it to a real migration.

Actions: ("downtime", ms), ("post_copy", why), ("abort", why).
"""

from __future__ import annotations

from dataclasses import dataclass, field

GIB = 1024**3


@dataclass(frozen=True)
class Reading:
    """One poll of a running migration job."""

    elapsed_s: float
    iteration: int
    remaining_bytes: int


@dataclass
class Anchor:
    """What every anchor shares: how often it polls, what it arms at the start, and its first downtime limit
    (None leaves QEMU's 300 ms)."""

    name: str
    poll_s: float
    auto_converge: bool = False
    post_copy: bool = False
    initial_downtime_ms: int | None = None

    def step(self, reading):  # pragma: no cover - every anchor has its own
        raise NotImplementedError


@dataclass
class LibvirtAutoConverge(Anchor):
    """``virsh migrate --live --p2p --auto-converge``: QEMU's throttle (20 % + 10 % per step), nothing else."""

    name: str = "libvirt-ac"
    poll_s: float = 1.0
    auto_converge: bool = True

    def step(self, reading):
        return []


@dataclass
class KubeVirt(Anchor):
    """KubeVirt's defaults (pkg/virt-launcher/virtwrap/live-migration-source.go, the migration monitor): libvirt's
    defaults, polled every 400 ms; aborted when the remaining data has reached no new low for ``progressTimeout``
    (150 s) or the migration outlives ``completionTimeoutPerGiB`` (150 s per GiB); post-copy at the completion
    deadline instead when ``allowPostCopy`` is set."""

    name: str = "kubevirt"
    poll_s: float = 0.4
    memory_bytes: int = GIB
    progress_timeout_s: float = 150
    completion_per_gib_s: float = 150
    lowest: int | None = None
    lowest_at_s: float = 0.0
    switched: bool = False

    def step(self, reading):
        if self.lowest is None or reading.remaining_bytes < self.lowest:
            self.lowest, self.lowest_at_s = reading.remaining_bytes, reading.elapsed_s
        if self.switched:
            return []
        if reading.elapsed_s - self.lowest_at_s > self.progress_timeout_s:
            return [("abort", f"no new low of the remaining data for {self.progress_timeout_s:.0f} s")]
        completion_s = self.completion_per_gib_s * self.memory_bytes / GIB
        if reading.elapsed_s > completion_s:
            if self.post_copy:
                self.switched = True
                return [("post_copy", f"completion timeout {completion_s:.0f} s")]
            return [("abort", f"completion timeout {completion_s:.0f} s")]
        return []


@dataclass
class Nova(Anchor):
    """OpenStack Nova's libvirt driver (nova/virt/libvirt/migration.py: downtime_steps,
    should_switch_to_postcopy; driver.py: _live_migration_monitor) with its defaults: polled every 0.5 s, the
    downtime ramped in 10 steps to 500 ms, one step per 75 s per GiB of data (at least 2 GiB), aborted after the
    completion timeout (800 s per GiB of data); with ``live_migration_permit_post_copy``, post-copy as soon as a
    poll after the first pass finds that the remaining data fell by less than 10 % since the poll before."""

    name: str = "nova"
    poll_s: float = 0.5
    memory_bytes: int = GIB
    max_downtime_ms: int = 500
    steps: int = 10
    delay_per_gib_s: float = 75
    completion_per_gib_s: float = 800
    previous_remaining: int = 0
    ramp: list = field(default_factory=list)
    switched: bool = False

    def __post_init__(self):
        data_gib = max(2.0, self.memory_bytes / GIB)
        base = self.max_downtime_ms // self.steps
        offset = (self.max_downtime_ms - base) / self.steps
        delay_s = self.delay_per_gib_s * data_gib
        self.ramp = [(delay_s * i, int(base + offset * i)) for i in range(self.steps + 1)]
        self.initial_downtime_ms = self.ramp[0][1]
        self.ramp = self.ramp[1:]
        self.completion_s = self.completion_per_gib_s * data_gib

    def step(self, reading):
        actions = []
        if reading.elapsed_s > self.completion_s and not self.switched:
            return [("abort", f"completion timeout {self.completion_s:.0f} s")]
        while self.ramp and reading.elapsed_s > self.ramp[0][0]:
            actions.append(("downtime", self.ramp.pop(0)[1]))
        if self.post_copy and not self.switched and self._progress_below_10_pct(reading):
            self.switched = True
            actions.append(("post_copy", "less than 10 % progress since the last poll"))
        self.previous_remaining = reading.remaining_bytes
        return actions

    def _progress_below_10_pct(self, reading):
        if self.previous_remaining <= 0 or reading.iteration <= 1:
            return False
        progress_pct = round(100 * (self.previous_remaining - reading.remaining_bytes) / self.previous_remaining)
        return progress_pct < 10  # noqa: PLR2004 - Nova's rule


# oVirt's engine policies (packaging/dbscripts/upgrade, the migration policies' convergence schedules): each item
# is (limit, action, value); an item applies once the pass number exceeds its limit, -1 at the next chance.
OVIRT_MINIMAL_DOWNTIME = ((1, "downtime", 150), (2, "downtime", 200), (3, "downtime", 300), (4, "downtime", 400),
                          (6, "downtime", 500), (-1, "abort", None))
OVIRT_POST_COPY = ((1, "downtime", 150), (2, "downtime", 200), (-1, "post_copy", None), (-1, "abort", None))


@dataclass
class OVirt(Anchor):
    """VDSM's migration monitor (vdsm/virt/migration.py, MonitorThread): auto-converge on, downtime 100 ms, a poll
    every 10 s; a poll that finds a new pass applies the schedule's next item if the pass number exceeds its
    limit, one item per poll."""

    name: str = "ovirt-minimal"
    poll_s: float = 10.0
    auto_converge: bool = True
    initial_downtime_ms: int | None = 100
    schedule: tuple = OVIRT_MINIMAL_DOWNTIME
    last_iteration: int = 0

    def __post_init__(self):
        self.pending = list(self.schedule)
        self.post_copy = any(action == "post_copy" for _limit, action, _value in self.schedule)

    def step(self, reading):
        if reading.iteration <= self.last_iteration or not self.pending:
            return []
        self.last_iteration = reading.iteration
        limit, action, value = self.pending[0]
        if limit >= reading.iteration:
            return []
        self.pending.pop(0)
        if action == "downtime":
            return [("downtime", value)]
        return [(action, f"schedule item after pass {reading.iteration}")]


@dataclass
class Proxmox(Anchor):
    """Proxmox VE (PVE/QemuMigrate.pm, phase2): auto-converge on, downtime 100 ms, a poll every second; after more
    than 5 polls in which the remaining data did not fall, the downtime limit doubles. No overall timeout."""

    name: str = "proxmox"
    poll_s: float = 1.0
    auto_converge: bool = True
    initial_downtime_ms: int | None = 100
    downtime_ms: int = 100
    not_falling: int = 0
    last_remaining: int | None = None
    cap_ms: int = 2_000_000

    def step(self, reading):
        actions = []
        if self.last_remaining is not None and reading.remaining_bytes >= self.last_remaining:
            self.not_falling += 1
        if self.not_falling > 5:  # noqa: PLR2004 - Proxmox's rule
            self.not_falling = 0
            self.downtime_ms = min(self.cap_ms, self.downtime_ms * 2)
            actions.append(("downtime", self.downtime_ms))
        self.last_remaining = reading.remaining_bytes
        return actions


def make(name, memory_bytes):
    """The anchor called ``name`` for a guest of ``memory_bytes``."""
    factories = {
        "libvirt-ac": LibvirtAutoConverge,
        "kubevirt": lambda: KubeVirt(memory_bytes=memory_bytes),
        "nova": lambda: Nova(memory_bytes=memory_bytes),
        "nova-pc": lambda: Nova(name="nova-pc", memory_bytes=memory_bytes, post_copy=True),
        "ovirt-minimal": OVirt,
        "ovirt-pc": lambda: OVirt(name="ovirt-pc", schedule=OVIRT_POST_COPY),
        "proxmox": Proxmox,
    }
    return factories[name]()


ANCHORS = ("libvirt-ac", "kubevirt", "nova", "nova-pc", "ovirt-minimal", "ovirt-pc", "proxmox")
# Which anchors only throttle (the auto-converge goal's comparison) and which may switch to post-copy.
THROTTLING = ("libvirt-ac", "ovirt-minimal", "proxmox")
POST_COPY = ("nova-pc", "ovirt-pc")
