#!/usr/bin/env bash
# Real hypervisors: systemd-nspawn machines that boot Debian's own systemd, one per Debian generation, on a
# private bridge. Each starts as a fresh install (sshd, python3, nftables with a drop policy; nothing of libvirt),
# so the hypervisor role meets what it meets on a new host. Their apt reaches Debian's registry, and nothing
# else, through apt-cacher-ng on this machine (ForceManaged: only the Debian archives it is told about), which
# also caches the packages for the next run. No routing: ip_forward is left as it is, the bridge has no uplink.
#
#   machines.sh rootfs SUITE         build (once, cached) a pristine root of SUITE and print its path; never
#                                     modify it (copy it)
#   machines.sh up [NAME...]          boot fresh machines (default: deb11 deb12 deb13); tears down a previous set
#   machines.sh add NAME...           boot fresh machines beside the running ones (e.g. deb13b, a second trixie
#                                     host to roll maintenance over) and add them to the inventory
#   machines.sh down                  stop every machine, remove the bridge, the state and the proxy
#   machines.sh check-clean           exit 1 and list leftovers if anything of the machines remains
#   machines.sh status                the machines and whether they answer
#   machines.sh ssh NAME CMD...       run CMD on machine NAME (as root, over SSH)
#   machines.sh reboot NAME           reboot NAME from inside (systemd) and wait until it answers again
#   machines.sh prepare [ARGS]        run kvm.live_migration.prepare_hosts on the machines (ARGS go to
#                                     ansible-playbook, e.g. --check or --limit deb12)
#   machines.sh guest-start NAME GUEST [MEMORY_MIB MIB RATE]   define and start the lab guest on machine NAME
#   machines.sh guest-intact NAME GUEST [TIMEOUT_S]   wait until GUEST swept its memory twice on NAME since any
#                                     other machine's last line (tests/lab/guest_intact.py); exit 1 when damaged
#   machines.sh share-images [NAME...]   define the image directory as libvirt pool kvmlm-images on the machines that
#                                     run libvirt (shared storage, as a user's hosts have it)
#   machines.sh inventory             print the path of the generated Ansible inventory (a directory:
#                                     hosts.yml, group_vars/all.yml, group_vars/hypervisors.yml)
#
# NAME is deb11 (bullseye: Python 3.9, libvirt 7.0, QEMU 5.2), deb12 (bookworm: 3.11, 9.0, 7.2), deb13 or deb13b
# (trixie: 3.13, 11.3, 10.0). The inventory puts every machine in the group hypervisors and in its suite's group
# (bullseye, bookworm, trixie).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
STATE=${KVMLM_MACHINES_STATE:-/var/tmp/kvmlm-machines}
CACHE=${KVMLM_MACHINES_CACHE:-/var/cache/kvmlm-machines}
IMAGES=${KVMLM_LAB_IMAGES:-/var/cache/kvmlm-lab/images}
VENV=${KVMLM_VENV:-/opt/kvmlm/venv}
BRIDGE=kvmlm1
NET=10.251.78
PROXY_IP=$NET.1
PROXY_PORT=3942  # not apt-cacher-ng's own 3142, where a system instance may listen
NAMES=(deb11 deb12 deb13 deb13b)  # every machine there can be; each knows the others' names
UP_BY_DEFAULT=(deb11 deb12 deb13)
SUITES=(bullseye bookworm trixie)
declare -A SUITE=([deb11]=bullseye [deb12]=bookworm [deb13]=trixie [deb13b]=trixie)
declare -A IP=([deb11]=$NET.11 [deb12]=$NET.12 [deb13]=$NET.13 [deb13b]=$NET.14)
# What a fresh minimal install has: an init, SSH, Python for Ansible, and the firewall Debian ships.
BASE_PACKAGES=openssh-server,python3,dbus,systemd-sysv,libpam-systemd,iproute2,netbase,nftables,ca-certificates
ROOTFS_RECIPE=3  # bump when the recipe below changes, so cached roots are rebuilt

log() { printf 'machines: %s\n' "$*" >&2; }
die() { printf 'machines: error: %s\n' "$*" >&2; exit 1; }
require_root() { [ "$(id -u)" -eq 0 ] || die "run as root (nspawn, bridges)"; }

