"""Host health on a schedule: every host is asked for its facts with a deadline.

A host that does not answer in time is marked down (its VMs 'unknown', not lost), or suspect when
it has a fence agent (compute.failover takes it from there after the round); one that answers
again is marked up, its VMs' power states are re-read, and whatever an operation had to leave on
it while it was unreachable (recorded as leftovers) is removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext

from flexvm.compute.failover import Failover
from flexvm.compute.hosts import HostService
from flexvm.compute.reconcile import Reconciler
from flexvm.errors import FlexvmError
from flexvm.model.host import Host, HostState
from flexvm.store.db import Database
from flexvm.store.repositories import LeftoverRepo, VmRepo

log = logging.getLogger(__name__)


class HealthChecker:
    def __init__(
        self,
        db: Database,
        hosts: HostService,
        reconciler: Reconciler,
        timeout: float,
        failover: Failover | None = None,
        guard: Callable[[], AbstractContextManager[None]] = nullcontext,
    ) -> None:
        self.db = db
        self.hosts = hosts
        self.reconciler = reconciler
        self.timeout = timeout
        self.failover = failover
        self._caught_up: set[str] = set()  # hosts whose isolation this server brought up to date
        # The leader's fencing (operations.leader): the pool's threads write under it too.
        self.guard = guard

    def check_all(self) -> dict[str, HostState]:
        """One round: every host in parallel, so a hung one delays nobody else."""
        hosts = self.hosts.list()
        if not hosts:
            return {}
        with ThreadPoolExecutor(max_workers=min(16, len(hosts)), thread_name_prefix="health") as pool:
            states = dict(zip([h.name for h in hosts], pool.map(self._check, hosts), strict=True))
        if self.failover is not None and HostState.SUSPECT in states.values():
            with self.guard():
                for operation in self.failover.review():
                    states[operation.target_name] = HostState.FAILED
        self.reconciler.sync()
        return states

    def _check(self, before: Host) -> HostState:
        with self.guard():
            return self._check_one(before)

    def _check_one(self, before: Host) -> HostState:
        after = self.hosts.refresh(before.name, timeout=self.timeout)
        if after.state is not before.state:
            log.warning(
                "host %s is now %s%s",
                after.name,
                after.state.value,
                f" ({after.state_reason})" if after.state_reason else "",
            )
        if after.state is HostState.UP:
            if before.state is not HostState.UP or after.name not in self._caught_up:
                # Back from away, or first seen by this server: its filters may lag behind.
                try:
                    self.hosts.isolation.catch_up(after.name)
                    self._caught_up.add(after.name)
                except FlexvmError as err:  # removed meanwhile, say: the next round tries again
                    log.warning("bringing host %s's network filters up to date: %s", after.name, err.message)
            self.clean_leftovers(after.name)
            if self.failover is not None and before.state in (HostState.FAILED, HostState.FENCED):
                self.failover.restore(after.name)
        return after.state

    def clean_leftovers(self, host_name: str) -> int:
        """Remove what failed operations left on a host that was unreachable; returns how many."""
        with self.db.session() as session:
            leftovers = LeftoverRepo(session).on_host(host_name)
            owned = {vm.domain_name for vm in VmRepo(session).on_host(host_name)}
            owned |= {d.name for vm in VmRepo(session).on_host(host_name) for d in vm.disks}
            owned |= {vm.console_log for vm in VmRepo(session).on_host(host_name)}
        if not leftovers:
            return 0
        driver = self.hosts.driver(host_name)
        removed = 0
        for item in leftovers:
            try:
                if item.name not in owned:  # a VM of that name lives here now: it is not a leftover
                    if item.kind == "domain":
                        driver.destroy(item.name)
                        driver.undefine(item.name)
                    else:
                        driver.delete_instance_volume(item.name)
            except FlexvmError as err:
                log.warning("could not yet remove %s %s from %s: %s", item.kind, item.name, host_name, err.message)
                continue
            with self.db.session() as session:
                assert item.id is not None
                LeftoverRepo(session).remove(item.id)
            removed += 1
        return removed
