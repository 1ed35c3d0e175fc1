#!/usr/bin/env bash
# The kvm.live_migration lab: two real hypervisors (hv1, hv2) on this machine.
#
# Each hypervisor is a network namespace (veth on a private bridge) plus its own mount and UTS
# namespace in which /run, /etc/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt,
# /etc/hosts and /root/.ssh are bind-mounted from the lab state directory. Each runs its own
# virtlogd, libvirtd (distinct host_uuid) and sshd. The image directory is shared by both
# (shared storage). Guests run under TCG because nested KVM does not work on these machines.
#
#   lab.sh up                 bring the lab up (idempotent: tears down a half-built lab first) and prepare both
#                             hosts with kvm.live_migration.prepare_hosts; KVMLM_LAB_BARE=1 leaves them bare
#                             (shared host UUID, no certificates, no SSH trust between them, userfaultfd 0)
#   lab.sh prepare [ARGS]     run prepare_hosts on the lab (ARGS go to ansible-playbook, e.g. --check)
#   lab.sh down               remove every namespace, link, process and file the lab created
#   lab.sh status             print the lab's state; exits 1 when it is not up
#   lab.sh check-clean        exits 1 and lists leftovers if anything of the lab remains
#   lab.sh exec HOST CMD...   run CMD inside hypervisor HOST (hv1 or hv2)
#   lab.sh guest-start HOST NAME [MEMORY_MIB MIB RATE [TOUCH_MIB]]   define and start a guest on HOST
#                             (KVMLM_GUEST_CPU and KVMLM_GUEST_DEVICES add a <cpu> element and devices,
#                             KVMLM_GUEST_CMDLINE more kernel parameters)
#   lab.sh guest-intact HOST NAME [TIMEOUT_S]  wait until guest NAME swept its memory twice on HOST since any
#                             other host's last line; exit 1 on a bad page, a crash or a restart
#   lab.sh restart-libvirtd HOST          restart HOST's libvirtd (its guests keep running)
#   lab.sh restart-libvirtd-here          the same from inside a host (the role's restart command)
#   lab.sh host-uuid HOST [UUID|restore]  print HOST's libvirt host UUID, or set it (restarts libvirtd)
#   lab.sh hide-cpu-feature HOST FEATURE  make HOST's libvirt see TCG's CPU without FEATURE (restarts libvirtd)
#   lab.sh restore-cpu-features HOST      undo hide-cpu-feature
#   lab.sh deny-userfaultfd HOST          give HOST's QEMU no userfaultfd (post-copy refused); allow-userfaultfd undoes it
#   lab.sh kill-libvirtd HOST             kill HOST's libvirtd with SIGKILL (restart-libvirtd HOST brings it back)
#   lab.sh link down|up HOST              cut HOST's link to the lab's bridge, or restore it
#   lab.sh kill-qemu HOST NAME            kill the QEMU of guest NAME on HOST with SIGKILL
#   lab.sh inventory          print the path of the generated Ansible inventory
set -euo pipefail

LAB_STATE=${KVMLM_LAB_STATE:-/var/tmp/kvmlm-lab}
LAB_IMAGES=${KVMLM_LAB_IMAGES:-/var/cache/kvmlm-lab/images}
LAB_VENV=${KVMLM_VENV:-/opt/kvmlm/venv}
LAB_BRIDGE=kvmlm0
LAB_NET=10.251.77
LAB_CONTROLLER_IP=$LAB_NET.1
HOSTS=(hv1 hv2)
HERE=$(cd "$(dirname "$0")" && pwd)

declare -A HOST_IP=([hv1]=$LAB_NET.11 [hv2]=$LAB_NET.12)

log() { printf 'lab: %s\n' "$*" >&2; }
die() { printf 'lab: error: %s\n' "$*" >&2; exit 1; }

netns_of() { echo "kvmlm-$1"; }
ns_file() { echo "$LAB_STATE/ns/$1.$2"; }