require_tools() {
    local missing=() tool
    for tool in debootstrap systemd-nspawn apt-cacher-ng ssh ssh-keygen ip; do
        command -v "$tool" >/dev/null || [ -x "/usr/sbin/$tool" ] || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] || die "missing: ${missing[*]} (run tests/install-deps.sh)"
}

# shellcheck source=tests/lab/guest/guest-xml.sh
. "$REPO/tests/lab/guest/guest-xml.sh"

valid_name() { [ -n "${SUITE[$1]:-}" ] || die "unknown machine '$1': use one of ${NAMES[*]}"; }

# ---- the package proxy ----------------------------------------------------------------------------------------

# Any HTTP answer will do (its report page is off: 403).
proxy_answers() {
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PROXY_PORT/" 2>/dev/null)" != 000 ]
}

start_proxy() {
    proxy_answers && return 0
    mkdir -p "$STATE/acng" "$CACHE/apt"
    chown -R apt-cacher-ng: "$CACHE/apt" 2>/dev/null || true
    # Only the Debian archive and its security archive, by name; ForceManaged refuses every other URL.
    cat >"$STATE/acng/acng.conf" <<EOF
CacheDir: $CACHE/apt
LogDir: $STATE/acng
SupportDir: /usr/lib/apt-cacher-ng
Port: $PROXY_PORT
BindAddress: 127.0.0.1 $PROXY_IP
PidFile: $STATE/acng/pid
Remap-debrep: deb.debian.org/debian /debian ; http://deb.debian.org/debian
Remap-secdeb: deb.debian.org/debian-security /debian-security ; http://deb.debian.org/debian-security
ForceManaged: 1
ExThreshold: 4
EOF
    chown -R apt-cacher-ng: "$STATE/acng"
    # The bridge address must exist before the proxy binds it.
    make_bridge
    (cd / && setsid /usr/sbin/apt-cacher-ng -c "$STATE/acng" ForeGround=0 </dev/null >/dev/null 2>&1) || true
    local tries=0
    until proxy_answers; do
        tries=$((tries + 1))
        [ $tries -lt 50 ] || die "apt-cacher-ng did not answer on 127.0.0.1:$PROXY_PORT (see $STATE/acng)"
        sleep 0.2
    done
}

