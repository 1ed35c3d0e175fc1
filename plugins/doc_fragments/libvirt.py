# Copyright: kvm.live_migration maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations


class ModuleDocFragment:
    """Options shared by the modules that open a libvirt connection.

    Use as ``extends_documentation_fragment: [kvm.live_migration.libvirt]``.
    """

    DOCUMENTATION = r"""
options:
  source_uri:
    description:
      - The libvirt connection URI of the source hypervisor, as seen from the host the module runs on.
      - The default reaches the system libvirt daemon of that host, so running the module on the source
        hypervisor itself needs no further setting.
      - Use a remote URI such as C(qemu+ssh://root@hv1.example.com/system) when the module runs elsewhere.
    type: str
    default: qemu:///system
requirements:
  - libvirt-python >= 9.0 on the host that runs the module
  - libvirt >= 9.0
"""
