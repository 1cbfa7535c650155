"""flexvm's own HAProxy: started, reloaded without dropping a connection, drained, measured, stopped.

This is not the system's haproxy service. Everything lives in one run directory (``$FLEXVM_HOME/lb``)::

    haproxy.cfg      the configuration (rendered by ``haproxy_config.render_config``)
    server-state     server states carried across reloads and restarts
    haproxy.pid      the master's pid (master-worker mode)
    admin.sock       the worker's runtime API (level admin)
    master.sock      the master CLI

How a change is applied without dropping a connection: the new configuration is checked with
``haproxy -c`` first, the running servers' states are dumped into the state file, then the master
is sent SIGUSR2. It starts a new worker, which takes the listening sockets over from the old one
through the admin socket (``expose-fd listeners``), loads the state file, and starts accepting;
the old worker stops accepting and finishes the requests it has (``hard-stop-after`` bounds it).

Errors: ``LoadBalancerError`` (502, in ``flexvm.errors``' tree; importable from here too) when
HAProxy refuses a configuration, or does not start, reload or answer.

Sockets are spoken to with the ``socket`` module; processes are only ever signalled by the pid in
our own pid file.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import io
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from flexvm import programs
from flexvm.errors import LoadBalancerError, NotFound
from flexvm.scaling.haproxy_config import (
    ADMIN_SOCKET,
    CONFIG_FILE,
    MASTER_SOCKET,
    PID_FILE,
    STATE_FILE,
    Backend,
    Frontend,
    check_name,
    merge_server_state,
    render_config,
)

__all__ = ["Backend", "Frontend", "FrontendStatus", "HAProxy", "LoadBalancerError", "ServerStatus", "render_config"]

SOCKET_TIMEOUT = 5.0
READY_TIMEOUT = 15.0
POLL = 0.05


@dataclass(frozen=True)
class ServerStatus:
    """One server (instance) as HAProxy's ``show stat`` sees it."""

    frontend: str  # the scale set's name (the backend is be_<frontend>)
    server: str  # the VM's name
    status: str  # HAProxy's text: UP, DOWN, "UP 1/2" (going down), "DOWN 1/2" (going up), MAINT, DRAIN, no check
    check_status: str  # L7OK, L7STS, L4CON, INI, ... ("* " prefix while a check runs is removed)
    current_sessions: int
    total_sessions: int
    requests_total: int = 0  # times the server was picked (lbtot): one per request with http-server-close


@dataclass(frozen=True)
class FrontendStatus:
    """One frontend's counters; the caller derives request rates from ``requests_total``."""

    name: str
    requests_total: int
    current_sessions: int
    total_sessions: int = 0
    status: str = ""


