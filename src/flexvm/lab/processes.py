"""The lab's processes: pid files, liveness, and killing by PID, only once a PID is proven ours.

A PID from a pid file may be stale and reused by now. Before signalling one, the lab checks the
process's name and that it runs in the lab namespace it should (or, if that namespace file is
already gone, at least not in the caller's own network namespace): the machine's own libvirtd
and anything else in the root namespace are never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from flexvm.lab import netns

# /proc/PID/comm is cut at 15 characters: "qemu-system-x86_64" reads "qemu-system-x86".
COMMS = {
    "libvirtd": "libvirtd",
    "virtlogd": "virtlogd",
    "virtlockd": "virtlockd",
    "dnsmasq": "dnsmasq",
    "qemu": "qemu-",
}


def read_pid_file(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "pid (comm) S ...": the state follows the last ')' (comm may contain spaces or parens).
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def net_ns(pid: int | str) -> tuple[int, int] | None:
    try:
        st = os.stat(f"/proc/{pid}/ns/net")
    except OSError:
        return None
    return st.st_dev, st.st_ino


def is_ours(pid: int, kind: str, netns_name: str) -> bool:
    """Whether ``pid`` is a running ``kind`` process of the lab's namespace ``netns_name``."""
    name = comm(pid)
    if name is None or not name.startswith(COMMS[kind]) or not running(pid):
        return False
    where = net_ns(pid)
    if where is None:
        return False
    expected = netns.inode(netns_name)
    if expected is not None:
        return where == expected
    # The namespace's name is gone (an interrupted down): never a process of our own namespace.
    return where != net_ns("self")


def in_namespace(pid: int, netns_name: str) -> bool:
    """Whether ``pid`` runs in that lab namespace (for sweeping whatever is left in it)."""
    expected = netns.inode(netns_name)
    return expected is not None and running(pid) and net_ns(pid) == expected


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs; return those still running at the deadline."""
    left = [p for p in pids if running(p)]
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [p for p in left if running(p)]
    return left


def signal_pid(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def stop(pids: Iterable[int], *, grace: float = 10.0, kill_wait: float = 10.0) -> list[int]:
    """SIGTERM each PID, SIGKILL whatever is left after ``grace`` seconds. Returns PIDs that
    survived even that (should be none)."""
    targets = [p for p in pids if running(p)]
    for pid in targets:
        signal_pid(pid, signal.SIGTERM)
    left = wait_gone(targets, grace)
    for pid in left:
        signal_pid(pid, signal.SIGKILL)
    return wait_gone(left, kill_wait)


def kill(pids: Iterable[int], *, wait: float = 10.0) -> list[int]:
    """SIGKILL each PID and wait for it to go: a crash, not a shutdown."""
    targets = [p for p in pids if running(p)]
    for pid in targets:
        signal_pid(pid, signal.SIGKILL)
    return wait_gone(targets, wait)


def qemu_pids(pid_dir: Path) -> list[int]:
    """PIDs in libvirt's per-domain pid files (a host's /run/libvirt/qemu/*.pid)."""
    if not pid_dir.is_dir():
        return []
    # driver.pid is the QEMU driver's own lock, holding libvirtd's PID: not a guest.
    found = (read_pid_file(p) for p in sorted(pid_dir.glob("*.pid")) if p.name != "driver.pid")
    return [p for p in found if p is not None]
