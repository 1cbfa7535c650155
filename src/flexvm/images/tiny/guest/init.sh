#!/bin/sh
# flexvm tiny image, stage 1: /init of the initramfs, PID 1.
# Loads the virtio drivers (modules in Debian's cloud kernel), then runs stage 2 from the
# root disk (/dev/vda) or, when there is none, from the initramfs itself.
export PATH=/bin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
# Without devtmpfs there is no /dev/ttyS0 to write the console lines to, nor /dev/vda.
mount -t devtmpfs devtmpfs /dev
# The firmware leaves the console mid-line (escape codes, no newline): end that line so
# every "flexvm: " line the host reads starts a line of its own.
echo > /dev/ttyS0
# From here on only emergencies reach the console: the host parses it line by line.
echo 1 > /proc/sys/kernel/printk

# The list is in dependency order, worked out from modules.dep when the image was built.
while read -r module; do
    insmod "/lib/modules/$module" 2>/dev/null
done < /etc/flexvm/modules.load

# virtio_blk normally creates vda while it is loaded; allow it a moment in case it is late.
has_virtio_disk() {
    for f in /sys/bus/virtio/devices/*/device; do
        [ -e "$f" ] && read -r id < "$f" && [ "$id" = 0x0002 ] && return 0   # 2: block device
    done
    return 1
}
if has_virtio_disk; then
    tries=0
    while [ ! -b /dev/vda ] && [ $tries -lt 100 ]; do
        usleep 20000
        tries=$((tries + 1))
    done
fi

# A disk that is not our ext4 root (a blank data disk, say) leaves us on the initramfs.
if [ -b /dev/vda ] && mount -t ext4 -o rw /dev/vda /newroot 2>/dev/null; then
    if [ -x /newroot/usr/lib/flexvm/stage2.sh ]; then
        for fs in dev proc sys; do
            mount --move "/$fs" "/newroot/$fs"
        done
        exec switch_root /newroot /usr/lib/flexvm/stage2.sh
    fi
    umount /newroot
fi
exec /usr/lib/flexvm/stage2.sh
