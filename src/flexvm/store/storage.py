"""Shared storage records: name, path, and which VMs keep their disks there."""

from __future__ import annotations

import builtins

from sqlalchemy import select
from sqlalchemy.orm import Session

from flexvm.errors import AlreadyExists, NotFound
from flexvm.model.storage import SharedStorage
from flexvm.store.tables import StorageRow, VmRow


class StorageRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def list(self) -> list[SharedStorage]:
        rows = self.session.scalars(select(StorageRow).order_by(StorageRow.name))
        return [SharedStorage(r.name, r.path) for r in rows]

    def find(self, name: str) -> SharedStorage | None:
        row = self.session.get(StorageRow, name)
        return None if row is None else SharedStorage(row.name, row.path)

    def get(self, name: str) -> SharedStorage:
        storage = self.find(name)
        if storage is None:
            raise NotFound("storage", name)
        return storage

    def add(self, storage: SharedStorage) -> None:
        self.check_free(storage)
        self.session.add(StorageRow(name=storage.name, path=storage.path))

    def check_free(self, storage: SharedStorage) -> None:
        """Neither its name nor its path is taken (AlreadyExists naming which)."""
        if self.session.get(StorageRow, storage.name) is not None:
            raise AlreadyExists("storage", storage.name)
        same_path = self.session.scalars(select(StorageRow).where(StorageRow.path == storage.path)).first()
        if same_path is not None:
            raise AlreadyExists("storage with path", f"{storage.path}' (registered as '{same_path.name}")

    def delete(self, name: str) -> None:
        row = self.session.get(StorageRow, name)
        if row is None:
            raise NotFound("storage", name)
        self.session.delete(row)

    def users(self, name: str) -> builtins.list[str]:
        """Keys of the VMs whose disks are on the storage."""
        return list(self.session.scalars(select(VmRow.name).where(VmRow.storage == name).order_by(VmRow.name)))