stop_proxy() {
    local pid
    pid=$(cat "$STATE/acng/pid" 2>/dev/null || true)
    [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
    pkill -f -- "apt-cacher-ng -c $STATE/acng" 2>/dev/null || true
}

make_bridge() {
    ip link show "$BRIDGE" >/dev/null 2>&1 && return 0
    ip link add "$BRIDGE" type bridge
    ip addr add "$PROXY_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
}

# ---- pristine roots -------------------------------------------------------------------------------------------

cmd_rootfs() {
    local suite=${1:?usage: machines.sh rootfs SUITE}
    case "$suite" in bullseye | bookworm | trixie) ;; *) die "unknown suite '$suite': bullseye, bookworm or trixie" ;; esac
    local root=$CACHE/rootfs/$suite stamp
    stamp="recipe=$ROOTFS_RECIPE packages=$BASE_PACKAGES"
    if [ "$(cat "$root.stamp" 2>/dev/null)" != "$stamp" ]; then
        require_root
        start_proxy
        rm -rf "$root" "$root.tmp"
        mkdir -p "$CACHE/rootfs"
        log "debootstrap $suite into $root (through the package proxy)"
        debootstrap --variant=minbase --include="$BASE_PACKAGES" "$suite" "$root.tmp" \
            "http://127.0.0.1:$PROXY_PORT/debian" >"$CACHE/rootfs/$suite.log" 2>&1 ||
            { tail -n 20 "$CACHE/rootfs/$suite.log" >&2; die "debootstrap $suite failed (see $CACHE/rootfs/$suite.log)"; }
        write_apt_sources "$root.tmp" "$suite"
        # A fresh install: no machine identity yet, no host keys shared between copies.
        : >"$root.tmp/etc/machine-id"
        rm -f "$root.tmp"/etc/ssh/ssh_host_*
        rm -rf "$root.tmp"/var/cache/apt/archives/*.deb "$root.tmp"/var/lib/apt/lists/*
        mv "$root.tmp" "$root"
        echo "$stamp" >"$root.stamp"
    fi
    echo "$root"
}

# apt inside goes to deb.debian.org (through the proxy each machine is given, as a host behind an HTTP proxy).
write_apt_sources() {
    local root=$1 suite=$2 security
    case "$suite" in
        bullseye) security="bullseye-security" ;;
        *) security="$suite-security" ;;
    esac
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: http://deb.debian.org/debian
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: $security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

# ---- machines -------------------------------------------------------------------------------------------------

machine_dir() { echo "$STATE/$1"; }
machine_root() { echo "$STATE/$1/root"; }

write_hosts_file() {
    local root=$1 name
    {
        echo "127.0.0.1 localhost"
        echo "$PROXY_IP controller"
        for name in "${NAMES[@]}"; do echo "${IP[$name]} $name"; done
    } >"$root/etc/hosts"
}

# The firewall a careful admin turns on: drop what is not allowed; SSH and ping allowed.
write_firewall() {
    cat >"$1/etc/nftables.conf" <<'EOF'
#!/usr/sbin/nft -f
flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter; policy drop;
		iif "lo" accept
		ct state established,related accept
		meta l4proto { icmp, ipv6-icmp } accept
		tcp dport 22 accept
	}
	chain forward {
		type filter hook forward priority filter; policy drop;
	}
	chain output {
		type filter hook output priority filter;
	}
}
EOF
}

make_machine() {
    local name=$1 root dir pristine
    pristine=$(cmd_rootfs "${SUITE[$name]}")
    dir=$(machine_dir "$name")
    root=$(machine_root "$name")
    rm -rf "$dir"
    mkdir -p "$dir"
    cp -a "$pristine" "$root"
    echo "$name" >"$root/etc/hostname"
    write_hosts_file "$root"
    echo "Acquire::http::Proxy \"http://$PROXY_IP:$PROXY_PORT\";" >"$root/etc/apt/apt.conf.d/01proxy"
    write_firewall "$root"
    ln -sf /lib/systemd/system/nftables.service "$root/etc/systemd/system/multi-user.target.wants/nftables.service"
    # Static address on nspawn's host0 through systemd-networkd.
    mkdir -p "$root/etc/systemd/network"
    cat >"$root/etc/systemd/network/10-kvmlm-host0.network" <<EOF
[Match]
Name=host0

[Network]
Address=${IP[$name]}/24
EOF
    ln -sf /lib/systemd/system/systemd-networkd.service \
        "$root/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    systemd-machine-id-setup --root="$root" >/dev/null 2>&1 || tr -d - </proc/sys/kernel/random/uuid >"$root/etc/machine-id"
    ssh-keygen -q -A -f "$root" >/dev/null 2>&1 || chroot "$root" ssh-keygen -A >/dev/null
    # Where tests/lab/guest_intact.py looks for a host's guest consoles: STATE/HOST/log/qemu.
    ln -s root/var/log/libvirt "$dir/log"
    mkdir -p "$root/root/.ssh"
    chmod 0700 "$root/root/.ssh"
    cp "$STATE/ssh/id_ed25519.pub" "$root/root/.ssh/authorized_keys"
    chmod 0600 "$root/root/.ssh/authorized_keys"
    printf '%s,%s %s\n' "$name" "${IP[$name]}" "$(cut -d' ' -f1,2 "$root/etc/ssh/ssh_host_ed25519_key.pub")" \
        >>"$STATE/ssh/known_hosts"
}

# nspawn exits with 133 when the machine reboots (systemd-nspawn@.service restarts it then): so does this loop.
boot_machine() {
    local name=$1 dir root
    dir=$(machine_dir "$name")
    root=$(machine_root "$name")
    mkdir -p "$IMAGES"
    (
        cd /
        # shellcheck disable=SC2016  # expanded by the inner bash, from its arguments
        exec setsid bash -c '
            while :; do
                systemd-nspawn -q -b -D "$1" -M "$2" --network-bridge="$3" --register=no --keep-unit \
                    --capability=CAP_IPC_LOCK --bind-ro="$4" </dev/null
                rc=$?
                echo "machines: nspawn exited $rc" >&2
                [ "$rc" = 133 ] || exit "$rc"
            done' kvmlm-machine "$root" "$name" "$BRIDGE" "$IMAGES" >"$dir/console.log" 2>&1 </dev/null &
        echo $! >"$dir/supervisor.pid"
    )
}

machine_ssh() {
    local name=$1
    shift
    valid_name "$name"
    ssh -i "$STATE/ssh/id_ed25519" -o UserKnownHostsFile="$STATE/ssh/known_hosts" -o StrictHostKeyChecking=yes \
        -o BatchMode=yes -o ConnectTimeout=5 -o LogLevel=ERROR "root@${IP[$name]}" "$@"
}

# Until systemd inside reports the boot finished (running, or degraded: some units cannot run in a container).
wait_for_machine() {
    local name=$1 tries=0 state
    while :; do
        state=$(machine_ssh "$name" systemctl is-system-running 2>/dev/null || true)
        case "$state" in running | degraded) return 0 ;; esac
        tries=$((tries + 1))
        if [ $tries -ge 120 ] || ! kill -0 "$(cat "$(machine_dir "$name")/supervisor.pid")" 2>/dev/null; then
            tail -n 30 "$(machine_dir "$name")/console.log" >&2
            die "$name did not boot (state: ${state:-no answer}; console: $(machine_dir "$name")/console.log)"
        fi
        sleep 1
    done
}

# An inventory directory laid out as a user's: the hosts and groups in hosts.yml, the connection in
# group_vars/all.yml, the role's variables in group_vars/hypervisors.yml.
write_inventory() {
    local name suite dir=$STATE/inventory
    mkdir -p "$dir/group_vars"
    {
        echo "# Generated by tests/machines/machines.sh up; removed by machines.sh down."
        echo "all:"
        echo "  children:"
        echo "    hypervisors:"
        echo "      hosts:"
        for name in "$@"; do
            echo "        $name:"
            echo "          ansible_host: ${IP[$name]}"
        done
        echo "      children:"
        for suite in "${SUITES[@]}"; do
            echo "        $suite:"
            echo "          hosts:"
            for name in "$@"; do
                [ "${SUITE[$name]}" != "$suite" ] || echo "            $name: {}"
            done
        done
    } >"$dir/hosts.yml"
    {
        echo "# Generated by tests/machines/machines.sh up."
        echo "ansible_user: root"
        echo "ansible_python_interpreter: /usr/bin/python3"
        echo "ansible_pipelining: true"
        echo "ansible_ssh_private_key_file: $STATE/ssh/id_ed25519"
        echo "ansible_ssh_common_args: >-"
        echo "  -o UserKnownHostsFile=$STATE/ssh/known_hosts -o StrictHostKeyChecking=yes"
        echo "  -o ControlMaster=auto -o ControlPersist=30s -o ControlPath=$STATE/cp-%C"
    } >"$dir/group_vars/all.yml"
    {
        echo "# Generated by tests/machines/machines.sh up."
        echo "# TCG guests (no nested KVM here), the CA kept with the machines' state, and what a container cannot"
        echo "# do: cgroup v1 controllers for QEMU."
        echo "hypervisor_require_kvm: false"
        echo "hypervisor_tls_ca_dir: $STATE/ca"
        echo "hypervisor_qemu_cgroup_controllers: []"
    } >"$dir/group_vars/hypervisors.yml"
}

machines_exist() {
    [ -n "$(container_pids)" ] || [ -e "$STATE" ] || ip link show "$BRIDGE" >/dev/null 2>&1 || [ -n "$(machine_pids)" ] ||
        ip -br link | grep -q '^vb-deb'
}

# nspawn's supervisors and everything in the machines (their processes run in this machine's PID namespace).
machine_pids() {
    pgrep -f -- "kvmlm-machine $STATE/" 2>/dev/null || true
    pgrep -f -- "-D $STATE/[a-z0-9]*/root" 2>/dev/null || true
}

