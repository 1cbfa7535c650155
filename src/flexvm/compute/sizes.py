"""Sizes: Azure's catalogue plus the operator's own, and how many of each fit right now."""

from __future__ import annotations

from dataclasses import dataclass

from flexvm.capacity.fit import Allocation, how_many_fit, room_on
from flexvm.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from flexvm.model.host import HostState
from flexvm.model.names import check_size_name
from flexvm.model.sizes import BUILTIN_SIZES, Size, check_shape
from flexvm.store.db import Database
from flexvm.store.repositories import HostRepo, SizeRepo, VmRepo

_BUILTIN = {size.name: size for size in BUILTIN_SIZES}


@dataclass
class SizeFit:
    size: Size
    fits_now: int  # how many more VMs of this size the pool's up hosts can take right now


class SizeService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def all(self) -> list[Size]:
        with self.db.session() as session:
            custom = SizeRepo(session).custom()
        return list(BUILTIN_SIZES) + custom

    def get(self, name: str, field: str = "size") -> Size:
        """The size called ``name``; an unknown one is refused naming ``field``."""
        if name in _BUILTIN:
            return _BUILTIN[name]
        with self.db.session() as session:
            size = SizeRepo(session).get_custom(name)
        if size is None:
            known = ", ".join(s.name for s in self.all())
            raise InvalidInput(field, f"unknown size '{name}'; known sizes: {known}")
        return size

    def ceiling_for(self, size: Size) -> Size:
        """The largest size of ``size``'s family: how far a VM may grow without a restart.

        Operator-defined sizes without a family of their own are no family: their ceiling is themselves.
        """
        if size.family == "custom":
            return size
        family = [s for s in self.all() if s.family == size.family]
        return max(family, key=lambda s: (s.memory_mib, s.vcpus, s.name))

    def list_with_fit(self) -> list[SizeFit]:
        with self.db.session() as session:
            vms = VmRepo(session)
            rooms = [
                room_on(h, Allocation(*vms.allocated_on(h.name)))
                for h in HostRepo(session).list()
                if h.state is HostState.UP
            ]
        return [SizeFit(size, sum(how_many_fit(room, size) for room in rooms)) for size in self.all()]

    def fit(self, name: str) -> SizeFit:
        """One size, and how many more of it the pool's up hosts can take right now."""
        size = self.get(name)
        return next(fit for fit in self.list_with_fit() if fit.size.name == size.name)

    def create(self, name: str, vcpus: int, memory_mib: int, disk_bytes: int, family: str | None = None) -> Size:
        check_size_name("name", name)
        check_shape(vcpus, memory_mib, disk_bytes)
        if name in _BUILTIN:
            raise AlreadyExists("size", name)
        size = Size(name, vcpus, memory_mib, disk_bytes, family or "custom", builtin=False)
        with self.db.session() as session:
            SizeRepo(session).add(size)
        return size

    def delete(self, name: str) -> None:
        if name in _BUILTIN:
            raise Conflict(f"size '{name}' is built in and cannot be deleted")
        with self.db.session() as session:
            users = [vm.name for vm in VmRepo(session).list() if vm.size == name]
            if users:
                raise Conflict(f"size '{name}' is used by VMs: {', '.join(users)}", details={"vms": users})
            if SizeRepo(session).get_custom(name) is None:
                raise NotFound("size", name)
            SizeRepo(session).delete(name)
