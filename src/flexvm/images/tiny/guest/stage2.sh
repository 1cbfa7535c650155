#!/bin/sh
# flexvm tiny image, stage 2: PID 1 for the guest's whole life, from the disk or the initramfs.
#
# Kernel command line: flexvm.name=<hostname> (default "tiny"), flexvm.tick=1 (a console line
# every second), flexvm.dhcp_wait=<s> (how long boot waits for a DHCP lease, default 3).
# Console lines: "flexvm: ready ...", then "flexvm: state ..." on any change of cpus, memory
# or disk size, "flexvm: ip=..." if the address changes, "flexvm: tick ...", "flexvm: poweroff".
export PATH=/bin
LIB=/usr/lib/flexvm
. $LIB/lib.sh

# Stage 1 moved these over when it switched root; booting without it needs them mounted.
[ -e /proc/self ] || mount -t proc proc /proc
[ -d /sys/kernel ] || mount -t sysfs sysfs /sys
[ -c /dev/null ] || mount -t devtmpfs devtmpfs /dev
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p $RUN $STATE

NAME=tiny
TICK=0
DHCP_WAIT=3
read -r cmdline < /proc/cmdline
for arg in $cmdline; do
    case $arg in
        flexvm.name=?*) NAME=${arg#*=} ;;
        flexvm.tick=*) TICK=${arg#*=} ;;
        flexvm.dhcp_wait=*) DHCP_WAIT=${arg#*=} ;;
    esac
done
case $DHCP_WAIT in ''|*[!0-9]*) DHCP_WAIT=3 ;; esac
echo "$NAME" > /proc/sys/kernel/hostname

# Hot-added memory comes up by itself; the loop below catches any block this misses.
echo online 2>/dev/null > /sys/devices/system/memory/auto_online_blocks

# The boot counter lives on the disk (when there is one) and survives reboots.
BOOTS=0
[ -r $STATE/boots ] && read -r BOOTS < $STATE/boots
case $BOOTS in ''|*[!0-9]*) BOOTS=0 ;; esac
BOOTS=$((BOOTS + 1))
echo $BOOTS > $STATE/boots.new && mv $STATE/boots.new $STATE/boots && sync

# Network: the first ethernet NIC, if any. udhcpc keeps running to renew the lease; boot
# waits for the first lease only DHCP_WAIT seconds (retries every second, not every 3).
ip link set lo up
NIC=
for dev in /sys/class/net/*; do
    [ "${dev##*/}" = lo ] && continue
    [ -r "$dev/type" ] && read -r type < "$dev/type" && [ "$type" = 1 ] || continue
    NIC=${dev##*/}
    break
done
if [ -n "$NIC" ]; then
    ip link set "$NIC" up
    udhcpc -f -i "$NIC" -s $LIB/dhcp.sh -t 3 -T 1 -A 2 -x "hostname:$NAME" \
        </dev/null >/dev/null 2>&1 &
fi

# HTTP on port 80: nc forks one handler per connection, so requests run concurrently.
# busybox nc takes the number of -l flags as its listen backlog; with -ll (2) a burst of
# clients overflows it and their connections stall for seconds, so ask for 64.
listen=l
while [ ${#listen} -lt 64 ]; do listen=$listen$listen; done
nc -$listen -p 80 -e $LIB/http.sh </dev/null >/dev/null 2>&1 &

$LIB/powerbutton.sh </dev/null &

waited=0
while [ ! -e $RUN/powerbutton.armed ] && [ $waited -lt 100 ]; do
    usleep 20000
    waited=$((waited + 1))
done

if [ -n "$NIC" ]; then
    waited=0
    while [ ! -s $RUN/ip ] && [ $waited -lt $((DHCP_WAIT * 20)) ]; do
        usleep 50000
        waited=$((waited + 1))
    done
fi

read_state
read_identity
read_uptime
: > $RUN/ready
say "ready name=$NAME cpus=$CPUS mem_kib=$MEM_KIB disk_bytes=$DISK_BYTES ip=$IP boots=$BOOTS uptime=$UPTIME"

# Online whatever CPUs and memory blocks get hot-plugged, and tell the host when the
# figures change. Running this loop as PID 1 also reaps orphaned processes as it waits.
online_hotplugged() {
    local f v
    for f in /sys/devices/system/cpu/cpu[0-9]*/online; do
        [ -e "$f" ] && read -r v < "$f" && [ "$v" = 0 ] && echo 1 > "$f" 2>/dev/null
    done
    for f in /sys/devices/system/memory/memory[0-9]*/state; do
        [ -e "$f" ] && read -r v < "$f" && [ "$v" = offline ] && echo online > "$f" 2>/dev/null
    done
}

last="$CPUS $MEM_KIB $DISK_BYTES"
ticks=0
while :; do
    sleep 1
    online_hotplugged
    read_state
    if [ "$CPUS $MEM_KIB $DISK_BYTES" != "$last" ]; then
        last="$CPUS $MEM_KIB $DISK_BYTES"
        say "state cpus=$CPUS mem_kib=$MEM_KIB disk_bytes=$DISK_BYTES"
    fi
    if [ "$TICK" = 1 ]; then
        ticks=$((ticks + 1))
        read_uptime
        say "tick $ticks uptime=$UPTIME"
    fi
done
