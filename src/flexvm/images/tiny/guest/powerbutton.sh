#!/bin/sh
# Waits for the ACPI power button, which is what the host's graceful shutdown presses
# (libvirt's shutdown, QEMU's system_powerdown), then powers the guest off cleanly.
. /usr/lib/flexvm/lib.sh

power_off() {
    # mkdir is atomic: only the first button event shuts down, even with two buttons.
    mkdir $RUN/poweroff 2>/dev/null || exit 0
    say poweroff
    sync
    # The root disk cannot be unmounted while running from it; read-only is as safe.
    mount -o remount,ro / 2>/dev/null
    poweroff -f
}

# Each button is opened here, before the listeners start, so a press that comes right after
# the ready line is queued rather than lost; stage 2 waits for "armed" before printing it.
fd=3
for event in /sys/class/input/event*; do
    [ -r "$event/device/name" ] && read -r name < "$event/device/name" || continue
    [ "$name" = "Power Button" ] && [ $fd -le 9 ] || continue
    # A failed redirection on exec would end this shell, so check the node first.
    [ -c "/dev/input/${event##*/}" ] || continue
    eval "exec $fd< /dev/input/${event##*/}" || continue
    # evdev hands out whole 24-byte input events; any event from the button means "pressed".
    ( dd bs=24 count=1 <&$fd >/dev/null 2>&1 && power_off ) &
    fd=$((fd + 1))
done
: > $RUN/powerbutton.armed
wait
