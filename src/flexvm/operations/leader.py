"""The leader: one server at a time runs the periodic work (health checks, the metrics collector,
autoscale and healing, the load balancer), under a lease with a fencing number.

The lease is a row (``leases``, name "leader"): holder, epoch, expiry. A server takes it when it
is free, has run out, or its holder is known dead (a process of this machine that is gone),
raising the epoch; the holder renews it. Leadership is not only believed
but checked where it matters: the periodic work writes inside ``fenced()``, which makes every
transaction of that thread first lock the lease row and check that this server still holds it
with its epoch, before the write can commit. A leader paused past its lease wakes up to find its
writes refused (``LeaseLost``), even before it notices it lost the role.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flexvm.errors import LeaseLost
from flexvm.store.db import Database
from flexvm.store.tables import LeaseRow

log = logging.getLogger(__name__)

LEADER = "leader"


class LeaderLease:
    def __init__(self, db: Database, server_id: str, lease_seconds: float) -> None:
        self.db = db
        self.server_id = server_id
        self.lease_seconds = lease_seconds
        self.epoch: int | None = None
        self._valid_until = 0.0  # monotonic: past it, this server stops believing it leads
        self._lock = threading.Lock()

    def is_leader(self) -> bool:
        return self.epoch is not None and time.monotonic() < self._valid_until

    def tick(self, dead: Collection[str] = ()) -> None:
        """Take the lease if it is free, ran out or is held by a server known ``dead``; renew it
        if held. Called a few times a lease, and at once when a server is seen gone."""
        asked = time.monotonic()
        now = time.time()
        try:
            with self.db.session() as session:
                epoch = self._take_or_renew(session, now, dead)
        except IntegrityError:  # another server created the row at the same moment
            epoch = None
        with self._lock:
            was = self.epoch
            self.epoch = epoch
            # Count from when the renewal was asked: a slow answer shortens the belief, never lengthens it.
            self._valid_until = asked + self.lease_seconds * 0.8 if epoch is not None else 0.0
        if epoch != was:
            if epoch is not None:
                log.info("this server leads the periodic work (epoch %d)", epoch)
            elif was is not None:
                log.warning("this server no longer leads the periodic work (it held epoch %d)", was)

    def _take_or_renew(self, session: Session, now: float, dead: Collection[str]) -> int | None:
        row = session.get(LeaseRow, LEADER, with_for_update=True)
        expires = now + self.lease_seconds
        if row is None:
            session.add(LeaseRow(name=LEADER, holder=self.server_id, epoch=1, expires=expires))
            session.flush()
            return 1
        if row.holder == self.server_id and row.epoch == self.epoch:
            row.expires = expires
            return row.epoch
        if row.holder is None or row.expires <= now or row.holder in dead:
            row.holder, row.epoch, row.expires = self.server_id, row.epoch + 1, expires
            return row.epoch
        return None

    def holder(self) -> tuple[str | None, int, float]:
        with self.db.session() as session:
            row = session.get(LeaseRow, LEADER)
            return (None, 0, 0.0) if row is None else (row.holder, row.epoch, row.expires)

    def release(self) -> None:
        """Give the role up at once (a clean shutdown), so another server takes it without waiting."""
        if self.epoch is None:
            return
        with self.db.session() as session:
            row = session.get(LeaseRow, LEADER, with_for_update=True)
            if row is not None and row.holder == self.server_id and row.epoch == self.epoch:
                row.holder, row.expires = None, 0.0
        self.epoch = None

    def check(self, session: Session) -> None:
        """Inside a transaction: lock the lease row and refuse if this server no longer holds it."""
        row = session.get(LeaseRow, LEADER, with_for_update=True)
        mine = self.epoch
        if row is None or row.holder != self.server_id or row.epoch != mine or row.expires <= time.time():
            holder = "nobody" if row is None or row.holder is None else f"server {row.holder} (epoch {row.epoch})"
            raise LeaseLost(
                f"this server no longer leads the periodic work (it held epoch {mine}; now {holder}); "
                "its write was refused",
                details={"epoch": mine, "holder": None if row is None else row.holder},
            )

    @contextmanager
    def fenced(self) -> Iterator[None]:
        """Every transaction this thread opens inside the block checks the lease first."""
        with self.db.guarded(self.check):
            yield

    def as_leader(self, work: Callable[[], object]) -> bool:
        """Run one pass of periodic work if this server leads, its writes fenced. True if it ran."""
        if not self.is_leader():
            return False
        with self.fenced():
            work()
        return True