def _pid_alive(pid: int) -> bool:
    """True when ``pid`` is a live haproxy process (a zombie or another program does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and comm.startswith("haproxy")


def _int(value: str) -> int:
    return int(value) if value.strip().lstrip("-").isdigit() else 0


class HAProxy:
    """One HAProxy master-worker process tree, owned by flexvm, in ``run_dir``."""

    def __init__(self, run_dir: Path, binary: str = "haproxy") -> None:
        self.run_dir = Path(run_dir)
        self.binary = binary
        self._lock = threading.Lock()

    # -- paths ------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.run_dir / CONFIG_FILE

    @property
    def state_path(self) -> Path:
        return self.run_dir / STATE_FILE

    @property
    def pid_path(self) -> Path:
        return self.run_dir / PID_FILE

    @property
    def admin_socket(self) -> Path:
        return self.run_dir / ADMIN_SOCKET

    @property
    def master_socket(self) -> Path:
        return self.run_dir / MASTER_SOCKET

    def _binary(self) -> str:
        """A path given is used as is; a name is found through ``flexvm.programs``."""
        if "/" in self.binary:
            return self.binary
        return programs.find(self.binary)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One change at a time, across threads and across flexvm processes sharing the run dir."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with self._lock, (self.run_dir / "lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- sockets ----------------------------------------------------------------------------

    def _ask(self, path: Path, command: str, timeout: float = SOCKET_TIMEOUT) -> str:
        """One command on a HAProxy CLI socket (non-interactive: it answers, then closes)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(command.encode() + b"\n")
            sock.shutdown(socket.SHUT_WR)  # the master CLI waits for the end of input before closing
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def runtime(self, command: str) -> str:
        """A runtime API command on the worker's admin socket; raises when HAProxy is not there."""
        try:
            return self._ask(self.admin_socket, command)
        except OSError as err:
            raise LoadBalancerError(f"HAProxy's runtime API did not answer '{command}': {err}") from err

    def _worker_pid(self) -> int | None:
        """The pid of the worker answering on the admin socket, or None."""
        try:
            info = self._ask(self.admin_socket, "show info", timeout=2.0)
        except OSError:
            return None
        for line in info.splitlines():
            if line.startswith("Pid:"):
                return _int(line.split(":", 1)[1])
        return None

    def _master_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None

    def _show_proc(self) -> tuple[set[int], int]:
        """The current workers' pids and the master's failed-reload count, from the master CLI."""
        text = self._ask(self.master_socket, "show proc", timeout=2.0)
        workers: set[int] = set()
        failed = 0
        section = "master"
        for line in text.splitlines():
            head = line.strip()
            if head.startswith("#"):
                section = "master" if head.startswith("#<PID>") else ("workers" if head == "# workers" else "other")
                continue
            fields = line.split()
            if not fields:
                continue
            if section == "master" and len(fields) > 1 and fields[1] == "master" and "[failed:" in line:
                failed = _int(line.split("[failed:", 1)[1].split("]", 1)[0])
            elif section == "workers" and len(fields) > 1 and fields[1] == "worker":
                workers.add(int(fields[0]))
        return workers, failed

    # -- state ------------------------------------------------------------------------------

    def running(self) -> bool:
        """The master in our pid file is alive and its worker answers on the admin socket."""
        pid = self._master_pid()
        return pid is not None and _pid_alive(pid) and self._worker_pid() is not None

    def _write_atomic(self, path: Path, text: str) -> None:
        # A temporary name of this writer's own: two writers sharing one would rename each other's.
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)

    def save_state(self) -> None:
        """Record the running servers' states now, so a restart after a kill comes back with them
        (a server admitted since the last reload would otherwise return DOWN until its checks pass)."""
        with self._locked():
            self._save_state()

    def _save_state(self, frontends: Sequence[Frontend] | None = None) -> None:
        """Dump the running servers' states into the state file (merged for ``frontends`` if given)."""
        dump = self.runtime("show servers state")
        if frontends is None:
            if dump.startswith("1\n"):
                self._write_atomic(self.state_path, dump)
            return
        self._write_atomic(self.state_path, merge_server_state(dump, frontends))

    def _check_config(self, path: Path) -> None:
        done = subprocess.run(
            [self._binary(), "-c", "-f", str(path)], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode != 0:
            message = (done.stderr + done.stdout).strip()
            raise LoadBalancerError(f"HAProxy refused the configuration: {message}", details={"output": message})

    # -- lifecycle --------------------------------------------------------------------------

    def apply(self, frontends: Sequence[Frontend]) -> None:
        """Make HAProxy serve exactly ``frontends``: start it, or reload it without dropping a connection.

        The new configuration is checked before anything changes; a refused one raises
        ``LoadBalancerError`` and leaves the running HAProxy and its files as they were. Nothing is
        done when the configuration is unchanged and HAProxy is running.
        """
        text = render_config(frontends, self.run_dir)
        with self._locked():
            running = self.running()
            if running and self.config_path.exists() and self.config_path.read_text() == text:
                return
            self._install(text, frontends, live_states=running)
            if running:
                self._reload()
            else:
                self._kill_leftovers()
                self._start()

    def _install(self, text: str, frontends: Sequence[Frontend], *, live_states: bool) -> None:
        """Check ``text`` with ``haproxy -c``, then put it and the merged server states in place.

        ``live_states``: the states come from the running worker; else from the last saved file.
        A refused configuration raises ``LoadBalancerError`` with nothing in place changed.
        """
        candidate = self.run_dir / f".{CONFIG_FILE}.new"
        candidate.write_text(text)
        try:
            self._check_config(candidate)
        except LoadBalancerError:
            candidate.unlink(missing_ok=True)
            raise
        if live_states:
            saved = self.runtime("show servers state")
        else:
            saved = self.state_path.read_text() if self.state_path.exists() else ""
        self._write_atomic(self.state_path, merge_server_state(saved, frontends))
        os.replace(candidate, self.config_path)

    def ensure_running(self, frontends: Sequence[Frontend]) -> bool:
        """Start HAProxy again if it is gone (killed, crashed); True when it had to.

        It comes back with the configuration for ``frontends`` and the server states last saved (at
        the last apply, drain or scaling pass), so a drained server stays drained.
        """
        if self.running():
            return False
        text = render_config(frontends, self.run_dir)
        with self._locked():
            if self.running():
                return False
            self._kill_leftovers()
            self._install(text, frontends, live_states=False)
            self._start()
        return True

    def _start(self) -> None:
        for stale in (self.admin_socket, self.master_socket, self.pid_path):
            stale.unlink(missing_ok=True)
        command = [
            self._binary(), "-W", "-D", "-f", str(self.config_path), "-p", str(self.pid_path),
            "-S", f"{self.master_socket},mode,600",
        ]  # fmt: skip
        # -D: the launcher returns once the master is daemonized; its output is only startup notices.
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
        if done.returncode != 0:
            message = (done.stderr + done.stdout).strip()
            raise LoadBalancerError(f"HAProxy did not start: {message}", details={"output": message})
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.running():
            if time.monotonic() > deadline:
                raise LoadBalancerError(f"HAProxy started but did not answer on {self.admin_socket} in time")
            time.sleep(POLL)

    def _reload(self) -> None:
        """SIGUSR2 to the master; wait until a new worker answers on the admin socket."""
        old_workers, failed_before = self._show_proc()
        old_worker = self._worker_pid()
        master = self._master_pid()
        if master is None:
            raise LoadBalancerError("HAProxy's pid file vanished during a reload")
        os.kill(master, signal.SIGUSR2)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            time.sleep(POLL)
            try:
                workers, failed = self._show_proc()
            except OSError:  # the master re-executes itself; its CLI is briefly away
                workers, failed = set(), failed_before
            if failed > failed_before:
                raise LoadBalancerError("HAProxy's reload failed; it keeps serving the previous configuration")
            new = workers - old_workers - {old_worker}
            if new and self._worker_pid() in new:
                return
            if time.monotonic() > deadline:
                raise LoadBalancerError("HAProxy's new worker did not answer in time after a reload")

    def _kill_leftovers(self) -> None:
        """Before a fresh start: end what is left of a previous HAProxy that no longer serves.

        A master whose worker stopped answering, or a worker that outlived its master, would
        otherwise share the port with the new one (HAProxy binds with SO_REUSEPORT).
        """
        for pid in (self._master_pid(), self._worker_pid()):
            if pid is None or not _pid_alive(pid):
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5.0
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(POLL)

    def stop(self, timeout: float = 5.0) -> None:
        """Let the requests in flight finish (up to ``timeout``), then SIGTERM (SIGKILL if it lingers).

        HAProxy's own soft stop (SIGUSR1) was not used: in master-worker mode 2.6.12's worker did not
        exit within 15 s even with no client at all, so "in flight" is read from ``show stat`` instead.
        The server states are saved first, so a later start comes back with them.
        """
        with self._locked():
            master = self._master_pid()
            if master is not None and _pid_alive(master):
                with contextlib.suppress(LoadBalancerError):
                    self._save_state()
                    deadline = time.monotonic() + timeout
                    while time.monotonic() < deadline and any(f.current_sessions for f in self.frontends().values()):
                        time.sleep(0.1)
                for sig in (signal.SIGTERM, signal.SIGKILL):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(master, sig)
                    deadline = time.monotonic() + 5.0
                    while _pid_alive(master) and time.monotonic() < deadline:
                        time.sleep(POLL)
                    if not _pid_alive(master):
                        break
            self._kill_leftovers()
            for path in (self.admin_socket, self.master_socket, self.pid_path):
                path.unlink(missing_ok=True)

    # -- runtime changes --------------------------------------------------------------------

    def _set_state(self, frontend: str, server: str, state: str) -> None:
        check_name("frontend", frontend)
        check_name("server", server)
        # Locked: drains of several servers run at once, and each saves the whole state file.
        with self._locked():
            answer = self.runtime(f"set server be_{frontend}/{server} state {state}").strip()
            if answer:
                if "No such" in answer:
                    raise NotFound("load balancer server", f"{frontend}/{server}")
                raise LoadBalancerError(f"HAProxy refused to set {frontend}/{server} to {state}: {answer}")
            self._save_state()  # so a restart after a crash keeps it

    def drain(self, frontend: str, server: str, timeout: float) -> bool:
        """Send ``server`` no new request; wait until its current ones finish. True if it emptied in time."""
        self._set_state(frontend, server, "drain")
        deadline = time.monotonic() + timeout
        while True:
            status = next((s for s in self.servers() if s.frontend == frontend and s.server == server), None)
            if status is None or status.current_sessions == 0:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    # -- measurements -----------------------------------------------------------------------

    def _stat_rows(self) -> list[dict[str, str]]:
        text = self.runtime("show stat")
        if not text.startswith("# "):
            raise LoadBalancerError(f"unexpected answer to 'show stat': {text[:200]!r}")
        return list(csv.DictReader(io.StringIO(text[2:])))

    def servers(self) -> list[ServerStatus]:
        """Every server of every scale set, from ``show stat``."""
        result = []
        for row in self._stat_rows():
            proxy, name = row.get("pxname", ""), row.get("svname", "")
            if not proxy.startswith("be_") or name in ("FRONTEND", "BACKEND"):
                continue
            result.append(
                ServerStatus(
                    frontend=proxy[3:],
                    server=name,
                    status=row.get("status", ""),
                    check_status=row.get("check_status", "").removeprefix("* "),
                    current_sessions=_int(row.get("scur", "")),
                    total_sessions=_int(row.get("stot", "")),
                    requests_total=_int(row.get("lbtot", "")),
                )
            )
        return result

    def frontends(self) -> dict[str, FrontendStatus]:
        """Each scale set's frontend counters, by set name, from ``show stat``."""
        result = {}
        for row in self._stat_rows():
            proxy = row.get("pxname", "")
            if row.get("svname") != "FRONTEND" or not proxy.startswith("fe_"):
                continue
            result[proxy[3:]] = FrontendStatus(
                name=proxy[3:],
                requests_total=_int(row.get("req_tot", "")),
                current_sessions=_int(row.get("scur", "")),
                total_sessions=_int(row.get("stot", "")),
                status=row.get("status", ""),
            )
        return result