require_root() { [ "$(id -u)" -eq 0 ] || die "run as root (namespaces, bridges and libvirtd need it)"; }

require_tools() {
    local tool missing=()
    for tool in ip unshare nsenter taskset libvirtd virtlogd virsh /usr/sbin/sshd ssh-keygen qemu-system-x86_64 gcc cpio; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]} (run tests/install-deps.sh)"
    [ -x "$LAB_VENV/bin/python" ] || die "no Python venv at $LAB_VENV (run tests/install-deps.sh)"
}

# Run a command inside hypervisor $1's network, mount and UTS namespaces.
in_host() {
    local host=$1
    shift
    nsenter --net="/run/netns/$(netns_of "$host")" --mount="$(ns_file "$host" mnt)" \
        --uts="$(ns_file "$host" uts)" -- "$@"
}

make_network() {
    ip link add "$LAB_BRIDGE" type bridge
    ip addr add "$LAB_CONTROLLER_IP/24" dev "$LAB_BRIDGE"
    ip link set "$LAB_BRIDGE" up
    local host netns
    for host in "${HOSTS[@]}"; do
        netns=$(netns_of "$host")
        ip netns add "$netns"
        ip link add "$netns" type veth peer name eth0 netns "$netns"
        ip link set "$netns" master "$LAB_BRIDGE" up
        ip -n "$netns" addr add "${HOST_IP[$host]}/24" dev eth0
        ip -n "$netns" link set eth0 up
        ip -n "$netns" link set lo up
    done
}

# The controller's key and what it knows of the hosts: how Ansible (and lab.sh ssh) reach them. Trust between
# the hypervisors themselves (root's key, known_hosts) is the hypervisor role's work: a bare lab has none.
make_ssh_trust() {
    local dir=$LAB_STATE/ssh host
    mkdir -p "$dir"
    ssh-keygen -q -t ed25519 -N '' -C kvmlm-lab -f "$dir/id_ed25519"
    cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
    : >"$dir/known_hosts"
    for host in "${HOSTS[@]}"; do
        printf '%s,%s %s\n' "$host" "${HOST_IP[$host]}" \
            "$(cut -d' ' -f1,2 "$LAB_STATE/$host/etc-ssh/ssh_host_ed25519_key.pub")" >>"$dir/known_hosts"
    done
}

write_hosts_file() {
    {
        echo "127.0.0.1 localhost"
        echo "$LAB_CONTROLLER_IP controller"
        local host
        for host in "${HOSTS[@]}"; do echo "${HOST_IP[$host]} $host"; done
    } >"$LAB_STATE/hosts"
}

