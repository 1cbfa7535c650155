"""Keeping every host's copy of each project's network filter current.

A guest NIC on a flexvm network names its project's filter (``model.network.Isolation``); the
host's libvirtd refuses to start or receive a guest whose filter it lacks, and a filter that lags
behind shuts out the project's newest block. So before a guest is defined, started or migrated
somewhere, its project's filter is applied on every host of that network: the one it goes to
must take it (or the step fails), the others are brought along where they answer. Applying an
unchanged filter costs libvirt about a millisecond; a changed one makes each host re-apply its
rules to every guest NIC it has, which is why a project grows by whole blocks.

A host catches up (``catch_up``) when it comes back after being away and once per server start:
every project's filter of its network, and the filter put on any NIC of its guests that lacks one
(guests defined before isolation existed, changed live). A deleted project's filters are removed
where no guest names them any more (``forget``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flexvm.compute import guest_boot
from flexvm.compute.networks import NetworkService
from flexvm.drivers.base import Driver
from flexvm.errors import FlexvmError
from flexvm.model.host import Host, HostState
from flexvm.model.network import Isolation, isolation_name
from flexvm.model.projects import project_of
from flexvm.model.vm import Vm
from flexvm.store.db import Database
from flexvm.store.repositories import HostRepo, NetworkRepo, VmRepo

if TYPE_CHECKING:
    from flexvm.compute.hosts import HostService

log = logging.getLogger(__name__)

# Hosts that may hold guests of a network: a down one would only make each call wait for it.
REACHABLE = (HostState.UP, HostState.MAINTENANCE, HostState.SUSPECT)


class Isolator:
    def __init__(self, db: Database, hosts: HostService) -> None:
        self.db = db
        self.hosts = hosts

    def isolates(self, host: Host) -> bool:
        """Whether guests on ``host``'s network carry filters (``Network.isolated``)."""
        if host.network is None:
            return False
        with self.db.session() as session:
            network = NetworkRepo(session).find(host.network)
        return network is not None and network.isolated

    def spread(self, vm: Vm, required: str | None) -> None:
        """Apply ``vm``'s project's filter for each of its networks on every host there; raises
        if the ``required`` host (where the guest is about to be defined or go) cannot take it."""
        project = project_of(vm.name)
        for network in sorted({nic.network for nic in vm.nics if nic.network != "user"}):
            with self.db.session() as session:
                if not NetworkRepo(session).get(network).isolated:
                    continue
                isolation = NetworkService.isolation(session, network, project)
                hosts = [h for h in HostRepo(session).list() if h.network == network]
            for host in hosts:
                if host.name == required:
                    self._driver(host).apply_isolation(isolation)
                elif host.state in REACHABLE:
                    self._apply(host, isolation)

    def catch_up(self, host_name: str) -> None:
        """Apply every project's filter of the host's network on it (after it was away)."""
        with self.db.session() as session:
            host = HostRepo(session).get(host_name)
            found = NetworkRepo(session).find(host.network) if host.network else None
            if found is None or not found.isolated:
                return
            network = found.name
            isolations = [
                NetworkService.isolation(session, network, project)
                for project in NetworkRepo(session).projects_on(network)
            ]
        for isolation in isolations:
            if not self._apply(host, isolation):
                return  # it went away again
        self.retrofit(host)

    def retrofit(self, host: Host) -> int:
        """Put its project's filter on every NIC of the host's guests that lacks one (defined
        before projects had isolated networks); how many were changed."""
        with self.db.session() as session:
            vms = [vm for vm in VmRepo(session).on_host(host.name) if vm.host == host.name]
        driver = self._driver(host)
        changed = 0
        for vm in vms:
            for nic in vm.nics:
                if nic.network != host.network or nic.ip is None:
                    continue  # QEMU's user network, or not this (isolated) one
                try:
                    if driver.guest_info(vm.domain_name) is None:
                        break  # deallocated, or not made yet: it gets the filter when defined
                    changed += driver.isolate_nic(vm.domain_name, guest_boot.guest_nic(vm, nic, host.bridge))
                except FlexvmError as err:
                    log.warning("isolating %s on host %s: %s", vm.name, host.name, err.message)
        if changed:
            log.info("host %s: %d guest NIC(s) now carry their project's filter", host.name, changed)
        return changed

    def forget(self, project: str, networks: list[str]) -> None:
        """Remove a deleted project's filters from the hosts of ``networks``, where they answer."""
        with self.db.session() as session:
            hosts = [h for h in HostRepo(session).list() if h.network in networks and h.state in REACHABLE]
        for host in hosts:
            assert host.network is not None
            name = isolation_name(host.network, project)
            try:
                self._driver(host).remove_isolation(name)
            except FlexvmError as err:
                log.warning("removing %s from host %s: %s", name, host.name, err.message)

    def _driver(self, host: Host) -> Driver:
        return self.hosts.drivers.for_uri(host.uri)

    def _apply(self, host: Host, isolation: Isolation) -> bool:
        try:
            self._driver(host).apply_isolation(isolation)
        except FlexvmError as err:
            log.warning("applying %s on host %s: %s (it catches up when back)", isolation.name, host.name, err.message)
            return False
        return True