boot_and_wait() {
    local name
    for name in "$@"; do boot_machine "$name"; done
    for name in "$@"; do
        wait_for_machine "$name"
        machine_ssh "$name" systemctl is-active --quiet nftables ||
            die "$name's firewall (nftables.service) did not start: $(machine_ssh "$name" systemctl status nftables | tail -5)"
    done
}

cmd_up() {
    require_root
    require_tools
    local names=("$@") name
    [ ${#names[@]} -gt 0 ] || names=("${UP_BY_DEFAULT[@]}")
    for name in "${names[@]}"; do valid_name "$name"; done
    if machines_exist; then
        log "previous machines are still here: tearing them down first"
        cmd_down
    fi
    "$REPO/tests/lab/guest/build.sh" "$IMAGES"
    chmod 0755 "$(dirname "$IMAGES")" "$IMAGES"
    mkdir -p "$STATE/ssh"
    ssh-keygen -q -t ed25519 -N '' -C kvmlm-machines -f "$STATE/ssh/id_ed25519"
    : >"$STATE/ssh/known_hosts"
    start_proxy
    open_userfaultfd
    for name in "${names[@]}"; do make_machine "$name"; done
    boot_and_wait "${names[@]}"
    write_inventory "${names[@]}"
    log "up: $(for name in "${names[@]}"; do printf '%s=%s ' "$name" "${IP[$name]}"; done)inventory $STATE/inventory"
}

# The machines that were made (up or add), in NAMES' order.
made_names() {
    local name
    for name in "${NAMES[@]}"; do
        [ ! -d "$(machine_dir "$name")" ] || echo "$name"
    done
}

cmd_add() {
    require_root
    require_tools
    [ $# -gt 0 ] || die "usage: machines.sh add NAME..."
    { [ -s "$STATE/ssh/id_ed25519" ] && proxy_answers; } || die "no machines are up: run machines.sh up first"
    local name
    for name in "$@"; do
        valid_name "$name"
        [ ! -d "$(machine_dir "$name")" ] || die "$name is already up"
    done
    for name in "$@"; do make_machine "$name"; done
    boot_and_wait "$@"
    # shellcheck disable=SC2046  # one name a word
    write_inventory $(made_names)
    log "added: $(for name in "$@"; do printf '%s=%s ' "$name" "${IP[$name]}"; done)inventory $STATE/inventory"
}

# A container cannot write /proc/sys, and vm.unprivileged_userfaultfd is not namespaced: the machine that hosts
# the machines opens it for their QEMU (post-copy), as a hypervisor's own boot would, and puts it back afterwards.
USERFAULTFD_SYSCTL=/proc/sys/vm/unprivileged_userfaultfd

open_userfaultfd() {
    [ -w "$USERFAULTFD_SYSCTL" ] || return 0
    cat "$USERFAULTFD_SYSCTL" >"$STATE/unprivileged_userfaultfd.before"
    echo 1 >"$USERFAULTFD_SYSCTL"
}

restore_userfaultfd() {
    local saved=$STATE/unprivileged_userfaultfd.before
    [ ! -s "$saved" ] || cat "$saved" >"$USERFAULTFD_SYSCTL" 2>/dev/null || log "could not restore $USERFAULTFD_SYSCTL"
}

cmd_reboot() {
    local name=${1:?usage: machines.sh reboot NAME} deadline refused
    # /run is a tmpfs of the machine's own: a file there is gone once the machine has booted again.
    machine_ssh "$name" touch /run/kvmlm-before-reboot
    # systemctl refuses a reboot that conflicts with a queued job, and says so; the connection may also drop
    # before it answers (the reboot started), which is no refusal.
    if ! refused=$(machine_ssh "$name" systemctl reboot 2>&1) && [[ "$refused" == *Failed* ]]; then
        die "$name refused to reboot: $refused"
    fi
    deadline=$((SECONDS + 300))
    until ! machine_ssh "$name" test -e /run/kvmlm-before-reboot 2>/dev/null && machine_ssh "$name" true 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then
            tail -n 30 "$(machine_dir "$name")/console.log" >&2
            die "$name did not come back within 300 s after its reboot (console: $(machine_dir "$name")/console.log)"
        fi
        sleep 1
    done
    wait_for_machine "$name"
    # Ansible's SSH masters (ControlPersist) still hold the connection to the machine before its reboot, which
    # nothing answers now: a playbook would wait on it for minutes. They start again on the next connection.
    pkill -f -- "$STATE/cp-" 2>/dev/null || true
}

# Processes of the machines, found by their root: nspawn's child runs in a PID namespace of its own, and when nspawn
# itself is killed the machine's systemd (and its guests' QEMU) live on, reparented to this machine's init.
container_pids() {
    local proc own_pidns
    own_pidns=$(readlink /proc/self/ns/pid)
    for proc in /proc/[0-9]*; do
        [ "$(readlink "$proc/ns/pid" 2>/dev/null)" != "$own_pidns" ] || continue
        head -n 1 "$proc/mountinfo" 2>/dev/null | grep -q " $STATE/" && echo "${proc#/proc/}"
    done
    return 0
}

stop_machines() {
    local name pids tries
    # A machine's shutdown waits for its guests (libvirt-guests), which the lab guest does not answer: stop them.
    for name in "${NAMES[@]}"; do
        [ -d "$(machine_dir "$name")" ] || continue
        # shellcheck disable=SC2016  # expanded on the machine
        timeout 20 ssh -i "$STATE/ssh/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
            -o BatchMode=yes -o ConnectTimeout=3 -o LogLevel=ERROR "root@${IP[$name]}" \
            'for guest in $(virsh -q -c qemu:///system list --name 2>/dev/null); do
                 virsh -q -c qemu:///system destroy "$guest"; done' >/dev/null 2>&1 &
    done
    wait  # every machine at once
    # The supervising loops first, so that a machine that stops is not started again.
    pkill -TERM -f -- "kvmlm-machine $STATE/" 2>/dev/null || true
    # nspawn turns SIGTERM into an orderly poweroff of the machine.
    pkill -TERM -f -- "systemd-nspawn -q -b -D $STATE/" 2>/dev/null || true
    for tries in $(seq 1 150); do
        pids=$(pgrep -f -- "systemd-nspawn -q -b -D $STATE/" || true)
        [ -z "$pids" ] && [ -z "$(container_pids)" ] && return 0
        sleep 0.2
    done
    log "machines did not power off within 30 s: killing them"
    pkill -KILL -f -- "systemd-nspawn -q -b -D $STATE/" 2>/dev/null || true
    for tries in $(seq 1 25); do
        pids=$(container_pids)
        [ -z "$pids" ] && return 0
        # shellcheck disable=SC2086
        kill -KILL $pids 2>/dev/null || true
        sleep 0.2
    done
}

cmd_down() {
    require_root
    stop_machines
    pkill -f -- "ControlPath=$STATE/" 2>/dev/null || true
    stop_proxy
    restore_userfaultfd
    local name
    # nspawn removes its veth when the machine stops; one it could not remove would stop the next boot.
    for name in "${NAMES[@]}"; do ip link del "vb-$name" 2>/dev/null || true; done
    ip link del "$BRIDGE" 2>/dev/null || true
    local tries
    for tries in $(seq 1 20); do
        grep -q " $STATE/" /proc/mounts || break
        sleep 0.5
    done
    rm -rf "$STATE"
    cmd_check_clean >/dev/null || die "teardown left things behind: $(cmd_check_clean 2>&1 | tr '\n' ' ')"
    log "down"
}

cmd_check_clean() {
    local leftovers=()
    ip link show "$BRIDGE" >/dev/null 2>&1 && leftovers+=("bridge $BRIDGE")
    local name
    for name in "${NAMES[@]}"; do ip link show "vb-$name" >/dev/null 2>&1 && leftovers+=("link vb-$name"); done
    [ -e "$STATE" ] && leftovers+=("state $STATE")
    grep -q " $STATE/" /proc/mounts && leftovers+=("mounts under $STATE")
    local pid
    for pid in $(pgrep -f -- "$STATE/" || true) $(container_pids); do
        [ "$pid" = "$$" ] && continue
        [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" = Z ] && continue
        leftovers+=("process $pid ($(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-80))")
    done
    if [ ${#leftovers[@]} -gt 0 ]; then
        printf 'leftover: %s\n' "${leftovers[@]}"
        return 1
    fi
    echo "clean"
}

cmd_status() {
    local name up=0
    for name in "${NAMES[@]}"; do
        [ -d "$(machine_dir "$name")" ] || continue
        if machine_ssh "$name" true 2>/dev/null; then
            echo "$name: up at ${IP[$name]} ($(machine_ssh "$name" systemctl is-system-running 2>/dev/null || true))"
            up=1
        else
            echo "$name: not answering"
        fi
    done
    [ "$up" = 1 ]
}

cmd_prepare() {
    local output=$STATE/prepare_hosts.log
    log "running kvm.live_migration.prepare_hosts $* ($output)"
    if ! ANSIBLE_COLLECTIONS_PATH=$("$REPO/tests/lab/collection-path.sh") ANSIBLE_NOCOLOR=1 \
        "$VENV/bin/ansible-playbook" -i "$STATE/inventory" kvm.live_migration.prepare_hosts "$@" \
        >"$output" 2>&1; then
        tail -n 40 "$output" >&2
        die "prepare_hosts failed (see $output)"
    fi
    grep -E '^(PLAY RECAP|[a-z0-9]+ +: ok=)' "$output" >&2 || true
}

# The lab's guest (tests/lab/guest), from the shared image directory, with its console logged on the machine.
cmd_guest_start() {
    local name=${1:?usage: guest-start NAME GUEST} guest=${2:?guest} memory=${3:-256} mib=${4:-64} rate=${5:-0}
    local qemu_major
    qemu_major=$(machine_ssh "$name" qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\)\..*/\1/p')
    kvmlm_guest_xml "$guest" "$memory" "$mib" "$rate" "$mib" "$IMAGES" "$qemu_major" |
        machine_ssh "$name" "rm -f /var/log/libvirt/qemu/$guest-serial.log; cat >/tmp/$guest.xml"
    machine_ssh "$name" "virsh -q -c qemu:///system define /tmp/$guest.xml >/dev/null && virsh -q -c qemu:///system start $guest >/dev/null"
    local tries=0 log
    log="$(machine_root "$name")/var/log/libvirt/qemu/$guest-serial.log"
    until grep -q "KVMLM boot=.* tick=" "$log" 2>/dev/null; do
        tries=$((tries + 1))
        [ $tries -lt 240 ] || die "guest $guest on $name printed no tick within 120 s (see $log)"
        sleep 0.5
    done
}

cmd_share_images() {
    local names=("$@") name virsh="virsh -q -c qemu:///system"
    [ ${#names[@]} -gt 0 ] || mapfile -t names < <(made_names)
    for name in "${names[@]}"; do
        machine_ssh "$name" "$virsh pool-info kvmlm-images >/dev/null 2>&1 || {
            $virsh pool-define-as kvmlm-images dir --target $IMAGES >/dev/null &&
            $virsh pool-autostart kvmlm-images >/dev/null; }
            $virsh pool-start kvmlm-images >/dev/null 2>&1 || true" ||
            die "$name: could not define the image pool (is libvirt installed? run prepare first)"
    done
}

main() {
    local cmd=${1:-}
    shift || true
    case "$cmd" in
        rootfs) cmd_rootfs "$@" ;;
        up) cmd_up "$@" ;;
        add) cmd_add "$@" ;;
        down) cmd_down ;;
        check-clean) cmd_check_clean ;;
        status) cmd_status ;;
        ssh) [ $# -ge 1 ] || die "usage: machines.sh ssh NAME CMD..."; machine_ssh "$@" ;;
        reboot) cmd_reboot "$@" ;;
        prepare) cmd_prepare "$@" ;;
        guest-start) cmd_guest_start "$@" ;;
        guest-intact) "$VENV/bin/python" "$REPO/tests/lab/guest_intact.py" "$STATE" "$@" ;;
        share-images) cmd_share_images "$@" ;;
        inventory) echo "$STATE/inventory" ;;
        *) sed -n '2,32s/^# \{0,1\}//p' "$0"; [ -z "$cmd" ] || exit 2 ;;
    esac
}

main "$@"
