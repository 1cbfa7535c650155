"""Configuration text and command lines for a lab's daemons. Pure: no I/O, unit-tested.

A host's /etc/libvirt starts as a copy of the machine's own ``*.conf`` files (so qemu.conf keeps
the system's QEMU user and group), then ``libvirtd.conf`` gets the lab's settings on top.
Nothing else is copied: no domains, networks (the ``default`` network would autostart a NAT
bridge inside the host), storage pools, secrets or hooks of the machine's own libvirt.
"""

from __future__ import annotations

import re
from pathlib import Path

from flexvm.lab.plan import SWITCH_BRIDGE, LabPlan

ConfValue = str | int
SEEDED_CONF_GLOB = "*.conf"
DHCP_LEASE_TIME = "1h"


def libvirtd_settings(address: str, host_uuid: str) -> dict[str, ConfValue]:
    return {
        "listen_tcp": 1,
        # --listen would also start TLS, which fails without certificates.
        "listen_tls": 0,
        "auth_tcp": "none",  # lab only: anyone who reaches the lab network may drive the host
        "listen_addr": address,
        "host_uuid": host_uuid,  # distinct per host: libvirt refuses to migrate to "itself"
        "log_outputs": "3:file:/var/log/libvirt/libvirtd.log",
    }


def _render_value(value: ConfValue) -> str:
    if isinstance(value, int):
        return str(value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_conf_keys(text: str, settings: dict[str, ConfValue]) -> str:
    """libvirt-style ``key = value`` text with ``settings`` in force: any uncommented line that
    sets one of those keys is dropped, and the lab's values are appended in a marked block."""
    keys = "|".join(re.escape(k) for k in settings)
    setter = re.compile(rf"^\s*({keys})\s*=")
    kept = [line for line in text.splitlines() if not setter.match(line)]
    block = ["", "# --- flexvm lab ---", *(f"{k} = {_render_value(v)}" for k, v in settings.items())]
    return "\n".join(kept + block) + "\n"


def hosts_file(plan: LabPlan) -> str:
    """The /etc/hosts each lab host sees: every lab host by name, so each libvirtd's hostname
    (its own UTS namespace) resolves, for itself and for a migration peer."""
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback", f"{plan.gateway}\tflexvm-gateway"]
    lines += [f"{h.address}\t{h.name}" for h in plan.hosts]
    return "\n".join(lines) + "\n"


def dnsmasq_argv(plan: LabPlan) -> list[str]:
    """DHCP only, on the switch bridge alone; reservations are files in dhcp_hosts_dir, which
    dnsmasq watches (inotify): a new or changed file takes effect without a restart."""
    dyn_start, dyn_end = plan.dynamic_range
    return [
        "dnsmasq",
        "--conf-file=/dev/null",  # not the machine's /etc/dnsmasq.conf
        "--port=0",  # no DNS
        "--no-resolv",
        "--no-hosts",
        f"--interface={SWITCH_BRIDGE}",
        "--bind-interfaces",
        "--except-interface=lo",
        f"--dhcp-range={dyn_start},{dyn_end},{plan.netmask},{DHCP_LEASE_TIME}",
        f"--dhcp-hostsdir={plan.dhcp_hosts_dir}",
        f"--dhcp-leasefile={plan.leases_file}",
        f"--pid-file={plan.dnsmasq_pid_file}",
        f"--log-facility={plan.dnsmasq_log}",
        "--log-dhcp",
        "--dhcp-authoritative",
        "--no-ping",  # nothing else hands out addresses here; saves seconds per lease
        # It reads dhcp_hosts_dir after start-up, and the lab root may sit under a directory
        # only root can enter (a 0700 home or test tmpdir): dropping to nobody would blind it.
        # It listens only inside the switch namespace, to the lab's own guests.
        "--user=root",
        # No router and no DNS server in the leases: guests can reach the lab network and
        # nothing beyond it.
        "--dhcp-option=3",
        "--dhcp-option=6",
    ]


# With shared storage, QEMU's disks are locked by virtlockd, directly on the image files (no
# lockspace directory: the lock is on the file itself, so the same file opened from two hosts
# collides, while two hosts' own disks of the same path, such as a migrating guest's copies, do not).
QEMU_LOCK_SETTINGS: dict[str, ConfValue] = {"lock_manager": "lockd"}


def reservation_line(mac: str, address: str) -> str:
    """One line of a dhcp_hosts_dir file, as the platform writes it."""
    return f"{mac.lower()},{address}\n"


def seed_files(etc_dir: Path) -> list[Path]:
    """The machine's libvirt configuration files a host's /etc/libvirt starts from."""
    return sorted(p for p in etc_dir.glob(SEEDED_CONF_GLOB) if p.is_file())


# How each of a host's daemons is started inside its namespaces. Pid files go in the host's own
# /run/libvirt: the defaults (/run/libvirtd.pid, /run/virtlogd.pid) are the machine's daemons'.
DAEMON_ARGV = {
    "virtlogd": ("virtlogd", "--daemon", "--pid-file", "/run/libvirt/virtlogd.pid"),
    "virtlockd": ("virtlockd", "--daemon", "--pid-file", "/run/libvirt/virtlockd.pid"),
    "libvirtd": ("libvirtd", "--daemon", "--listen", "--pid-file", "/run/libvirt/libvirtd.pid"),
}
