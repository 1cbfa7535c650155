"""What a ``lab up`` has made so far, recorded as it makes each thing, so a failure at any step
removes exactly that, newest first.

Each entry is a small dict (``kind`` plus what names the thing) appended to ``LabState.made`` and
saved to ``state.json`` at once, so the record on disk is never behind the machine. Only what
``up`` itself made is recorded: a directory that was already there, or a route someone else
added, is not, and so is never removed. What lives inside a namespace (bridges, addresses, the
mounts inside a host) goes with that namespace and needs no entry of its own.

======  ==============================  =====================================================
kind    fields                          undone by
======  ==============================  =====================================================
dir     path                            removing the tree (never through a mount)
file    path                            unlinking it
route   subnet, metric                  deleting that blackhole route
netns   name                            ending what still runs in it, then deleting it
link    netns (None: root), name        deleting the link (a veth takes its peer along)
mount   path                            unmounting it
pins    netns, mnt, uts                 unmounting a host's pinned namespace files
daemon  program, netns, pid_file        stopping the PID in its pid file, once proven ours
======  ==============================  =====================================================

A daemon and a host's pins are recorded just *before* they are started or made (a start that
fails half-way may still leave a process or one pinned file); everything else just after.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flexvm.lab import mountns, netns, processes, state
from flexvm.lab.model import LabState

DAEMON_GRACE = 10.0


class Journal:
    """The ``made`` list of ``record``, kept saved in ``state_file`` as it grows."""

    def __init__(self, record: LabState, state_file: Path) -> None:
        self.record = record
        self.state_file = state_file

    def save(self) -> None:
        state.save(self.state_file, self.record)

    def made(self, kind: str, /, **fields: Any) -> None:
        if kind not in UNDO:
            raise ValueError(f"no way to undo a lab {kind!r}")
        self.record.made.append({"kind": kind, **fields})
        self.save()

    def make_dir(self, path: Path) -> None:
        """Make ``path`` (which must not exist: an existing one is not ours) and record it."""
        path.mkdir()
        self.made("dir", path=str(path))

    def undo(self) -> list[str]:
        """Undo every entry, newest first; what could not be undone stays recorded (and saved),
        and is described in the returned list."""
        problems = []
        for entry in reversed(list(self.record.made)):
            try:
                UNDO[entry["kind"]](entry)
            except Exception as err:  # keep going: each older entry is still ours to remove
                problems.append(f"{_describe(entry)}: {err}")
                continue
            self.record.made.remove(entry)
        self.save()
        return problems


def _describe(entry: dict[str, Any]) -> str:
    return entry["kind"] + " " + " ".join(f"{k}={v}" for k, v in entry.items() if k != "kind")


def _undo_dir(entry: dict[str, Any]) -> None:
    path = Path(entry["path"])
    mounted = mountns.mounts_under(path)
    if mounted:
        raise OSError(f"still mounted there: {', '.join(mounted)}")
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)


def _undo_file(entry: dict[str, Any]) -> None:
    Path(entry["path"]).unlink(missing_ok=True)


def _undo_route(entry: dict[str, Any]) -> None:
    netns.delete_blackhole(entry["subnet"], int(entry["metric"]))


def _undo_netns(entry: dict[str, Any]) -> None:
    name = entry["name"]
    # Whatever still runs in a namespace this up made is ours too (a daemon's children).
    strays = [pid for pid in netns.pids(name) if processes.in_namespace(pid, name)]
    left = processes.kill(strays)
    if left:
        raise OSError(f"PIDs {left} in it would not die")
    netns.delete(name)


def _undo_link(entry: dict[str, Any]) -> None:
    where = entry["netns"]
    if where is None or netns.exists(where):
        netns.delete_link(where, entry["name"])


def _undo_mount(entry: dict[str, Any]) -> None:
    path = Path(entry["path"])
    if mountns.is_mountpoint(path):
        mountns.unmount(path)
    if mountns.is_mountpoint(path):
        raise OSError(f"{path} would not unmount")


def _undo_pins(entry: dict[str, Any]) -> None:
    ns = mountns.HostNamespaces(entry["netns"], Path(entry["mnt"]), Path(entry["uts"]))
    mountns.destroy(ns)
    left = [str(p) for p in ns.pins if mountns.is_mountpoint(p)]
    if left:
        raise OSError(f"{', '.join(left)} would not unmount")


def _undo_daemon(entry: dict[str, Any]) -> None:
    pid = processes.read_pid_file(Path(entry["pid_file"]))
    if pid is None or not processes.is_ours(pid, entry["program"], entry["netns"]):
        return  # never started, or already gone (a stray of its namespace is ended with it)
    left = processes.stop([pid], grace=DAEMON_GRACE)
    if left:
        raise OSError(f"{entry['program']} (PID {pid}) would not die")


UNDO: dict[str, Callable[[dict[str, Any]], None]] = {
    "dir": _undo_dir,
    "file": _undo_file,
    "route": _undo_route,
    "netns": _undo_netns,
    "link": _undo_link,
    "mount": _undo_mount,
    "pins": _undo_pins,
    "daemon": _undo_daemon,
}
