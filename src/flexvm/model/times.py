"""Durations and moments as people write them: one rule for the CLI, the API and the services.

A duration is a number with a unit: '30s', '5m', '1h', '7d' (or plain seconds from code). A
cooldown may be zero ('0s'); other durations may not. A moment is 'now', relative to now ('-1h',
'-1d'), unix seconds, or an ISO 8601 time (UTC unless it says otherwise).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from flexvm.errors import InvalidInput

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*")


def parse_duration(text: str | float, field: str) -> float:
    """'30s', '5m', '1h', '7d' -> seconds; a number is seconds already. Never zero or less."""
    seconds = _seconds(text, field)
    if seconds <= 0:
        raise InvalidInput(field, "must be longer than zero")
    return seconds


def parse_cooldown(text: str | float, field: str = "cooldown") -> float:
    """Like a duration, but zero ('0s', '0') is allowed: a rule may act again at once."""
    if isinstance(text, str) and re.fullmatch(r"\s*0+(\.0*)?\s*[smhd]?\s*", text):
        return 0.0
    seconds = _seconds(text, field)
    if seconds < 0:
        raise InvalidInput(field, "cannot be negative")
    return seconds


def _seconds(text: str | float, field: str) -> float:
    if isinstance(text, int | float) and not isinstance(text, bool):
        if not math.isfinite(text):
            raise InvalidInput(field, "must be a finite number of seconds")
        return float(text)
    match = _DURATION.fullmatch(text or "") if isinstance(text, str) else None
    if not match:
        raise InvalidInput(field, f"'{text}' is not a duration; use a number with s, m, h or d (e.g. 30s, 5m, 1h, 7d)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_moment(value: str | float | None, field: str, *, now: float, default: float) -> float:
    """Unix seconds for 'now', '-1h', '1714564800', '2024-05-01T12:00:00Z'; ``default`` for None."""
    if value is None:
        return default
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        text = str(value).strip()
        if text.lower() == "now":
            return now
        if text.startswith("-"):
            return now - parse_duration(text[1:], field)
        seconds = _absolute(text, field)
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidInput(field, f"'{value}' is not a time")
    return seconds


def _absolute(text: str, field: str) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(
            field, f"'{text}' is not a time; use ISO 8601 (2024-05-01T12:00:00Z), unix seconds, or '-1h'"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
