"""Opening and keeping a libvirt connection; the only place that imports ``libvirt``.

A connection is checked before use and reopened if it died (libvirtd restarted, a remote host
came back). libvirt's event loop runs in one daemon thread for the whole process (connection
events need it); client keepalives answer libvirtd's but never close a connection (see ``_open``).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from flexvm.errors import HypervisorError, HypervisorUnavailable

try:
    import libvirt
except ImportError:  # pragma: no cover - exercised only where libvirt-python is absent
    libvirt = None

T = TypeVar("T")

_event_loop_lock = threading.Lock()
_event_loop_started = False


def require_libvirt() -> Any:
    if libvirt is None:
        raise HypervisorUnavailable(
            "the libvirt Python binding is not installed: pip install libvirt-python "
            "(it needs the libvirt-dev and pkg-config Debian packages to build)"
        )
    return libvirt


def _start_event_loop() -> None:
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        lv = require_libvirt()
        # libvirt prints every error to stderr by default; flexvm reports them itself.
        lv.registerErrorHandler(lambda _ctx, _err: None, None)
        lv.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                lv.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def error_code(err: Exception) -> int | None:
    get = getattr(err, "get_error_code", None)
    return get() if get else None


def is_missing(err: Exception) -> bool:
    """True for libvirt's 'no such domain / volume / pool' errors."""
    lv = require_libvirt()
    return error_code(err) in (lv.VIR_ERR_NO_DOMAIN, lv.VIR_ERR_NO_STORAGE_VOL, lv.VIR_ERR_NO_STORAGE_POOL)


KEEPALIVE_INTERVAL = 5  # seconds
KEEPALIVE_COUNT = 720  # an hour of unanswered pings: in effect, never closed by the client


class Connection:
    """A self-healing handle on one libvirt URI."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except require_libvirt().libvirtError:
                    pass
                self._conn = None
            self._conn = self._open()
            return self._conn

    def _open(self) -> Any:
        lv = require_libvirt()
        _start_event_loop()
        try:
            conn = lv.open(self.uri)
        except lv.libvirtError as err:
            raise HypervisorUnavailable(
                f"cannot connect to libvirt at {self.uri}: {err.get_error_message()}. "
                "Is libvirtd running? (`make up` starts it; by hand: `virtlogd -d && libvirtd -d`)",
                details={"uri": self.uri},
            ) from err
        if "+" in self.uri.split(":", 1)[0]:  # remote transports only (qemu+tcp://, qemu+ssh://)
            # Keepalives on (libvirtd's pings are answered, so it keeps the connection through a
            # long migration), but so many unanswered ones allowed that the client itself never
            # closes a connection: libvirt 9.0's client crashed flexvm (a segfault in virNetClient)
            # when its keepalive closed one to a host cut off the network while calls waited on
            # it. Calls that must not hang are bounded by flexvm (hosts.call_with_timeout), one
            # at a time per host; the rest end when TCP does, or when the host answers again.
            with contextlib.suppress(lv.libvirtError):
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
        return conn

    def call(self, what: str, fn: Callable[[Any], T]) -> T:
        """Run ``fn(conn)``, turning libvirt's exceptions into flexvm's, with ``what`` as context."""
        conn = self.get()
        with self.translate(what, conn):
            return fn(conn)

    @contextmanager
    def translate(self, what: str, conn: Any = None) -> Iterator[None]:
        """Turn a libvirt error in the block into HypervisorError, or HypervisorUnavailable
        when the connection itself died (so callers can tell 'refused' from 'unreachable')."""
        lv = require_libvirt()
        try:
            yield
        except lv.libvirtError as err:
            alive = False
            try:
                alive = bool((conn or self._conn) and (conn or self._conn).isAlive())
            except lv.libvirtError:
                alive = False
            if not alive:
                with self._lock:
                    self._conn = None
                raise HypervisorUnavailable(
                    f"{what}: lost the connection to libvirt at {self.uri}: {err.get_error_message()}",
                    details={"uri": self.uri},
                ) from err
            raise HypervisorError(f"{what}: {err.get_error_message()}", details={"uri": self.uri}) from err

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except require_libvirt().libvirtError:
                    pass
                self._conn = None
