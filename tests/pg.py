"""A private PostgreSQL 15 for the tests, never the machine's own cluster.

``PrivateCluster.create()`` runs Debian's ``initdb`` in a fresh temporary directory and starts the
server on a free loopback port: it listens on 127.0.0.1 only, keeps its unix socket in that
directory, and lets in only the one role it was made with, by a random password. PostgreSQL refuses
to run as root, so when the tests run as root the cluster runs as the ``postgres`` system user (the
Debian package creates it), who is given the directory. ``destroy()`` stops it and removes the
directory. A watchdog process does the same if this process ends without calling it (killed, or
interrupted past pytest's own teardown), so no server is ever left behind.

Nothing here uses ``pg_ctlcluster``, the Debian cluster configuration or port 5432.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SERVER_USER = "postgres"  # who runs the server when the tests run as root
ROLE = "flexvm"
START_TIMEOUT = 30  # seconds pg_ctl waits for the server to accept connections

# Durability costs time and protects nothing in a throwaway cluster. The zone is deliberately not
# UTC, so code that trusts the server's zone for timestamps fails here rather than on a user's box.
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "timezone": "'Asia/Kolkata'",
    "log_min_messages": "warning",
}

# Runs beside the test process and waits for its end (the pipe's EOF), however it ends; then stops
# the server if it still runs and removes the directory. After a normal destroy() it finds nothing.
_WATCHDOG = """
import os, shutil, subprocess, sys
sys.stdin.buffer.read()
pg_ctl, data, root, user = sys.argv[1:5]
if os.path.exists(os.path.join(data, "postmaster.pid")):
    switch = {"user": user, "group": user, "extra_groups": []} if user else {}
    subprocess.run([pg_ctl, "stop", "-D", data, "-m", "immediate", "-w", "-t", "30"], cwd=root,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, **switch)
shutil.rmtree(root, ignore_errors=True)
"""


class ClusterError(RuntimeError):
    """The private cluster could not be made or started; the message carries its log."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PrivateCluster:
    root: Path  # the private directory: data, socket, log
    password: str
    port: int = 0
    user: str | None = None  # the server's OS user when it is not this process's
    _watchdog: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    # --- life ----------------------------------------------------------------------------------

    @classmethod
    def create(cls, attempts: int = 3) -> PrivateCluster:
        """initdb and start a cluster; raises ClusterError (never skips) if that cannot be done."""
        if not (PG_BIN / "initdb").exists():
            raise ClusterError(f"PostgreSQL 15 is not installed ({PG_BIN}): scripts/setup.sh installs postgresql-15")
        user = SERVER_USER if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="flexvm-pg-"))
        cluster = cls(root, secrets.token_hex(16), user=user)
        try:
            cluster._start_watchdog()
            cluster._give(root)
            cluster._initdb()
            for attempt in range(attempts):
                # A free port can be taken by someone else before the server binds it: try another.
                cluster._configure(_free_port())
                try:
                    cluster.start()
                    break
                except ClusterError:
                    if attempt == attempts - 1:
                        raise
            return cluster
        except BaseException:
            cluster.destroy()
            raise

    def start(self) -> None:
        """Start the server and wait (with pg_ctl's deadline) until it accepts connections."""
        self._pg_ctl("start", "-w", "-t", str(START_TIMEOUT), "-l", str(self.log))

    def stop(self) -> None:
        """Stop it by its data directory: sessions are ended, nothing is waited for."""
        self._pg_ctl("stop", "-m", "fast", "-w", "-t", str(START_TIMEOUT))

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        """Stop the server if it runs and remove the whole directory. Safe to call twice."""
        try:
            if self.running:
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
            if self._watchdog is not None:
                self._watchdog.communicate(timeout=60)  # closes its stdin: it checks and exits
                self._watchdog = None

    # --- databases -----------------------------------------------------------------------------

    def create_database(self, name: str, template: str = "template0") -> float:
        """CREATE DATABASE from a template; returns the seconds it took."""
        started = time.perf_counter()
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return time.perf_counter() - started

    def drop_database(self, name: str) -> None:
        # FORCE ends sessions a test may have left open (an engine it did not dispose of).
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def execute(self, database: str, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url(database, driver="postgresql"), autocommit=True) as conn:
            cursor = conn.execute(sql)  # type: ignore[call-overload]
            return cursor.fetchall() if cursor.description else []

    def _admin(self, sql: str) -> None:
        self.execute("postgres", sql)

    # --- helpers -------------------------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 120) -> None:
        switch: dict[str, Any] = {"user": self.user, "group": self.user, "extra_groups": []} if self.user else {}
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(self.root)}
        done = subprocess.run(
            args, cwd=self.root, env=env, capture_output=True, text=True, timeout=timeout, check=False, **switch
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise ClusterError(
                f"{' '.join(args[:2])} failed ({done.returncode}):\n{done.stdout}{done.stderr}\nserver log:\n{log}"
            )

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(PG_BIN / "pg_ctl"), args[0], "-D", str(self.data), *args[1:])

    def _initdb(self) -> None:
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        self._give(password_file)
        try:
            self._run(
                str(PG_BIN / "initdb"), "-D", str(self.data), "-U", ROLE, f"--pwfile={password_file}",
                "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync", "--no-instructions",
            )  # fmt: skip
        finally:
            password_file.unlink()

    def _configure(self, port: int) -> None:
        """Written to postgresql.auto.conf, so a restart (pg_ctl start alone) keeps them."""
        self.port = port
        lines = [f"{key} = {value}" for key, value in SETTINGS.items()]
        lines += [f"port = {port}", f"unix_socket_directories = '{self.root}'"]
        (self.data / "postgresql.auto.conf").write_text("\n".join(lines) + "\n")
        self._give(self.data / "postgresql.auto.conf")

    def _give(self, path: Path) -> None:
        """Make the server's user the owner of what this process wrote for it."""
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _start_watchdog(self) -> None:
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(PG_BIN / "pg_ctl"), str(self.data), str(self.root), self.user or ""],
            stdin=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C meant for pytest must not end it before pytest cleans up
        )


class DatabaseSupply:
    """Fresh databases copied from a template, each made while the test before it runs.

    CREATE DATABASE from a template takes 0.1-0.5 s here (the server copies a few MB of catalogs);
    made one step ahead, in the server's process on the other core, a test rarely waits for it.
    Drops run on the same worker, after the test, so they never race the copy of the template.
    """

    def __init__(self, cluster: PrivateCluster, template: str) -> None:
        self.cluster = cluster
        self.template = template
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-databases")
        self._next: Future[str] = self._worker.submit(self._make)

    def take(self) -> str:
        name = self._next.result()  # a failed CREATE DATABASE is raised here, in the test's setup
        self._next = self._worker.submit(self._make)
        return name

    def give_back(self, name: str) -> None:
        self._worker.submit(self.cluster.drop_database, name)

    def close(self) -> None:
        """Wait for the worker; what it made and nobody took goes with the cluster."""
        self._worker.shutdown(wait=True, cancel_futures=True)

    def _make(self) -> str:
        name = f"test_{uuid.uuid4().hex[:16]}"
        self.cluster.create_database(name, self.template)
        return name