# A bare hypervisor: libvirt as the packages install it, with the host UUID $2 that both hosts share (as
# cloned machines do), no certificates, no SSH trust between the hosts; the lab's own settings only. What
# each host's hypervisor role writes lands in these per-host copies.
make_host_tree() {
    local host=$1 shared_uuid=$2 root=$LAB_STATE/$1
    mkdir -p "$root"/{run,lib,log/qemu,cache,pki,root-ssh}
    chmod 0700 "$root/root-ssh"
    cp -a /etc/libvirt "$root/etc"
    cp -a /var/lib/libvirt/. "$root/lib/"
    cp -a /etc/sysctl.d "$root/sysctl.d"
    cp -a /etc/ssh "$root/etc-ssh"
    rm -f "$root"/etc-ssh/ssh_host_*
    ssh-keygen -q -t ed25519 -N '' -C "$host" -f "$root/etc-ssh/ssh_host_ed25519_key"
    ssh-keygen -q -t ecdsa -N '' -C "$host" -f "$root/etc-ssh/ssh_host_ecdsa_key"
    rm -f "$root"/etc/qemu/networks/autostart/*.xml
    cat >>"$root/etc/libvirtd.conf" <<EOF

# kvm.live_migration lab ($host)
host_uuid = "$shared_uuid"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
    cat >>"$root/etc/qemu.conf" <<EOF

# kvm.live_migration lab ($host): images are shared by both hosts; do not track ownership in xattrs.
remember_owner = 0
# No systemd or writable cgroup hierarchy for a namespaced libvirtd: let QEMU run without cgroups.
cgroup_controllers = [ ]
EOF
    # Inside the host /etc/ssh is its own copy; the controller's key is authorised through a lab file, root's
    # authorized_keys (the peers' keys) is the role's.
    cat >"$root/sshd_config" <<EOF
ListenAddress ${HOST_IP[$host]}
HostKey /etc/ssh/ssh_host_ed25519_key
HostKey /etc/ssh/ssh_host_ecdsa_key
PidFile /run/sshd.pid
AuthorizedKeysFile .ssh/authorized_keys $LAB_STATE/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
EOF
}

# Creates the persistent mount + UTS namespaces of $1 (inside its network namespace) with its
# private directories bind-mounted over the system ones.
make_host_namespaces() {
    local host=$1 root=$LAB_STATE/$1
    touch "$(ns_file "$host" mnt)" "$(ns_file "$host" uts)"
    # nsenter, not "ip netns exec": the latter runs in a throw-away mount namespace, which would
    # swallow the bind-mounts that make the new namespaces persistent.
    # shellcheck disable=SC2016 # the script expands its own arguments inside the namespaces
    nsenter --net="/run/netns/$(netns_of "$host")" unshare --mount="$(ns_file "$host" mnt)" \
        --uts="$(ns_file "$host" uts)" --propagation private sh -euc '
            root=$1; host=$2; state=$3
            mount -t sysfs sysfs /sys
            mount --bind "$root/run" /run
            mount --bind "$root/etc" /etc/libvirt
            mount --bind "$root/lib" /var/lib/libvirt
            mount --bind "$root/log" /var/log/libvirt
            mount --bind "$root/cache" /var/cache/libvirt
            mount --bind "$state/hosts" /etc/hosts
            if [ -c /dev/kvm ]; then
                # Give /dev/kvm the mode a Debian host has (0660 root:kvm, QEMU user in group kvm).
                # This sandbox has it 0600 root: libvirt then finds KVM in its probe (run as root) but
                # not for the QEMU user, calls its cache stale and re-probes QEMU on every lookup.
                mknod -m 0660 "$root/kvm" c 10 232
                chgrp kvm "$root/kvm"
                mount --bind "$root/kvm" /dev/kvm
            fi
            mkdir -p /root/.ssh
            mount --bind "$root/root-ssh" /root/.ssh
            mount --bind "$root/etc-ssh" /etc/ssh
            mount --bind "$root/sysctl.d" /etc/sysctl.d
            mount --bind "$root/pki" /etc/pki
            hostname "$host"
        ' sh "$root" "$host" "$LAB_STATE"
}

# libvirtd runs on CPU 0 only. libvirt >= 10 keeps the host's CPUID in its QEMU capability cache and
# re-probes QEMU when it reads another one, and leaf 1 carries the APIC ID of the core it runs on: a
# daemon restarted on the other core threw the cache away (and hide-cpu-feature's edit with it). QEMU
# is unaffected: libvirt gives each guest every host CPU.
start_daemons() {
    local host=$1
    # shellcheck disable=SC2016 # the script expands its own arguments inside the namespaces
    in_host "$host" sh -euc '
        mkdir -p /run/sshd /run/libvirt
        virtlogd -d
        taskset -c 0 libvirtd -d
        /usr/sbin/sshd -f "$1"
    ' sh "$LAB_STATE/$host/sshd_config"
}

wait_for_host() {
    local host=$1 tries=0
    until in_host "$host" virsh -q -c qemu:///system version >/dev/null 2>&1; do
        tries=$((tries + 1))
        [ $tries -lt 60 ] || die "libvirtd on $host did not answer within 30 s (see $LAB_STATE/$host/log/libvirtd.log)"
        sleep 0.5
    done
    tries=0
    until lab_ssh "$host" true 2>/dev/null; do
        tries=$((tries + 1))
        [ $tries -lt 20 ] || die "sshd on $host (${HOST_IP[$host]}) does not accept the lab key"
        sleep 0.5
    done
}

# The shared image directory as a libvirt storage pool on each host: how a hypervisor, and preflight,
# see that a guest's files are at the same path on both.
make_image_pool() {
    local host=$1
    in_host "$host" virsh -q -c qemu:///system pool-define-as kvmlm-images dir --target "$LAB_IMAGES" >/dev/null
    in_host "$host" virsh -q -c qemu:///system pool-start kvmlm-images >/dev/null
}

# SIGTERM, and SIGKILL after 20 s: a libvirtd still probing QEMU when told to stop has been seen to hang
# there. Guests survive either (QEMU is not libvirtd's child to kill).
stop_libvirtd() {
    local pid=$1 tries=0
    kill "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do
        tries=$((tries + 1))
        if [ $tries -eq 100 ]; then
            log "libvirtd ($pid) did not stop within 20 s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        [ $tries -lt 150 ] || die "libvirtd ($pid) did not stop, even killed"
        sleep 0.2
    done
}

# The pid file, not pgrep: the hosts share this machine's process namespace.
cmd_restart_libvirtd() {
    local host=${1:?host} pid
    pid=$(cat "$LAB_STATE/$host/run/libvirtd.pid")
    stop_libvirtd "$pid"
    in_host "$host" taskset -c 0 libvirtd -d
    wait_for_host "$host"
}

cmd_kill_libvirtd() {
    local host=${1:?host}
    kill -KILL "$(cat "$LAB_STATE/$host/run/libvirtd.pid")" 2>/dev/null || true
}

cmd_link() {
    local state=${1:?up or down} host=${2:?host}
    case "$state" in up|down) ;; *) die "usage: lab.sh link down|up HOST" ;; esac
    ip link set "$(netns_of "$host")" "$state"
}

# The hosts share this machine's process table: a guest's QEMU on HOST is the one in HOST's network namespace.
cmd_kill_qemu() {
    local host=${1:?host} name=${2:?name} pid killed=0
    for pid in $(pgrep -f "qemu-system-x86_64 -name guest=$name," || true); do
        if [ "$(ip netns identify "$pid" 2>/dev/null)" = "$(netns_of "$host")" ]; then
            kill -KILL "$pid" && killed=1
        fi
    done
    [ $killed -eq 1 ] || die "no QEMU of $name runs on $host"
}

cmd_host_uuid() {
    local host=${1:?host} wanted=${2:-} conf=$LAB_STATE/${1:-}/etc/libvirtd.conf
    if [ -z "$wanted" ]; then
        sed -n 's/^host_uuid = "\(.*\)"$/\1/p' "$conf"
        return
    fi
    if [ "$wanted" = restore ]; then
        [ -f "$conf.lab" ] || return 0
        mv "$conf.lab" "$conf"
    else
        [ -f "$conf.lab" ] || cp -p "$conf" "$conf.lab"
        sed -i "s/^host_uuid = .*/host_uuid = \"$wanted\"/" "$conf"
    fi
    cmd_restart_libvirtd "$host"
}

