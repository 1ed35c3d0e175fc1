# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """Options of the modules that act on a guest and a pair of hypervisors (migrate, preflight).

    Mirrors ``module_utils/module_support.py``'s PAIR_ARGUMENT_SPEC (source_uri is in the libvirt fragment);
    ``ansible-test sanity`` (validate-modules) checks that they agree.
    Use as ``extends_documentation_fragment: [kvm.live_migration.libvirt, kvm.live_migration.pair,
    kvm.live_migration.pair.transport]``.
    """

    DOCUMENTATION = r"""
options:
  name:
    description:
      - Name or UUID of the guest.
    type: str
    required: true
  dest_uri:
    description:
      - libvirt URI of the destination hypervisor, as the source libvirtd reaches it (peer-to-peer).
      - Required unless O(dest_host) is given.
    type: str
  dest_host:
    description:
      - Host name of the destination hypervisor. Shorthand for O(dest_uri=qemu+ssh://DEST_HOST/system).
      - The source's libvirtd (usually root) must trust the destination's SSH host key and log in with a key.
    type: str
"""

    # How the memory travels: the pair's modules and evacuate (kvm.live_migration.pair.transport).
    TRANSPORT = r"""
options:
  transport:
    description:
      - How the guest's memory travels.
      - V(tls) uses QEMU's native TLS; both hosts need libvirt's migration certificates.
      - V(ssh) tunnels the data through the libvirt connection (the destination URI must be C(qemu+ssh://));
        slower, and it cannot be combined with post-copy or parallel connections.
      - V(tcp) sends the data unencrypted and is refused unless O(allow_insecure=true).
    type: str
    choices: [tls, ssh, tcp]
    default: tls
  allow_insecure:
    description:
      - Permit O(transport=tcp), which sends guest memory across the network in the clear.
      - Only for a trusted, isolated migration network.
    type: bool
    default: false
"""
