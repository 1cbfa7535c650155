#!/usr/bin/env bash
# Everything flexvm needs on a Debian machine, installed and running. Safe to run again.
#   - Debian packages (QEMU, libvirt, the kernel and busybox the tiny image is built from)
#   - libvirtd and virtlogd running (systemd when it is there, by hand otherwise)
#   - the project's virtualenv in .venv with flexvm and its test tools
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "flexvm setup needs root (it installs packages and starts libvirtd)" >&2
    exit 1
fi

PACKAGES=(
    qemu-system-x86 qemu-utils                 # the hypervisor, and qemu-img for images and overlays
    libvirt-daemon-system libvirt-clients      # libvirtd, virtlogd, virsh
    libvirt-dev pkg-config gcc python3-dev python3-venv   # to build libvirt-python
    busybox-static linux-image-cloud-amd64 e2fsprogs cpio # what the tiny image is built from
    iproute2 procps tmux curl
    haproxy                                    # the load balancer in front of scale sets
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

libvirt_answers() { virsh -c qemu:///system version >/dev/null 2>&1; }
if ! libvirt_answers; then
    echo "==> starting virtlogd and libvirtd"
    if [ -d /run/systemd/system ]; then
        systemctl start virtlogd libvirtd
    else
        # No systemd (containers, CI): run the daemons ourselves. virtlogd must run beside
        # libvirtd or starting a domain fails.
        [ -e /run/virtlogd.pid ] && kill -0 "$(cat /run/virtlogd.pid)" 2>/dev/null || virtlogd -d
        [ -e /run/libvirtd.pid ] && kill -0 "$(cat /run/libvirtd.pid)" 2>/dev/null || libvirtd -d
    fi
    for _ in $(seq 1 50); do libvirt_answers && break; sleep 0.2; done
    libvirt_answers || { echo "libvirtd did not come up; see /var/log/libvirt" >&2; exit 1; }
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "==> creating the virtualenv (.venv)"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.flexvm-installed
if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "==> installing flexvm and its Python dependencies"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
