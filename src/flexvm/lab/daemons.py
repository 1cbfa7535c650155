"""Starting the lab's daemons: dnsmasq in the switch, virtlogd and libvirtd in each host.

Each daemon forks into the background itself (``--daemon``) only once it has started, and
reports a failed start in its exit status, so a zero exit means it runs; its PID is then read
from its pid file, which lives in the lab root (never the system's /run/*.pid).
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from flexvm.lab import netns, processes, system
from flexvm.lab.config import DAEMON_ARGV, dnsmasq_argv
from flexvm.lab.mountns import HostNamespaces
from flexvm.lab.plan import LIBVIRT_TCP_PORT, SWITCH_NETNS, HostPlan, LabPlan
from flexvm.lab.system import LabCommandError

PID_FILE_PATIENCE = 15.0
LISTEN_PATIENCE = 60.0
TCP_LISTEN = "0A"


def _start(argv: list[str], log: Path, what: str) -> None:
    """Run a self-daemonizing command; its output (and the daemon's, if it keeps the fds) goes
    to ``log``, never to a pipe the daemon could hold open."""
    try:
        system.run(argv, log=log)
    except LabCommandError as err:
        if "returncode" not in err.details:  # it did not finish: the message says so
            raise
        raise LabCommandError(
            f"{what} failed to start ({err.details['returncode']}): {err.details['output']}", details=err.details
        ) from err


def wait_pid(pid_file: Path, kind: str, netns_name: str, timeout: float | None = None) -> int:
    """The PID in ``pid_file`` once it names a running ``kind`` process in that namespace."""
    timeout = PID_FILE_PATIENCE if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        pid = processes.read_pid_file(pid_file)
        if pid is not None and processes.is_ours(pid, kind, netns_name):
            return pid
        if time.monotonic() > deadline:
            raise LabCommandError(f"{kind} in {netns_name} wrote no usable pid file {pid_file} in {timeout:.0f} s")
        time.sleep(0.05)


def start_dnsmasq(plan: LabPlan) -> int:
    plan.switch_dir.mkdir(parents=True, exist_ok=True)
    plan.dhcp_hosts_dir.mkdir(parents=True, exist_ok=True)
    plan.leases_file.touch()
    argv = ["nsenter", f"--net={netns.NETNS_DIR / SWITCH_NETNS}", "--", *dnsmasq_argv(plan)]
    _start(argv, plan.switch_dir / "start.log", "dnsmasq (lab DHCP)")
    return wait_pid(plan.dnsmasq_pid_file, "dnsmasq", SWITCH_NETNS)


def start_host_daemon(host: HostPlan, ns: HostNamespaces, kind: str) -> int:
    """Start ``kind`` (virtlogd, virtlockd or libvirtd) inside the host; its PID."""
    pid_file = host.pid_file(kind)
    _start([*ns.enter(), *DAEMON_ARGV[kind]], host.daemon_log, f"{kind} of {host.name}")
    return wait_pid(pid_file, kind, host.netns)


def listening(pid: int, address: str, port: int = LIBVIRT_TCP_PORT) -> bool:
    """Whether ``pid``'s network namespace has a TCP socket listening on address:port.

    Read from /proc/PID/net/tcp (the table of that process's namespace), so checking sends
    nothing: probing the port with a connection would make libvirtd log an error each time.
    """
    try:
        table = Path(f"/proc/{pid}/net/tcp").read_text()
    except OSError:
        return False
    wanted = f"{_proc_ipv4(address)}:{port:04X}"
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[1] == wanted and fields[3] == TCP_LISTEN:
            return True
    return False


def _proc_ipv4(address: str) -> str:
    """10.213.0.11 -> '0B00D50A', as /proc/net/tcp writes it (host byte order)."""
    return f"{struct.unpack('=I', socket.inet_aton(address))[0]:08X}"


def wait_listening(address: str, pid: int, what: str, timeout: float | None = None) -> None:
    timeout = LISTEN_PATIENCE if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while not listening(pid, address):
        if not processes.running(pid):
            raise LabCommandError(f"{what} exited before it listened on {address}:{LIBVIRT_TCP_PORT}")
        if time.monotonic() > deadline:
            raise LabCommandError(f"{what} did not listen on {address}:{LIBVIRT_TCP_PORT} in {timeout:.0f} s")
        time.sleep(0.05)
