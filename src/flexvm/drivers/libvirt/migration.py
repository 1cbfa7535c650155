"""Live migration between libvirt hosts: peer to peer, with the guest's disks, watched as it runs.

The source's libvirtd drives the migration (``VIR_MIGRATE_PEER2PEER``): it connects to the
destination's libvirtd itself, so this process needs no connection to the destination to move
a guest. Flags: ``LIVE | PEER2PEER | PERSIST_DEST | UNDEFINE_SOURCE | AUTO_CONVERGE``, plus
``NON_SHARED_INC`` when the disks are copied. With ``NON_SHARED_INC`` QEMU mirrors only the top
layer of each disk (the VM's overlay) over NBD; its backing image must already be on the
destination, and so must an *empty* overlay of the same name, size and backing (the caller
makes it: a stale one would keep whatever clusters the source never wrote).

How a migration is helped to finish within ``request.max_seconds``:

1. auto-converge from the start: QEMU throttles the guest's vCPUs more and more while memory is
   dirtied faster than it is sent;
2. post-copy, if ``request.allow_postcopy`` and the destination can do it, after
   ``POSTCOPY_AFTER`` of the time: the guest moves at once and its remaining pages follow on
   demand. A destination whose QEMU cannot (it needs userfaultfd; QEMU 7.2 running as an
   unprivileged user, with ``vm.unprivileged_userfaultfd = 0``, cannot) refuses the whole
   migration before anything is copied; the migration is then started again at once without
   post-copy, and the refusal remembered per destination for the life of the process;
3. at ``max_seconds`` the job is aborted and ``OperationTimeout`` raised; the guest keeps
   running on the source with its disks as they were. Once in post-copy there is no going
   back (neither host has the whole guest), so that phase is waited out instead.

Any failure leaves the guest running on the source: if libvirt left it paused (it pauses it for
the switch-over), it is resumed. A failure *during post-copy* is the one exception, reported
as such: libvirt leaves the guest paused on the source (``post-copy failed``) and running on
the destination with part of its memory missing.

The figures come from libvirt: while the job runs, ``jobStats()`` of the source is polled a few
times a second and passed to ``progress`` (an exception from ``progress`` aborts the migration
and propagates: a way to cancel); at the end, the completed job's statistics (downtime, bytes
sent) are taken from the source's ``JOB_COMPLETED`` event, which arrives before the source
forgets the guest, or else from the destination's completed incoming job. The polling, the
abort and post-copy go through a second connection to the source: libvirt's client may hold
every other call on the connection that runs ``migrateToURI3`` until the migration ends.

Under TCG, QEMU before 9.0 loses some of the guest's memory writes while it tracks them for
migration (fixed upstream by "physmem: Fix migration dirty bitmap coherency with TCG memory
access", QEMU commit 03bfc2188f): a guest that writes memory hard while it moves can arrive
corrupted (Debian 12's QEMU 7.2 has the bug). KVM guests are not affected.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flexvm.drivers.libvirt.connection import Connection, require_libvirt
from flexvm.errors import FlexvmError, HypervisorError, HypervisorUnavailable, InvalidInput, OperationTimeout
from flexvm.model.guest import MigrationProgress, MigrationRequest, MigrationResult

POLL_INTERVAL = 0.25  # seconds between two looks at the job (and two progress calls)
POSTCOPY_AFTER = 0.5  # fraction of max_seconds after which a migration still running goes post-copy
WIND_DOWN_PATIENCE = 60.0  # seconds to wait for libvirt to end an aborted or failed job
POSTCOPY_PATIENCE = 600.0  # seconds a post-copy phase may take past max_seconds before giving up on it
COMPLETED_EVENT_PATIENCE = 2.0  # seconds to wait for the completed job's statistics event

# libvirt's words when the destination's QEMU cannot do post-copy (QEMU's "Postcopy is not
# supported"), matched loosely: the error code alone (internal error) says nothing.
_POSTCOPY_REFUSALS = ("postcopy is not supported", "post-copy is not supported", "userfaultfd")
_no_postcopy: set[str] = set()  # destination URIs that refused post-copy in this process
_no_postcopy_lock = threading.Lock()


def postcopy_refused_by(dest_uri: str) -> bool:
    """Whether this process has seen ``dest_uri`` refuse post-copy (so it is no longer tried there)."""
    with _no_postcopy_lock:
        return dest_uri in _no_postcopy


def migrate(
    connection: Connection, dom: Any, request: MigrationRequest, progress: Callable[[MigrationProgress], None] | None
) -> MigrationResult:
    """Move the running guest ``dom`` to ``request.dest_uri``; see the module docstring."""
    _check_request(request)
    lv = require_libvirt()
    name = dom.name()
    started = time.monotonic()
    with connection.translate(f"preparing to migrate {name}"):
        was_running = dom.state()[0] == lv.VIR_DOMAIN_RUNNING
        uuid = dom.UUIDString()
        try:
            dom.migrateSetMaxDowntime(int(request.max_downtime_ms), 0)
            downtime_set = True
        except lv.libvirtError:  # an older libvirt takes it only while a migration runs
            downtime_set = False
    # While migrateToURI3 runs on a connection, libvirt's client may hold back every other call
    # on that connection until the migration ends (seen with libvirt 9.0: jobStats, state, info
    # each waited seconds, at random). The job is therefore watched, helped and aborted through a
    # second connection to the source.
    watcher = Connection(connection.uri)
    try:
        watched = watcher.call(f"watching the migration of {name}", lambda conn: conn.lookupByUUIDString(uuid))
        postcopy = request.allow_postcopy and not postcopy_refused_by(request.dest_uri)
        first_try: _PostcopyRefused | None = None
        while True:
            watch = _Watch(connection, dom, watcher, watched, request, progress, started, postcopy)
            watch.downtime_set = downtime_set
            try:
                return watch.run()
            except _PostcopyRefused as refused:
                # Failed before anything was sent, with post-copy asked for: again without it.
                if refused.certain:
                    with _no_postcopy_lock:
                        _no_postcopy.add(request.dest_uri)
                first_try = refused
                postcopy = False
            except BaseException as err:
                state = None if watch.in_postcopy else _keep_running_here(watched, was_running)
                if isinstance(err, FlexvmError):
                    if first_try is not None:
                        err.details["first_attempt_with_postcopy"] = first_try.message
                    if state is not None:
                        err.details["state_on_source"] = state
                raise
    finally:
        watcher.close()


# --------------------------------------------------------------------------- the job


class _PostcopyRefused(Exception):
    """An attempt with post-copy failed before anything was sent: certainly because the
    destination cannot do post-copy (``certain``, it said so), or perhaps."""

    def __init__(self, message: str, certain: bool) -> None:
        super().__init__(message)
        self.message = message
        self.certain = certain


@dataclass
class _Job:
    """``migrateToURI3`` in a thread of its own: it blocks until the migration ends."""

    dom: Any
    dest_uri: str
    params: dict[str, Any]
    flags: int
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"migrate-{self.dom.name()}", daemon=True).start()

    def _run(self) -> None:
        try:
            self.dom.migrateToURI3(self.dest_uri, self.params, self.flags)
        except BaseException as err:  # handed to the watching thread
            self.error = err
        finally:
            self.done.set()


class _CompletedStats:
    """The source's JOB_COMPLETED event: the completed job's statistics, delivered just before the
    source undefines the guest (after which ``jobStats`` can no longer be asked)."""

    def __init__(self, connection: Connection, dom: Any) -> None:
        lv = require_libvirt()
        self.stats: dict[str, Any] | None = None
        self.arrived = threading.Event()
        self._conn: Any = None
        self._callback_id: int | None = None
        uuid = dom.UUIDString()

        def on_event(_conn: Any, event_dom: Any, params: dict[str, Any], _opaque: Any) -> None:
            if event_dom.UUIDString() == uuid:
                self.stats = dict(params)
                self.arrived.set()

        # Best effort: without the event, the destination's figures are used instead.
        with contextlib.suppress(lv.libvirtError, HypervisorError):
            self._conn = connection.get()
            self._callback_id = self._conn.domainEventRegisterAny(
                dom, lv.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, on_event, None
            )

    def wait(self, timeout: float) -> dict[str, Any] | None:
        self.arrived.wait(timeout)
        return self.stats

    def close(self) -> None:
        if self._callback_id is not None:
            with contextlib.suppress(require_libvirt().libvirtError):
                self._conn.domainEventDeregisterAny(self._callback_id)
            self._callback_id = None


class _Watch:
    """Starts one migration attempt and watches it to its end: progress, help, deadline."""

    def __init__(
        self,
        connection: Connection,
        dom: Any,
        watcher: Connection,
        watched: Any,
        request: MigrationRequest,
        progress: Callable[[MigrationProgress], None] | None,
        started: float,
        postcopy: bool,
    ) -> None:
        self.connection = connection
        self.dom = dom  # runs the migration (on ``connection``)
        self.watcher = watcher
        self.watched = watched  # the same guest, on ``watcher``: for every other call meanwhile
        self.name = dom.name()
        self.request = request
        self.progress = progress
        self.started = started
        self.postcopy = postcopy
        self.in_postcopy = False
        self.throttled = False
        self.last: dict[str, Any] = {}  # the job's statistics at the last look
        self.at_abort: dict[str, Any] = {}
        self.downtime_set = True  # False: set the maximum downtime once the job runs

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def run(self) -> MigrationResult:
        completed = _CompletedStats(self.watcher, self.watched)
        flags = migration_flags(self.request, self.postcopy)
        job = _Job(self.dom, self.request.dest_uri, migration_params(self.request), flags)
        try:
            job.start()
            aborted = self._watch(job)
            if job.error is not None:
                raise self._failure(job.error, aborted)
            # Done, even if an abort came too late to stop it: the guest is on the destination.
            return self._result(completed.wait(COMPLETED_EVENT_PATIENCE))
        except BaseException:
            if not job.done.is_set():  # e.g. the progress callback raised: stop the migration
                self._abort()
                job.done.wait(WIND_DOWN_PATIENCE)
            raise
        finally:
            completed.close()

    def _watch(self, job: _Job) -> bool:
        """Poll until the job ends; True when the deadline passed and an abort was asked for."""
        deadline = self.request.max_seconds
        aborted_at: float | None = None
        while not job.done.wait(POLL_INTERVAL):
            elapsed = self.elapsed()
            if aborted_at is not None:  # no more progress: libvirt is winding the job down
                if elapsed - aborted_at > WIND_DOWN_PATIENCE:
                    raise OperationTimeout(
                        f"migrating {self.name}: aborted at the {deadline:g} s deadline, but libvirt has not "
                        f"ended the job {WIND_DOWN_PATIENCE:.0f} s later; where the guest runs is unknown",
                        details=self._details(),
                    )
                continue
            phase = self._sample()
            if self.progress is not None and phase is not None:
                self.progress(self._progress(elapsed, phase))
            if self.in_postcopy:
                if elapsed > deadline + POSTCOPY_PATIENCE:
                    raise HypervisorError(
                        f"migrating {self.name}: post-copy has not finished {POSTCOPY_PATIENCE:.0f} s after the "
                        "deadline; the guest runs on the destination and waits for pages from the source",
                        details=self._details(),
                    )
            elif elapsed >= deadline:
                self.at_abort = dict(self.last)
                aborted_at = elapsed
                self._abort()
            elif self.postcopy and elapsed >= deadline * POSTCOPY_AFTER:
                self._start_postcopy()
        return aborted_at is not None

    # --- looking and helping -------------------------------------------------------------
    def _sample(self) -> str | None:
        """Read the job's statistics and the guest's state; the phase, or None between reads."""
        lv = require_libvirt()
        try:
            stats = self.watched.jobStats()
            state, reason = self.watched.state()
        except lv.libvirtError:
            return None  # the job just ended, or the guest just left: the thread reports which
        if stats.get("type", lv.VIR_DOMAIN_JOB_NONE) != lv.VIR_DOMAIN_JOB_NONE:
            self.last = stats
            if not self.downtime_set:
                with contextlib.suppress(lv.libvirtError):
                    self.watched.migrateSetMaxDowntime(int(self.request.max_downtime_ms), 0)
                    self.downtime_set = True
        if int(stats.get("auto_converge_throttle", 0) or 0) > 0:
            self.throttled = True
        if state == lv.VIR_DOMAIN_PAUSED and reason == lv.VIR_DOMAIN_PAUSED_POSTCOPY:
            self.in_postcopy = True
            return "post-copy"
        if self.in_postcopy:
            return "post-copy"
        if state == lv.VIR_DOMAIN_PAUSED and reason == lv.VIR_DOMAIN_PAUSED_MIGRATION:
            return "switching over"
        return "auto-converge" if self.throttled else "copying"

    def _progress(self, elapsed: float, phase: str) -> MigrationProgress:
        s = self.last
        return MigrationProgress(
            elapsed_seconds=elapsed,
            memory_total=int(s.get("memory_total", 0)),
            memory_processed=int(s.get("memory_processed", 0)),
            memory_remaining=int(s.get("memory_remaining", 0)),
            disk_total=int(s.get("disk_total", 0)),
            disk_processed=int(s.get("disk_processed", 0)),
            disk_remaining=int(s.get("disk_remaining", 0)),
            phase=phase,
        )

    def _start_postcopy(self) -> None:
        """Switch to post-copy once a first whole pass over memory is done (as libvirt advises: the
        guest then faults in few pages); a refusal (the disks still being mirrored, say) is retried
        at the next look."""
        lv = require_libvirt()
        if int(self.last.get("memory_iteration", 0) or 0) < 2:  # 1: the first pass is under way
            return
        try:
            self.watched.migrateStartPostCopy(0)
        except lv.libvirtError:
            return
        self.in_postcopy = True

    def _abort(self) -> None:
        lv = require_libvirt()
        # Refused when the job has just ended or is switching over; then it ends by itself.
        with contextlib.suppress(lv.libvirtError):
            self.watched.abortJob()

    # --- the end -------------------------------------------------------------------------
    def _failure(self, err: BaseException, timed_out: bool) -> BaseException:
        lv = require_libvirt()
        if not isinstance(err, lv.libvirtError):
            return err
        message = err.get_error_message() or str(err)
        if self.postcopy and not timed_out and not _anything_sent(self.last):
            # libvirt does not always pass the destination's reason on (seen once: "client socket is
            # closed" where the destination had refused post-copy), so any such failure is retried.
            return _PostcopyRefused(message, _refuses_postcopy(message))
        where = f"migrating {self.name} from {self.connection.uri} to {self.request.dest_uri}"
        if not _alive(self.watched):
            return HypervisorUnavailable(
                f"{where}: lost the connection to the source's libvirt ({message}); where the guest runs "
                "is unknown until that host answers again",
                details=self._details(),
            )
        if timed_out:
            helped = "auto-converge" + (" (post-copy was allowed but never started)" if self.postcopy else "")
            return OperationTimeout(
                f"{where}: not finished after {self.request.max_seconds:g} s with {helped}; aborted, the guest "
                "stays on the source",
                details={
                    **self._details(),
                    "memory_remaining": int(self.at_abort.get("memory_remaining", 0) or 0),
                    "disk_remaining": int(self.at_abort.get("disk_remaining", 0) or 0),
                },
            )
        if self.in_postcopy:
            return HypervisorError(
                f"{where} failed during post-copy: {message}. The guest is paused on the source and running "
                "on the destination without all of its memory; neither host holds the whole guest",
                details=self._details(),
            )
        if _is_connection_error(err):
            what = "lost the destination mid-way" if _anything_sent(self.last) else "could not reach the destination"
            return HypervisorUnavailable(
                f"{where}: the source {what}: {message}. The guest stays on the source",
                details=self._details(),
            )
        return HypervisorError(f"{where} failed: {message}. The guest stays on the source", details=self._details())

    def _details(self) -> dict[str, Any]:
        return {
            "source_uri": self.connection.uri,
            "dest_uri": self.request.dest_uri,
            "elapsed_seconds": round(self.elapsed(), 3),
        }

    def _result(self, completed: dict[str, Any] | None) -> MigrationResult:
        stats = completed or _destination_stats(self.request.dest_uri, self.dom.UUIDString()) or {}
        memory = int(stats.get("memory_processed", self.last.get("memory_processed", 0)) or 0)
        # The destination's figures know nothing of the disks: keep the source's last look then.
        disk = int(stats.get("disk_processed", 0) or 0) or int(self.last.get("disk_processed", 0) or 0)
        if int(stats.get("auto_converge_throttle", 0) or 0) > 0:
            self.throttled = True
        downtime = stats.get("downtime")
        return MigrationResult(
            total_seconds=self.elapsed(),
            downtime_ms=float(downtime) if downtime is not None else None,
            memory_bytes=memory,
            disk_bytes=disk,
            converged_by="post-copy" if self.in_postcopy else "auto-converge" if self.throttled else "plain",
        )


# --------------------------------------------------------------------------- pieces


def _check_request(request: MigrationRequest) -> None:
    if not request.dest_uri:
        raise InvalidInput("dest_uri", "a destination host URI is needed")
    if not request.max_seconds > 0:
        raise InvalidInput("max_seconds", f"must be more than 0, not {request.max_seconds}")
    if not request.max_downtime_ms > 0:
        raise InvalidInput("max_downtime_ms", f"must be more than 0, not {request.max_downtime_ms}")


def migration_flags(request: MigrationRequest, postcopy: bool) -> int:
    lv = require_libvirt()
    flags = (
        lv.VIR_MIGRATE_LIVE
        | lv.VIR_MIGRATE_PEER2PEER
        | lv.VIR_MIGRATE_PERSIST_DEST
        | lv.VIR_MIGRATE_UNDEFINE_SOURCE
        | lv.VIR_MIGRATE_AUTO_CONVERGE
    )
    if request.copy_storage:
        flags |= lv.VIR_MIGRATE_NON_SHARED_INC
    else:
        # The disks are on storage flexvm has checked every host sees (one host writes a marker
        # there, the others read it back: compute.storage). libvirt's own check knows only the
        # filesystem types it lists (NFS, GlusterFS, Ceph, …) and refuses anything else, a bind
        # mount (the lab) among them, as "unsafe"; the disks are opened with cache=none either way.
        flags |= lv.VIR_MIGRATE_UNSAFE
    if postcopy:
        flags |= lv.VIR_MIGRATE_POSTCOPY
    return flags


def migration_params(request: MigrationRequest) -> dict[str, Any]:
    """Typed parameters: where QEMU sends the data (``--migrateuri``), when the destination's
    address is given; otherwise libvirt uses the destination's hostname, as it reports it."""
    lv = require_libvirt()
    params: dict[str, Any] = {}
    if request.dest_address:
        params[lv.VIR_MIGRATE_PARAM_URI] = data_uri(request.dest_address)
    return params


