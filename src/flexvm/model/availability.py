"""Availability sets: VMs spread over fault domains so one failure takes out only part of them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

MAX_FAULT_DOMAINS = 32


@dataclass
class AvailabilitySet:
    name: str
    fault_domains: int
    created_at: datetime


@dataclass
class Leftover:
    """Something flexvm made on a host and could not remove because the host was unreachable.

    Cleaned up when the host answers again, so a failed operation never leaves an orphan unseen.
    """

    id: int | None
    host: str
    kind: str  # "domain" or "volume"
    name: str
    reason: str
    created_at: datetime
