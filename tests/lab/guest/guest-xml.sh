# shellcheck shell=bash
# The lab guest's libvirt definition, shared by tests/lab/lab.sh (namespace hosts) and tests/machines/machines.sh
# (systemd machines). Source it, then:
#   kvmlm_guest_xml NAME MEMORY_MIB DIRTY_MIB RATE TOUCH_MIB IMAGES QEMU_MAJOR [EXTRA_CMDLINE]
# IMAGES holds vmlinuz and initrd.gz (tests/lab/guest/build.sh); QEMU_MAJOR is the version of the QEMU that will
# start it. KVMLM_GUEST_CPU and KVMLM_GUEST_DEVICES, when set, add a <cpu> element and devices.

# QEMU before 8 under TCG loses writes unless the guest reloads CR3 on every kernel entry (DEVELOPERS.md).
kvmlm_guest_cmdline() {
    local mib=$1 rate=$2 touch=$3 qemu_major=$4 extra=${5:-}
    printf 'console=ttyS0 quiet panic=-1 kvmlm.mib=%s kvmlm.rate=%s kvmlm.touch_mib=%s' "$mib" "$rate" "$touch"
    [ "${qemu_major:-10}" -ge 8 ] || printf ' pti=on'
    [ -z "$extra" ] || printf ' %s' "$extra"
}

kvmlm_guest_xml() {
    local name=$1 memory=$2 mib=$3 rate=$4 touch=$5 images=$6 qemu_major=$7 extra=${8:-}
    cat <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>$memory</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$images/vmlinuz</kernel>
    <initrd>$images/initrd.gz</initrd>
    <cmdline>$(kvmlm_guest_cmdline "$mib" "$rate" "$touch" "$qemu_major" "$extra")</cmdline>
  </os>
  ${KVMLM_GUEST_CPU:-}
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <serial type='pty'>
      <log file='/var/log/libvirt/qemu/$name-serial.log' append='on'/>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <memballoon model='none'/>
    ${KVMLM_GUEST_DEVICES:-}
  </devices>
</domain>
XML
}
