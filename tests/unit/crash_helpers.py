"""Killing a server at a named moment of an operation, in this process, and starting another.

``Servers`` opens platforms on one database and one fake host, as two ``flexvm serve`` processes
on one machine would share them. ``crash_at(kind, step, moment)`` arms a failpoint in the next
platform: when its run reaches that moment, the platform dies as ``kill -9`` would (nothing more
is written, its leases are left behind). The next platform opened takes the operation over.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from flexvm.config import Settings
from flexvm.drivers import connect
from flexvm.model.operation import Operation
from flexvm.operations.run import Stop
from flexvm.platform import Platform
from tests.unit.waiting import wait_done

MOMENTS = ("started", "acted", "done")


@dataclass
class CrashPoint:
    kind: str
    step: str
    moment: str
    occurrence: int = 1  # the n-th time the run reaches that step and moment
    seen: int = 0
    fired: bool = False


@dataclass
class Servers:
    settings: Settings
    opened: list[Platform] = field(default_factory=list)
    point: CrashPoint | None = None

    def open(self, *, crash: CrashPoint | None = None, **changes: object) -> Platform:
        settings = dataclasses.replace(self.settings, **changes) if changes else self.settings
        holder: list[Platform] = []

        def failpoint(kind: str, step: str, moment: str) -> None:
            if crash is None or crash.fired or (kind, step, moment) != (crash.kind, crash.step, crash.moment):
                return
            crash.seen += 1
            if crash.seen < crash.occurrence:
                return
            crash.fired = True
            holder[0].crash()
            raise Stop()

        platform = Platform.open(settings, connect, failpoint=failpoint)
        platform.collect_metrics = False
        platform.run_scaling = False
        holder.append(platform)
        self.opened.append(platform)
        platform.start()
        return platform

    def close(self) -> None:
        for platform in self.opened:
            with contextlib.suppress(Exception):  # a crashed one may fail to close: it is gone anyway
                platform.close()


@contextmanager
def servers(settings: Settings) -> Iterator[Servers]:
    group = Servers(settings)
    try:
        yield group
    finally:
        group.close()


def finish(platform: Platform, operation_id: str, timeout: float = 30.0) -> Operation:
    return wait_done(platform, operation_id, timeout)
