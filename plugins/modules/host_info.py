#!/usr/bin/python
# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
module: host_info
short_description: Report a hypervisor's virtualization, migration capabilities and guests
version_added: 0.1.0
description:
  - Reports whether the host can run KVM guests and, when it cannot, why (no Intel VT-x or AMD-V in the CPU flags,
    disabled in the firmware, module not loaded, C(/dev/kvm) missing or closed, nested virtualization off).
  - Runs a guest of one HLT instruction on C(/dev/kvm) in a child process (O(probe_kvm)), which finds broken nested
    setups that pass every static check.
  - Reports the host (architecture, CPU vendor and model from libvirt's capabilities, host UUID, host name, libvirt and
    QEMU versions, memory, migration port range, whether post-copy is possible for QEMU's user, QEMU's migration TLS
    files) and which migration features its libvirt and QEMU support.
  - Reports every guest (or those in O(domains)) with its state, memory, vCPUs, CPU definition, disks (with whether
    they live on shared storage), interfaces (with their networks and bridges) and the devices that block migration.
  - Facts read from the kernel and files (virtualization, post-copy, TLS, ports) need the module to run on the
    hypervisor itself with a local O(source_uri); with a remote URI they are V(null) with the reason.
  - Results are lists of dicts with integer sizes, ready for C(json_query) and C(selectattr).
author:
  - kvm.live_migration maintainers (@kvm-live-migration)
options:
  source_uri:
    description:
      - libvirt URI of the hypervisor to describe, named as in the other modules of this collection.
      - O(uri) is the older name, kept as an alias.
    type: str
    default: qemu:///system
    aliases: [uri]
  domains:
    description:
      - Names or UUIDs of the guests to describe. All guests when omitted; V([]) for none.
    type: list
    elements: str
  probe_kvm:
    description:
      - Run the one-instruction KVM test guest (a few milliseconds; bounded by a 5 s timeout in a child process).
    type: bool
    default: true
requirements:
  - libvirt-python >= 9.0 on the host that runs the module
extends_documentation_fragment:
  - kvm.live_migration.attributes
  - kvm.live_migration.attributes.actiongroups
  - kvm.live_migration.attributes.info_module
"""

EXAMPLES = r"""
- name: Describe the hypervisor
  kvm.live_migration.host_info:
  register: hv

- name: Refuse to place guests on a host without working KVM
  ansible.builtin.assert:
    that: hv.virtualization.kvm_usable
    fail_msg: "{{ inventory_hostname }}: {{ hv.virtualization.reason }}"

- name: Names of the running guests that can be live-migrated
  ansible.builtin.debug:
    msg: "{{ hv.domains | community.general.json_query(\"[?state=='running' && migratable].name\") }}"

- name: Disks that are not on shared storage
  ansible.builtin.debug:
    msg: "{{ hv.domains | community.general.json_query('[].disks[?shared==`false`].path[]') }}"
"""

RETURN = r"""
virtualization:
  description: Whether this host runs KVM guests, and why not.
  returned: always
  type: dict
  contains:
    vendor:
      description: CPU vendor (Intel, AMD, ...).
      type: str
      sample: AMD
    hw_flag:
      description: The hardware virtualization flag in the CPU flags, V(vmx), V(svm), or V(null) when neither.
      type: str
      sample: svm
    kvm_usable:
      description: Whether QEMU can run KVM guests here; V(null) when not read (remote URI).
      type: bool
      sample: false
    accelerator:
      description: What guests here run on, V(kvm) or V(tcg) (emulation).
      type: str
      sample: tcg
    reason:
      description: Why KVM is usable or not, with what to do.
      type: str
      sample: "the CPU flags show neither vmx (Intel VT-x) nor svm (AMD-V); ..."
    kvm_modules:
      description: KVM kernel modules loaded.
      type: list
      elements: str
      sample: [kvm, kvm_amd]
    dev_kvm:
      description: V(ok), V(missing) or V(no_access) (for the user running the module).
      type: str
    nested:
      description: Nested virtualization enabled in kvm_intel/kvm_amd; V(null) when not known.
      type: bool
    firmware_disabled:
      description: Whether the kernel log says the firmware disabled VT-x/AMD-V.
      type: bool
    under_hypervisor:
      description: Whether this host is itself a virtual machine.
      type: bool
    probe:
      description: Outcome of the one-instruction KVM guest (ran, exit_reason, error); V(null) when not run.
      type: dict
    libvirt_domain_types:
      description: Domain types libvirt offers for the host's architecture (V(kvm), V(qemu)).
      type: list
      elements: str