# libvirt caches what it probed of QEMU; the CPU TCG offers is the <hostCPU type='tcg'> part. Turning
# a feature off there is how the lab gets a destination whose CPU lacks it (QEMU itself is unchanged,
# so only libvirt's CPU checks see the difference).
qemu_caps_file() {
    local host=$1
    in_host "$host" virsh -q -c qemu:///system capabilities >/dev/null  # probes QEMU if nothing is cached
    grep -l "<emulator>/usr/bin/qemu-system-x86_64</emulator>" "$LAB_STATE/$host"/cache/qemu/capabilities/*.xml
}

cmd_hide_cpu_feature() {
    local host=${1:?host} feature=${2:?feature} caps
    caps=$(qemu_caps_file "$host")
    [ -f "$caps.lab" ] || cp -p "$caps" "$caps.lab"
    awk -v feature="$feature" -v q="'" '
        /<hostCPU type=.tcg./ { tcg = 1 }
        tcg && index($0, "<property name=" q feature q " type=" q "boolean" q " value=" q "true" q) {
            sub(/value=.true./, "value=" q "false" q); hidden = 1
        }
        /<\/hostCPU>/ { tcg = 0 }
        { print }
        END { exit !hidden }
    ' "$caps.lab" >"$caps" || die "TCG's CPU on $host has no feature $feature to hide"
    cmd_restart_libvirtd "$host"
}

cmd_restore_cpu_features() {
    local host=${1:?host} caps
    for caps in "$LAB_STATE/$host"/cache/qemu/capabilities/*.xml.lab; do
        [ -f "$caps" ] || return 0
        mv "$caps" "${caps%.lab}"
    done
    cmd_restart_libvirtd "$host"
}

# A host whose QEMU gets no userfaultfd, as on a kernel without /dev/userfaultfd: /dev/null bound over
# the device in HOST's mount namespace (libvirt >= 10.1 hands the device to QEMU, which then fails to
# make a userfaultfd from it), with vm.unprivileged_userfaultfd=0 for the machine (the sysctl is not
# namespaced; allow-userfaultfd puts 1 back, as lab.sh up sets it).
cmd_deny_userfaultfd() {
    local host=${1:?host}
    echo 0 >"$USERFAULTFD_SYSCTL"
    if [ -e /dev/userfaultfd ]; then
        in_host "$host" sh -c 'mountpoint -q /dev/userfaultfd || mount --bind /dev/null /dev/userfaultfd'
    fi
}

cmd_allow_userfaultfd() {
    local host=${1:?host}
    in_host "$host" sh -c 'while mountpoint -q /dev/userfaultfd; do umount /dev/userfaultfd; done'
    echo 1 >"$USERFAULTFD_SYSCTL"
}

lab_ssh() {
    local host=$1
    shift
    ssh -i "$LAB_STATE/ssh/id_ed25519" -o UserKnownHostsFile="$LAB_STATE/ssh/known_hosts" \
        -o StrictHostKeyChecking=yes -o BatchMode=yes -o ConnectTimeout=5 "root@${HOST_IP[$host]}" "$@"
}

write_inventory() {
    local host
    {
        echo "# Generated by tests/lab/lab.sh up; removed by lab.sh down."
        echo "all:"
        echo "  vars:"
        echo "    ansible_user: root"
        echo "    ansible_python_interpreter: $LAB_VENV/bin/python"
        echo "    ansible_pipelining: true"
        echo "    ansible_ssh_private_key_file: $LAB_STATE/ssh/id_ed25519"
        echo "    ansible_ssh_common_args: >-"
        echo "      -o UserKnownHostsFile=$LAB_STATE/ssh/known_hosts -o StrictHostKeyChecking=yes"
        echo "      -o ControlMaster=auto -o ControlPersist=30s -o ControlPath=$LAB_STATE/cp-%C"
        echo "    kvmlm_lab_images: $LAB_IMAGES"
        echo "    # The hypervisor role in the lab: TCG guests, no init system, the CA kept with the lab's state."
        echo "    hypervisor_require_kvm: false"
        echo "    hypervisor_libvirtd_restart_command: $HERE/lab.sh restart-libvirtd-here"
        echo "    hypervisor_tls_ca_dir: $LAB_STATE/ca"
        echo "    kvmlm_lab_state: $LAB_STATE"
        echo "  children:"
        echo "    hypervisors:"
        echo "      hosts:"
        for host in "${HOSTS[@]}"; do
            echo "        $host:"
            echo "          ansible_host: ${HOST_IP[$host]}"
            echo "          kvmlm_lab_log_dir: $LAB_STATE/$host/log"
        done
    } >"$LAB_STATE/inventory.yml"
}

cmd_up() {
    require_root
    require_tools
    if lab_exists; then
        log "a previous lab is still here: tearing it down first"
        cmd_down
    fi
    log "building the guest image in $LAB_IMAGES"
    "$HERE/guest/build.sh" "$LAB_IMAGES"
    chmod 0755 "$(dirname "$LAB_IMAGES")" "$LAB_IMAGES"
    mkdir -p "$LAB_STATE/ns"
    # Persistent namespace files must live on a private mount, or the bind-mount of the namespace fails.
    mount --bind "$LAB_STATE/ns" "$LAB_STATE/ns"
    mount --make-private "$LAB_STATE/ns"
    make_network
    write_hosts_file
    local host
    local shared_uuid
    shared_uuid=$(cat /proc/sys/kernel/random/uuid)
    for host in "${HOSTS[@]}"; do make_host_tree "$host" "$shared_uuid"; done
    start_with_userfaultfd_closed
    make_ssh_trust
    # The hosts' /etc/pki is bound over this mount point; Debian has none.
    if [ ! -d /etc/pki ]; then
        mkdir /etc/pki
        touch "$LAB_STATE/etc-pki.made"
    fi
    for host in "${HOSTS[@]}"; do
        make_host_namespaces "$host"
        start_daemons "$host"
    done
    for host in "${HOSTS[@]}"; do
        wait_for_host "$host"
        make_image_pool "$host"
    done
    write_inventory
    if [ "${KVMLM_LAB_BARE:-0}" = 1 ]; then
        log "up (bare: not prepared): hv1=${HOST_IP[hv1]} hv2=${HOST_IP[hv2]}; inventory $LAB_STATE/inventory.yml"
        return
    fi
    cmd_prepare
    log "up: hv1=${HOST_IP[hv1]} hv2=${HOST_IP[hv2]}; inventory $LAB_STATE/inventory.yml"
}

# The collection's prepare_hosts playbook on both hosts (the hypervisor role: host UUIDs, qemu.conf, post-copy,
# SSH trust, TLS certificates); extra arguments go to ansible-playbook (e.g. --check).
cmd_prepare() {
    local output=$LAB_STATE/prepare_hosts.log
    log "preparing hv1 and hv2 with kvm.live_migration.prepare_hosts ($output)"
    if ! ANSIBLE_COLLECTIONS_PATH=$("$HERE/collection-path.sh") ANSIBLE_NOCOLOR=1 \
        "$LAB_VENV/bin/ansible-playbook" -i "$LAB_STATE/inventory.yml" kvm.live_migration.prepare_hosts "$@" \
        >"$output" 2>&1; then
        tail -n 40 "$output" >&2
        die "prepare_hosts failed (see $output)"
    fi
    sed -n 's/^ *"msg": "\(hv[0-9]: .*\)"$/\1/p' "$output" >&2
}

# Run inside a hypervisor (the role's hypervisor_libvirtd_restart_command): restart its libvirtd, which has no
# init system here.
cmd_restart_libvirtd_here() {
    local pid tries=0
    pid=$(cat /run/libvirtd.pid 2>/dev/null || true)
    [ -z "$pid" ] || stop_libvirtd "$pid"
    taskset -c 0 libvirtd -d
    tries=0
    until virsh -q -c qemu:///system version >/dev/null 2>&1; do
        tries=$((tries + 1))
        [ $tries -lt 60 ] || die "libvirtd did not answer within 30 s after its restart"
        sleep 0.5
    done
}

lab_exists() {
    [ -e "$LAB_STATE" ] || ip link show "$LAB_BRIDGE" >/dev/null 2>&1 || {
        local host
        for host in "${HOSTS[@]}"; do ip netns list | grep -qw "$(netns_of "$host")" && return 0; done
        return 1
    }
}

# Every process that lives in one of the lab's network namespaces: daemons, QEMU, ssh sessions.
lab_pids() {
    local host
    for host in "${HOSTS[@]}"; do
        ip netns pids "$(netns_of "$host")" 2>/dev/null || true
    done
}

kill_lab_processes() {
    local pids tries
    pids=$(lab_pids)
    [ -z "$pids" ] && return 0
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    for tries in $(seq 1 50); do
        pids=$(lab_pids)
        [ -z "$pids" ] && return 0
        sleep 0.1
    done
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
    sleep 0.2
}

# Post-copy needs userfaultfd for QEMU, which runs as libvirt-qemu, not root. The sysctl is not
# namespaced: the lab sets it for the whole machine and puts the previous value back when it goes.
USERFAULTFD_SYSCTL=/proc/sys/vm/unprivileged_userfaultfd

# A bare lab starts with the sysctl at 0, as Debian ships it; the hypervisor role sets it where QEMU needs it.
start_with_userfaultfd_closed() {
    [ -w "$USERFAULTFD_SYSCTL" ] || return 0
    cat "$USERFAULTFD_SYSCTL" >"$LAB_STATE/unprivileged_userfaultfd.before"
    echo 0 >"$USERFAULTFD_SYSCTL"
}

restore_post_copy_setting() {
    local saved=$LAB_STATE/unprivileged_userfaultfd.before
    if [ -s "$saved" ]; then
        cat "$saved" >"$USERFAULTFD_SYSCTL" 2>/dev/null || log "could not restore $USERFAULTFD_SYSCTL"
    fi
}

cmd_down() {
    require_root
    local host
    kill_lab_processes
    # Controller-side ssh multiplexers that still point at the lab hosts.
    pkill -f -- "ControlPath=$LAB_STATE/" 2>/dev/null || true
    for host in "${HOSTS[@]}"; do
        for kind in mnt uts; do
            umount "$(ns_file "$host" $kind)" 2>/dev/null || true
        done
        ip netns del "$(netns_of "$host")" 2>/dev/null || true
        ip link del "$(netns_of "$host")" 2>/dev/null || true
    done
    ip link del "$LAB_BRIDGE" 2>/dev/null || true
    umount "$LAB_STATE/ns" 2>/dev/null || true
    restore_post_copy_setting
    if [ -e "$LAB_STATE/etc-pki.made" ]; then rmdir /etc/pki 2>/dev/null || log "/etc/pki is not empty: left"; fi
    rm -rf "$LAB_STATE"
    cmd_check_clean >/dev/null || die "teardown left things behind: $(cmd_check_clean 2>&1 | tr '\n' ' ')"
    log "down"
}

cmd_check_clean() {
    local leftovers=() host
    for host in "${HOSTS[@]}"; do
        ip netns list | grep -qw "$(netns_of "$host")" && leftovers+=("netns $(netns_of "$host")")
        ip link show "$(netns_of "$host")" >/dev/null 2>&1 && leftovers+=("link $(netns_of "$host")")
    done
    ip link show "$LAB_BRIDGE" >/dev/null 2>&1 && leftovers+=("bridge $LAB_BRIDGE")
    [ -e "$LAB_STATE" ] && leftovers+=("state $LAB_STATE")
    grep -q " $LAB_STATE" /proc/mounts && leftovers+=("mounts under $LAB_STATE")
    local pid root_net
    root_net=$(readlink /proc/self/ns/net)
    # A lab daemon outlives its namespace's name, so look for hypervisor processes outside the
    # controller's network namespace, and for anything still naming the lab state directory.
    for pid in $(pgrep -x libvirtd || true) $(pgrep -x virtlogd || true) $(pgrep -x sshd || true) $(pgrep -f '^[^ ]*qemu-system-' || true) $(pgrep -f -- "$LAB_STATE/" || true); do
        [ "$pid" = "$$" ] && continue
        # Daemons are reparented to this machine's init, which may be slow to reap: a zombie holds nothing.
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && continue
        if [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" != "$root_net" ] ||
            tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$LAB_STATE/"; then
            leftovers+=("process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80))")
        fi
    done
    if [ ${#leftovers[@]} -gt 0 ]; then
        printf 'leftover: %s\n' "${leftovers[@]}"
        return 1
    fi
    echo "clean"
}

cmd_status() {
    local host ok=0
    for host in "${HOSTS[@]}"; do
        if [ -e "$(ns_file "$host" mnt)" ] && in_host "$host" virsh -q -c qemu:///system list --all 2>/dev/null \
            | sed "s/^/$host: /"; then
            echo "$host: libvirtd up at ${HOST_IP[$host]}"
        else
            echo "$host: down"
            ok=1
        fi
    done
    return $ok
}

# The guest's definition: tests/lab/guest/guest-xml.sh (pti=on below QEMU 8: see there and DEVELOPERS.md).
# KVMLM_GUEST_CMDLINE adds to the kernel command line (the workload's kvmlm.* settings).
# shellcheck source=tests/lab/guest/guest-xml.sh
. "$HERE/guest/guest-xml.sh"

guest_xml() {
    local name=$1 memory=$2 mib=$3 rate=$4 touch=${5:-$3} qemu_major
    qemu_major=$(qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
    kvmlm_guest_xml "$name" "$memory" "$mib" "$rate" "$touch" "$LAB_IMAGES" "$qemu_major" "${KVMLM_GUEST_CMDLINE:-}"
}

# Defines NAME persistently on HOST, starts it and waits until its workload reports ready.
cmd_guest_start() {
    local host=${1:?host} name=${2:?name} memory=${3:-512} mib=${4:-64} rate=${5:-0} touch=${6:-${4:-64}}
    local xml=$LAB_STATE/$name.xml log="$LAB_STATE/$host/log/qemu/$name-serial.log" tries=0
    guest_xml "$name" "$memory" "$mib" "$rate" "$touch" >"$xml"
    # libvirt appends: the lines of an earlier guest of the same name, on any host, must not count
    rm -f "$LAB_STATE"/hv*/log/qemu/"$name-serial.log"
    in_host "$host" virsh -q -c qemu:///system define "$xml" >/dev/null
    in_host "$host" virsh -q -c qemu:///system start "$name" >/dev/null
    until grep -q "KVMLM boot=.* tick=" "$log" 2>/dev/null; do
        tries=$((tries + 1))
        [ $tries -lt 240 ] || die "guest $name on $host printed no tick within 120 s (see $log)"
        sleep 0.5
    done
}

