# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The migration features, what each needs, and their detection (pure: names and version numbers in).

One table serves both the convergence engine (``detect_features``: what a migration between two
hosts may use) and host_info (``host_features``: what one host supports), so host_info reports
exactly what a migration will detect. The binding names tell what the Python binding and client
library know; the versions (encoded as libvirt does: major * 1,000,000 + minor * 1,000 + micro)
what the daemon and QEMU implement.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class FeatureNeeds:
    name: str
    binding_names: tuple
    lowest_libvirt: int
    lowest_qemu: int
    removed_in_qemu: int | None = None
    engine: bool = False  # the convergence engine steers with it
    source_only: bool = False  # only the source's versions matter
    broken_in_libvirt: tuple = ()  # ((lowest, below, why), ...): libvirt releases where the feature is broken


# Measured in the lab (11.3.0): qemuMigrationDstPrepareResume passes no file descriptor to qemuProcessIncomingDefNew,
# which reads it, so the destination's daemon dies on every post-copy resume.
_RESUME_CRASHES = (11_003_000, 11_004_000, "crashes its libvirtd on every post-copy resume (a NULL file descriptor in "
                   "qemuMigrationDstPrepareResume)")

FEATURES = (
    FeatureNeeds("auto_converge", ("VIR_MIGRATE_AUTO_CONVERGE", "VIR_MIGRATE_PARAM_AUTO_CONVERGE_INITIAL",
                                   "VIR_MIGRATE_PARAM_AUTO_CONVERGE_INCREMENT"), 2_000_000, 2_000_000, engine=True),
    FeatureNeeds("post_copy", ("VIR_MIGRATE_POSTCOPY", "migrateStartPostCopy"), 1_003_003, 2_005_000, engine=True),
    FeatureNeeds("dirty_rate", ("VIR_DOMAIN_STATS_DIRTYRATE", "startDirtyRateCalc"), 7_002_000, 5_002_000,
                 engine=True, source_only=True),
    FeatureNeeds("parallel", ("VIR_MIGRATE_PARALLEL", "VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS"), 5_002_000,
                 4_000_000),
    FeatureNeeds("compression.xbzrle", ("VIR_MIGRATE_COMPRESSED",), 1_000_003, 1_002_000),
    FeatureNeeds("compression.mt", ("VIR_MIGRATE_PARAM_COMPRESSION",), 1_003_004, 2_004_000, removed_in_qemu=9_001_000),
    FeatureNeeds("compression.zlib", ("VIR_MIGRATE_PARAM_COMPRESSION", "VIR_MIGRATE_PARALLEL"), 9_004_000, 5_000_000),
    FeatureNeeds("compression.zstd", ("VIR_MIGRATE_PARAM_COMPRESSION", "VIR_MIGRATE_PARALLEL"), 9_004_000, 5_000_000),
    FeatureNeeds("zero_copy", ("VIR_MIGRATE_ZEROCOPY",), 8_005_000, 7_001_000),
    # Resuming a post-copy that broke: QEMU's migrate-pause (abortJobFlags) and VIR_MIGRATE_POSTCOPY_RESUME.
    FeatureNeeds("post_copy_recovery", ("VIR_MIGRATE_POSTCOPY_RESUME", "VIR_DOMAIN_ABORT_JOB_POSTCOPY"), 8_005_000,
                 3_000_000, engine=True, broken_in_libvirt=(_RESUME_CRASHES,)),
)


@dataclass(frozen=True)
class Features:
    """Which convergence features both hosts' libvirt and QEMU support for this migration."""

    auto_converge: bool = True
    post_copy: bool = True
    dirty_rate: bool = True
    post_copy_recovery: bool = True
    reasons: dict = field(default_factory=dict)  # feature -> why it is unavailable

    def without(self, feature, reason):
        return replace(self, **{feature: False}, reasons={**self.reasons, feature: reason})


def dotted_version(version):
    """libvirt's encoded version as "major.minor.micro"."""
    return f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}"


def missing_names(needs, names):
    return [name for name in needs.binding_names if name not in names]


def version_gap(needs, versions):
    """Why ``versions`` ({"libvirt", "hypervisor"}) cannot use the feature, or None."""
    if versions["libvirt"] < needs.lowest_libvirt:
        return f"needs libvirt {dotted_version(needs.lowest_libvirt)} or later"
    if versions["hypervisor"] < needs.lowest_qemu:
        return f"needs QEMU {dotted_version(needs.lowest_qemu)} or later"
    if needs.removed_in_qemu is not None and versions["hypervisor"] >= needs.removed_in_qemu:
        return f"removed in QEMU {dotted_version(needs.removed_in_qemu)}"
    return None


def broken_release(needs, versions):
    """Why the libvirt release in ``versions`` cannot be used for the feature although new enough, or None."""
    for lowest, below, why in needs.broken_in_libvirt:
        if lowest <= versions["libvirt"] < below:
            return f"libvirt {dotted_version(versions['libvirt'])} {why}"
    return None


def host_features(names, versions, post_copy=None):
    """[{name, supported, reason}] for one host; ``post_copy`` is hostfacts.post_copy_status() when read locally."""
    rows = []
    for needs in FEATURES:
        missing = missing_names(needs, names)
        gap = version_gap(needs, versions) or broken_release(needs, versions)
        if missing:
            supported, reason = False, f"the libvirt Python binding lacks {', '.join(missing)}"
        elif gap:
            supported, reason = False, gap
        else:
            supported, reason = True, f"libvirt {dotted_version(versions['libvirt'])} and QEMU " \
                                      f"{dotted_version(versions['hypervisor'])} support it"
        if needs.name == "post_copy" and supported and post_copy and post_copy["possible"] is False:
            supported, reason = False, post_copy["reason"]
        rows.append({"name": needs.name, "supported": supported, "reason": reason})
    return rows


def detect_features(binding_names, source_versions, destination_versions, transport):
    """The engine's features that both hosts support (the source alone for the dirty-rate measurement)."""
    features = Features()
    for needs in (needs for needs in FEATURES if needs.engine):
        hosts = {"source": source_versions}
        if not needs.source_only:
            hosts["destination"] = destination_versions
        missing = missing_names(needs, binding_names)
        gap = next(filter(None, (version_gap(needs, versions) for versions in hosts.values())), None)
        broken = next(((side, why) for side, why in ((side, broken_release(needs, versions))
                                                     for side, versions in hosts.items()) if why), None)
        if missing:
            features = features.without(needs.name, f"the libvirt Python binding lacks {', '.join(missing)}")
        elif gap:
            features = features.without(needs.name, f"{gap} on both hosts")
        elif broken:
            features = features.without(needs.name, f"{broken[1]} on the {broken[0]}")
    if transport == "ssh" and features.post_copy:
        features = features.without("post_copy", "tunnelled (transport: ssh) migration cannot switch to post-copy")
    return features