def data_uri(address: str) -> str:
    """``10.0.0.2`` -> ``tcp://10.0.0.2``; ``fd00::2`` -> ``tcp://[fd00::2]``; a URI stays as it is."""
    if "://" in address:
        return address
    if ":" in address and not address.startswith("["):
        return f"tcp://[{address}]"
    return f"tcp://{address}"


def _anything_sent(stats: dict[str, Any]) -> bool:
    return int(stats.get("memory_processed", 0) or 0) > 0 or int(stats.get("disk_processed", 0) or 0) > 0


def _refuses_postcopy(message: str) -> bool:
    lowered = message.lower()
    return any(words in lowered for words in _POSTCOPY_REFUSALS)


# How libvirt words a peer it cannot reach or has lost (its error codes for these vary: a refused
# connection is a "system error" from the RPC layer, a dead peer mid-way an "internal error").
_CONNECTION_WORDS = (
    "connection reset",
    "lost connection",
    "unable to connect",
    "connection refused",
    "end of file",
    "socket is closed",
    "no route to host",
    "timed out",
)


def _is_connection_error(err: Any) -> bool:
    lv = require_libvirt()
    if err.get_error_code() in (lv.VIR_ERR_NO_CONNECT, lv.VIR_ERR_RPC, lv.VIR_ERR_AUTH_FAILED):
        return True
    if err.get_error_domain() == lv.VIR_FROM_RPC:
        return True
    message = (err.get_error_message() or "").lower()
    return any(words in message for words in _CONNECTION_WORDS)