host:
  description: The hypervisor.
  returned: always
  type: dict
  contains:
    hostname:
      description: Host name libvirt reports.
      type: str
    uuid:
      description: libvirt's host UUID (must differ between hosts for migration).
      type: str
    arch:
      description: Host architecture.
      type: str
      sample: x86_64
    cpu:
      description: Host CPU from libvirt's capabilities (arch, vendor, model, features, sockets, cores, threads).
      type: dict
    cpus:
      description: Logical CPUs.
      type: int
    libvirt_version:
      description: libvirt daemon version.
      type: str
      sample: 9.0.0
    qemu_version:
      description: QEMU version.
      type: str
      sample: 7.2.0
    memory:
      description: total_bytes, free_bytes and available_bytes (free plus reclaimable cache).
      type: dict
    domain_types:
      description: Domain types libvirt offers for the host's architecture.
      type: list
      elements: str
    guest_arches:
      description: Guest architectures this host runs.
      type: list
      elements: str
    migration_transports:
      description: URI transports libvirt accepts for incoming migrations.
      type: list
      elements: str
    migration_ports:
      description: QEMU's incoming migration port range (min, max) from qemu.conf; V(null) when not read.
      type: dict
    post_copy:
      description:
        - Whether QEMU can post-copy into this host (C(possible); V(null) when it cannot be told), and why or why not
          (C(reason), with what to do).
        - C(via) is how QEMU's user gets the userfaultfd post-copy needs - V(root), V(device) (C(/dev/userfaultfd),
          which libvirt >= 10.1 hands to QEMU >= 8.1) or V(sysctl) (C(vm.unprivileged_userfaultfd=1)) - or V(null)
          when it gets none. It is set even when something else stops post-copy.
        - QEMU also needs C(CAP_IPC_LOCK) in the capability bounding set of what the host's init starts (C(CapBnd) of
          C(/proc/1/status), else of the module's own process) to C(munlockall()) before post-copy; without it
          C(possible) is false and C(reason) names the capability (a container that dropped it).
      type: dict
    tls:
      description:
        - QEMU's migration TLS files - C(cert_dir), C(can_send) and C(can_receive) (the files are there), C(missing).
        - C(configured) is true when the files would let this host send to and receive from a host of the same CA -
          one CA signed both certificates, they are valid now and for this host's name, the keys match and QEMU's user
          can read them; C(problems) says what is wrong or about to be (expiry within 30 days).
      type: dict
    local:
      description: Whether the kernel and file facts were read (the URI is local).
      type: bool
migration_features:
  description: Migration features this host's libvirt and QEMU support.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "post_copy", "supported": true, "reason": "libvirt 9.0.0 and QEMU 7.2.0 support it"}]
domains:
  description: The guests, sorted by name.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: Guest name.
      type: str
    uuid:
      description: Guest UUID.
      type: str
    state:
      description: running, paused, shutoff, ...
      type: str
    persistent:
      description: Whether the guest is defined persistently.
      type: bool
    memory_bytes:
      description: Guest memory.
      type: int
    vcpus:
      description: Virtual CPUs.
      type: int
    cpu:
      description: CPU mode, model, vendor, required features, disabled features, migratable.
      type: dict
    disks:
      description: Disks with target, device, type, path, source, format, pool, filesystem, shared and shared_reason.
      type: list
      elements: dict
    interfaces:
      description: Interfaces with type, network, bridge, device, mac and model.
      type: list
      elements: dict
    blockers:
      description: Devices that block live migration (device, reason).
      type: list
      elements: dict
    migratable:
      description: Whether no device blocks live migration.
      type: bool
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvm.live_migration.plugins.module_utils.connection import (
    LIBVIRT_IMPORT_ERROR,
    Hypervisor,
    is_local_uri,
)
from ansible_collections.kvm.live_migration.plugins.module_utils.hostinfo import HostInfo
from ansible_collections.kvm.live_migration.plugins.module_utils.module_support import run_engine
from ansible_collections.kvm.live_migration.plugins.module_utils.request import validate_libvirt_uri

ARGUMENT_SPEC = {
    "source_uri": {"type": "str", "default": "qemu:///system", "aliases": ["uri"]},
    "domains": {"type": "list", "elements": "str"},
    "probe_kvm": {"type": "bool", "default": True},
}


def gather(params):
    validate_libvirt_uri(params["source_uri"], "source_uri")
    with Hypervisor(params["source_uri"]) as hypervisor:
        return HostInfo(hypervisor, local=is_local_uri(params["source_uri"]), probe=params["probe_kvm"]).gather(
            params["domains"])


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    facts = run_engine(module, lambda: gather(module.params), LIBVIRT_IMPORT_ERROR)
    module.exit_json(changed=False, **facts)


if __name__ == "__main__":
    main()
