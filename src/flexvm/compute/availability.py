"""Availability sets: create, inspect (which VM sits in which fault domain), delete."""

from __future__ import annotations

import builtins
from dataclasses import dataclass

from flexvm.errors import Conflict, InvalidInput
from flexvm.model.availability import MAX_FAULT_DOMAINS, AvailabilitySet
from flexvm.model.projects import check_key
from flexvm.store.db import Database, utcnow
from flexvm.store.repositories import AvailabilitySetRepo, HostRepo, VmRepo
from flexvm.store.scaling import ScaleSetRepo


@dataclass
class SetLayout:
    availability_set: AvailabilitySet
    # fault domain -> host -> VM names; deallocated members are listed under "(deallocated)"
    domains: dict[str, dict[str, builtins.list[str]]]


class AvailabilitySetService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self) -> builtins.list[AvailabilitySet]:
        with self.db.session() as session:
            return AvailabilitySetRepo(session).list()

    def create(self, name: str, fault_domains: int) -> AvailabilitySet:
        check_key("name", name)
        if not 1 <= fault_domains <= MAX_FAULT_DOMAINS:
            raise InvalidInput("fault_domains", f"must be between 1 and {MAX_FAULT_DOMAINS} (got {fault_domains})")
        availability_set = AvailabilitySet(name, fault_domains, utcnow())
        with self.db.session() as session:
            AvailabilitySetRepo(session).add(availability_set)
        return availability_set

    def layout(self, name: str) -> SetLayout:
        with self.db.session() as session:
            availability_set = AvailabilitySetRepo(session).get(name)
            hosts = {h.name: h for h in HostRepo(session).list()}
            domains: dict[str, dict[str, builtins.list[str]]] = {}
            for vm in VmRepo(session).in_set(name):
                if vm.host is None:
                    domains.setdefault("(deallocated)", {}).setdefault(vm.disk_host or "-", []).append(vm.name)
                    continue
                host = hosts.get(vm.host)
                domain = (host.fault_domain if host else None) or vm.host
                domains.setdefault(domain, {}).setdefault(vm.host, []).append(vm.name)
        return SetLayout(availability_set, domains)

    def delete(self, name: str) -> None:
        with self.db.session() as session:
            if ScaleSetRepo(session).find(name) is not None:
                raise Conflict(
                    f"availability set '{name}' belongs to scale set '{name}'; it goes when the scale set is deleted"
                )
            members = [vm.name for vm in VmRepo(session).in_set(name)]
            if members:
                raise Conflict(
                    f"availability set '{name}' still has VMs: {', '.join(members)}", details={"vms": members}
                )
            AvailabilitySetRepo(session).delete(name)
