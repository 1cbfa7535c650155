"""A VM's console across hosts: what earlier hosts logged, kept by the server, then the live log.

libvirt logs a guest's serial console on the host that runs it. When the guest moves, the new
host starts a new log; the old one is fetched into an archive here before its host forgets it,
so `vm console` still shows every boot, and a tick counter reads without a gap across a move.
"""

from __future__ import annotations

from pathlib import Path

from flexvm.drivers.base import Driver


class ConsoleArchive:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, vm_id: str) -> Path:
        return self.root / f"{vm_id}.log"

    def size(self, vm_id: str) -> int:
        path = self._path(vm_id)
        return path.stat().st_size if path.exists() else 0

    def read(self, vm_id: str, offset: int = 0) -> bytes:
        path = self._path(vm_id)
        if not path.exists():
            return b""
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read()

    def keep(self, vm_id: str, driver: Driver, log_volume: str) -> None:
        """Append what a host logged for the VM (before that log is deleted)."""
        data = driver.console_read(log_volume, 0)
        if not data:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        with self._path(vm_id).open("ab") as handle:
            handle.write(data)

    def forget(self, vm_id: str) -> None:
        self._path(vm_id).unlink(missing_ok=True)
