#!/usr/bin/env bash
# Everything flexvm needs on a Debian machine, installed and running. Safe to run again.
#   - Debian packages (QEMU, libvirt, the kernel and busybox the tiny image is built from, the
#     lab's dnsmasq, HAProxy, PostgreSQL for the tests)
#   - libvirtd and virtlogd running (systemd when it is there, by hand otherwise)
#   - the project's virtualenv in .venv with flexvm and its test tools
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "flexvm setup needs root (it installs packages and starts libvirtd)" >&2
    exit 1
fi

# Every package whose programs flexvm, its tests or these scripts run (src/flexvm/programs.py
# lists each program with its package; tests/unit/test_programs.py checks this list against it).
PACKAGES=(
    qemu-system-x86 qemu-utils                 # the hypervisor, and qemu-img for images and overlays
    libvirt-daemon-system libvirt-daemon libvirt-clients   # libvirtd, virtlogd (system services), virsh
    libvirt-dev pkg-config gcc python3-dev python3-venv   # to build libvirt-python
    busybox-static linux-image-cloud-amd64 e2fsprogs cpio # what the tiny image is built from
    iproute2 dnsmasq-base                      # the lab: namespaces and links; DHCP on its switch
    iptables                                   # ebtables, which libvirtd's network filters (project isolation) run
    haproxy                                    # the load balancer in front of scale sets
    ipmitool                                   # fencing: power a failed host off through its management controller
    postgresql-15 postgresql-client-15         # the test suite's private PostgreSQL cluster
    python3-yaml                               # the tests parse cloud-init seeds with PyYAML, as cloud-init does
    procps tmux curl
    # Always on Debian (essential or required), listed because flexvm runs their programs too:
    util-linux mount coreutils dash hostname dpkg python3-minimal
)

missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "==> installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes
    # Other installs may hold dpkg's lock for a while: wait for it rather than fail.
    apt_wait=(-o DPkg::Lock::Timeout=900)
    apt-get "${apt_wait[@]}" update -qq
    apt-get "${apt_wait[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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
