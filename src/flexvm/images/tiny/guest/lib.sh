# Helpers shared by the flexvm guest scripts (sourced, busybox ash).
#
# The figures are read with shell builtins into variables rather than with $(...) and
# external tools: forks are slow under TCG, and the state loop runs every second for the
# guest's whole life.

RUN=/run/flexvm
STATE=/var/lib/flexvm
NL='
'
CR=$'\r'

# Every line for the host starts with "flexvm: " so it can be told apart from kernel output.
say() {
    echo "flexvm: $*" > /dev/ttyS0
}

# CPUS: number of online CPUs, from a range list such as "0-1,3".
count_cpus() {
    local list range n=0 IFS=,
    read -r list < /sys/devices/system/cpu/online
    for range in $list; do
        case $range in
            *-*) n=$((n + ${range#*-} - ${range%-*} + 1)) ;;
            *) n=$((n + 1)) ;;
        esac
    done
    CPUS=$n
}

# MEM_KIB: MemTotal, which grows with hot-plugged memory and shrinks with the balloon.
count_memory() {
    local key value rest
    while read -r key value rest; do
        if [ "$key" = MemTotal: ]; then
            MEM_KIB=$value
            return
        fi
    done < /proc/meminfo
}

# DISK_BYTES: size of the virtio disk as the guest sees it now (0 without one).
count_disk() {
    local sectors=0
    [ -r /sys/block/vda/size ] && read -r sectors < /sys/block/vda/size
    DISK_BYTES=$((sectors * 512))
}

read_state() {
    count_cpus
    count_memory
    count_disk
}

# UPTIME: seconds since boot, as /proc/uptime has it (two decimals).
read_uptime() {
    local rest
    read -r UPTIME rest < /proc/uptime
}

# CENTIS: uptime in hundredths of a second (the "1" prefix stops "08" reading as octal).
read_centis() {
    local up rest
    read -r up rest < /proc/uptime
    CENTIS=$(( ${up%.*} * 100 + 1${up#*.} - 100 ))
}

# Keep one CPU busy for $1 seconds: a loop of builtins, so it is this shell that burns.
burn() {
    local end
    read_centis
    end=$((CENTIS + $1 * 100))
    while [ "$CENTIS" -lt "$end" ]; do
        read_centis
    done
}

# BOOTS and IP as stage 2 recorded them; NAME as the kernel has it.
read_identity() {
    local rest
    read -r NAME rest < /proc/sys/kernel/hostname
    BOOTS=0
    [ -r "$STATE/boots" ] && read -r BOOTS rest < "$STATE/boots"
    IP=none
    [ -r "$RUN/ip" ] && read -r IP rest < "$RUN/ip"
}