def _alive(dom: Any) -> bool:
    """Whether the connection the guest was looked up on still works."""
    try:
        return bool(dom.connect().isAlive())
    except require_libvirt().libvirtError:
        return False


def _destination_stats(dest_uri: str, uuid: str) -> dict[str, Any] | None:
    """The completed incoming job's statistics on the destination (no disk figures there)."""
    lv = require_libvirt()
    dest = Connection(dest_uri)
    try:
        conn = dest.get()
        return dict(conn.lookupByUUIDString(uuid).jobStats(lv.VIR_DOMAIN_JOB_STATS_COMPLETED))
    except (lv.libvirtError, HypervisorError):
        return None
    finally:
        dest.close()


def _keep_running_here(dom: Any, was_running: bool) -> str:
    """After a failed or aborted migration: wait for libvirt to finish winding the job down, and
    resume the guest if it was left paused for a switch-over that never happened. What the guest
    is doing on the source then ("running", "paused", ...), for the error's details."""
    lv = require_libvirt()
    deadline = time.monotonic() + WIND_DOWN_PATIENCE
    try:
        while time.monotonic() < deadline:
            if dom.jobStats().get("type", lv.VIR_DOMAIN_JOB_NONE) == lv.VIR_DOMAIN_JOB_NONE:
                break
            time.sleep(POLL_INTERVAL)
        state, reason = dom.state()
        if was_running and state == lv.VIR_DOMAIN_PAUSED and reason != lv.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED:
            dom.resume()
            state, reason = dom.state()
    except lv.libvirtError as err:
        return f"unknown ({err.get_error_message()})"
    return _STATE_NAMES.get(state, f"state {state}, reason {reason}")


_STATE_NAMES = {1: "running", 3: "paused", 4: "shutting down", 5: "shut off", 6: "crashed", 7: "suspended"}