main() {
    local cmd=${1:-}
    shift || true
    case "$cmd" in
        up) cmd_up ;;
        down) cmd_down ;;
        status) cmd_status ;;
        check-clean) cmd_check_clean ;;
        exec) [ $# -ge 2 ] || die "usage: lab.sh exec HOST CMD..."; in_host "$@" ;;
        ssh) lab_ssh "$@" ;;
        guest-start) cmd_guest_start "$@" ;;
        guest-intact) "$LAB_VENV/bin/python" "$HERE/guest_intact.py" "$LAB_STATE" "$@" ;;
        restart-libvirtd) cmd_restart_libvirtd "$@" ;;
        restart-libvirtd-here) cmd_restart_libvirtd_here ;;
        kill-libvirtd) cmd_kill_libvirtd "$@" ;;
        link) cmd_link "$@" ;;
        kill-qemu) cmd_kill_qemu "$@" ;;
        prepare) cmd_prepare "$@" ;;
        host-uuid) cmd_host_uuid "$@" ;;
        hide-cpu-feature) cmd_hide_cpu_feature "$@" ;;
        restore-cpu-features) cmd_restore_cpu_features "$@" ;;
        deny-userfaultfd) cmd_deny_userfaultfd "$@" ;;
        allow-userfaultfd) cmd_allow_userfaultfd "$@" ;;
        inventory) echo "$LAB_STATE/inventory.yml" ;;
        *) sed -n '2,32s/^# \{0,1\}//p' "$0"; [ -z "$cmd" ] || exit 2 ;;
    esac
}

main "$@"
