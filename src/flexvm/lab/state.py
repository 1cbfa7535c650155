"""``state.json``: the record of the lab on this machine, written before each step it covers,
so an interrupted ``up`` leaves enough behind for ``down`` to remove everything it made."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from flexvm.errors import FlexvmError
from flexvm.lab.model import LabState


def load(path: Path) -> LabState | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return LabState.from_dict(json.loads(text))
    except (ValueError, KeyError, TypeError) as err:
        raise FlexvmError(f"lab state file {path} is unreadable ({err}); remove it once the lab is gone") from err


def save(path: Path, state: LabState) -> None:
    """Write whole, then rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(lock_file: Path) -> Iterator[None]:
    """One lab operation at a time per lab root (up, down, stop_host, start_host)."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
