"""The servers sharing one database: each registers itself, says it lives, and is judged dead.

Every `flexvm serve` process has a row: a random id, its machine's name, its pid and the time
the kernel started that process (so a reused pid is not mistaken for it), where it answers, and
a heartbeat renewed with its leases. A server is judged dead at once when it ran on this
machine (the same kernel boot and pid namespace, not only the same hostname) and its process
is gone (or, inside one test process, its engine was abandoned); a server on another machine
only when its leases run out.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select, update

from flexvm import __version__
from flexvm.store.db import Database
from flexvm.store.tables import ServerRow

# Engines alive in this process: a row of this machine and this pid that is not among them was
# left by an engine that stopped without a word (in tests, a simulated crash).
_LIVE_IN_THIS_PROCESS: set[str] = set()


def this_machine() -> str:
    """Where a pid names this process: the kernel's boot id and the pid namespace. Two servers
    whose hostnames agree but whose machines differ (cloned hosts, containers sharing the host's
    name) must not judge each other's pids: only their leases tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return ""
    return f"{boot}/{namespace}"


def process_started(pid: int) -> str:
    """When the kernel started the process (clock ticks since boot, field 22 of its stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    state, start = (fields[0], fields[19]) if len(fields) > 19 else ("", "")
    return "" if state == "Z" else start  # a zombie has finished: it is gone


@dataclass(frozen=True)
class ServerInfo:
    id: str
    hostname: str
    pid: int
    url: str
    version: str
    started_at: float
    heartbeat: float
    stopped_at: float | None

    def age(self, now: float) -> float:
        return now - self.heartbeat


@dataclass(frozen=True)
class ServerStatus:
    """A server as `flexvm server list` shows it: who it is, whether it lives, leads, and runs what."""

    server: ServerInfo
    state: str  # "up", "stopped", "gone" (its process ended), "silent" (no heartbeat within a lease)
    leader: bool
    operations: list[str]


def _info(row: ServerRow) -> ServerInfo:
    return ServerInfo(
        row.id, row.hostname, row.pid, row.url, row.version, row.started_at, row.heartbeat, row.stopped_at
    )


class ServerRegistry:
    def __init__(self, db: Database, url: str = "") -> None:
        self.db = db
        self.id = str(uuid.uuid4())
        self.hostname = socket.gethostname()
        self.machine = this_machine()
        self.pid = os.getpid()
        self.url = url

    def register(self) -> None:
        now = time.time()
        # Live before its row exists: another engine of this process must never see the row alone.
        _LIVE_IN_THIS_PROCESS.add(self.id)
        with self.db.session() as session:
            session.add(
                ServerRow(
                    id=self.id,
                    hostname=self.hostname,
                    machine=self.machine,
                    pid=self.pid,
                    process_started=process_started(self.pid),
                    url=self.url,
                    version=__version__,
                    started_at=now,
                    heartbeat=now,
                )
            )

    def heartbeat(self) -> None:
        with self.db.session() as session:
            session.execute(update(ServerRow).where(ServerRow.id == self.id).values(heartbeat=time.time()))

    def set_url(self, url: str) -> None:
        self.url = url
        with self.db.session() as session:
            session.execute(update(ServerRow).where(ServerRow.id == self.id).values(url=url))

    def stopped(self) -> None:
        _LIVE_IN_THIS_PROCESS.discard(self.id)
        with self.db.session() as session:
            session.execute(update(ServerRow).where(ServerRow.id == self.id).values(stopped_at=time.time()))

    def abandon(self) -> None:
        """Forget this engine without a word to the database, as a killed process would."""
        _LIVE_IN_THIS_PROCESS.discard(self.id)

    def list(self, *, forget_after: float = 86400.0) -> list[ServerInfo]:
        """Servers seen within ``forget_after`` seconds, newest first."""
        cutoff = time.time() - forget_after
        with self.db.session() as session:
            rows = session.scalars(
                select(ServerRow).where(ServerRow.heartbeat >= cutoff).order_by(ServerRow.started_at.desc())
            )
            return [_info(r) for r in rows]

    def dead_here(self, within: float) -> set[str]:
        """Servers heard from in the last ``within`` seconds that are certainly gone: stopped
        (anywhere), or of this machine with their process ended. (Older ones' leases have run
        out anyway.)"""
        cutoff = time.time() - within
        with self.db.session() as session:
            rows = session.scalars(
                select(ServerRow).where(ServerRow.heartbeat >= cutoff, ServerRow.id != self.id)
            ).all()
            found = [(r.id, r.hostname, r.machine, r.pid, r.process_started, r.stopped_at) for r in rows]
        dead = set()
        for server_id, hostname, machine, pid, started, stopped_at in found:
            if stopped_at is not None:
                dead.add(server_id)
            elif hostname != self.hostname or not machine or machine != self.machine:
                continue  # another machine (or one that did not say): its lease tells
            elif pid == self.pid:
                if server_id not in _LIVE_IN_THIS_PROCESS:
                    dead.add(server_id)
            elif process_started(pid) != started:
                dead.add(server_id)
        return dead
