"""Shared storage: declared once, checked from every host, chosen per VM (``vm create --storage``).

Each host is asked through its own libvirt connection, so a remote host needs nothing else: its
pool over the directory must start, take a small file, and show a marker that another host wrote
(the one check that tells "the same shared directory" from "an empty local one at that path").
"""

from __future__ import annotations

import builtins
import secrets
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from flexvm.compute.hosts import HostService, call_with_timeout
from flexvm.errors import Conflict, FlexvmError
from flexvm.model.host import Host, HostState
from flexvm.model.names import check_name
from flexvm.model.storage import SharedStorage, check_storage_path
from flexvm.store.db import Database
from flexvm.store.storage import StorageRepo

CHECK_SECONDS = 20.0  # per host: an NFS mount that hangs must not hang the request


@dataclass
class StorageReport:
    storage: SharedStorage
    # Host name -> None when it reaches the directory, else why not.
    hosts: dict[str, str | None] = field(default_factory=dict)
    # Hosts that are not up, and their state: not asked (a host that comes back is asked at the
    # next `storage show`).
    skipped: dict[str, str] = field(default_factory=dict)
    vms: builtins.list[str] = field(default_factory=list)

    @property
    def unreachable(self) -> dict[str, str]:
        return {host: why for host, why in self.hosts.items() if why is not None}


class StorageService:
    def __init__(self, db: Database, hosts: HostService) -> None:
        self.db = db
        self.hosts = hosts

    def list(self) -> builtins.list[SharedStorage]:
        with self.db.session() as session:
            return StorageRepo(session).list()

    def get(self, name: str) -> SharedStorage:
        with self.db.session() as session:
            return StorageRepo(session).get(name)

    def add(self, name: str, path: str) -> StorageReport:
        """Record the storage once every host that is up reaches the same directory; otherwise
        refuse, naming each host that cannot and why."""
        check_name("name", name)
        storage = SharedStorage(name, check_storage_path(path))
        with self.db.session() as session:
            StorageRepo(session).check_free(storage)  # before any host is asked
        report = self.check(storage)
        if report.unreachable:
            raise Conflict(
                f"storage '{name}' at {storage.path} is not reachable from every host: "
                + "; ".join(f"{host}: {why}" for host, why in report.unreachable.items()),
                details={"hosts": report.unreachable},
            )
        with self.db.session() as session:
            StorageRepo(session).add(storage)
        return report

    def show(self, name: str) -> StorageReport:
        """The storage as every host sees it now, and the VMs whose disks are there."""
        with self.db.session() as session:
            storage = StorageRepo(session).get(name)
            vms = StorageRepo(session).users(name)
        report = self.check(storage)
        report.vms = vms
        return report

    def remove(self, name: str) -> None:
        with self.db.session() as session:
            repo = StorageRepo(session)
            repo.get(name)
            users = repo.users(name)
            if users:
                raise Conflict(
                    f"storage '{name}' still holds the disks of: {', '.join(users)}; delete those VMs first",
                    details={"vms": users},
                )
            repo.delete(name)

    # --- the check -------------------------------------------------------------------------
    def check(self, storage: SharedStorage) -> StorageReport:
        hosts = self.hosts.list()
        up = [h for h in hosts if h.state is HostState.UP]
        report = StorageReport(storage, skipped={h.name: h.state.value for h in hosts if h.state is not HostState.UP})
        if not up:
            return report
        with ThreadPoolExecutor(max_workers=min(16, len(up)), thread_name_prefix="storage") as pool:
            reached = dict(zip([h.name for h in up], pool.map(lambda h: self._reach(h, storage), up), strict=True))
        report.hosts.update(reached)
        writers = [name for name, why in reached.items() if why is None]
        if len(writers) > 1:
            report.hosts.update(self._same_directory(storage, writers))
        return report

    def _reach(self, host: Host, storage: SharedStorage) -> str | None:
        try:
            call_with_timeout(
                lambda: self.hosts.driver(host.name).check_storage(storage),
                CHECK_SECONDS,
                f"no answer within {CHECK_SECONDS:.0f} s",
            )
        except FlexvmError as err:
            return err.message
        return None

    def _same_directory(self, storage: SharedStorage, writers: builtins.list[str]) -> dict[str, str | None]:
        """One host writes a marker; every other must read the same bytes back."""
        token = secrets.token_hex(16)
        marker = f".flexvm-marker-{token[:12]}"
        first = self.hosts.driver(writers[0])
        seen: dict[str, str | None] = {}
        with tempfile.TemporaryDirectory(prefix="flexvm-storage-") as tmp:
            path = Path(tmp) / marker
            path.write_text(token)
            first.upload_instance_volume(marker, path, store=storage)

        def read_back(host_name: str) -> bytes:
            return call_with_timeout(
                lambda: self.hosts.driver(host_name).console_read(marker, 0, store=storage),
                CHECK_SECONDS,
                f"no answer within {CHECK_SECONDS:.0f} s",
            )

        try:
            for name in writers[1:]:
                try:
                    data = read_back(name)
                except FlexvmError as err:
                    seen[name] = err.message
                    continue
                if data.decode(errors="replace") != token:
                    seen[name] = (
                        f"{storage.path} there is not the directory {writers[0]} sees "
                        "(a file written there from that host is missing): is it mounted?"
                    )
        finally:
            first.delete_instance_volume(marker, store=storage)
        return seen
