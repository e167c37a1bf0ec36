"""Clocks are passed in; ca_core never reads the time itself."""
from __future__ import annotations

import datetime as dt
from typing import Protocol

UTC = dt.timezone.utc
JST = dt.timezone(dt.timedelta(hours=9), "JST")


class Clock(Protocol):
    def now(self) -> dt.datetime:
        """Current time, timezone-aware UTC, whole seconds."""


class SystemClock:
    """The real clock, truncated to whole seconds (X.509 times carry no fractions)."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(UTC).replace(microsecond=0)


class FixedClock:
    """A settable clock for tests."""

    def __init__(self, at: dt.datetime):
        self.at = at.astimezone(UTC).replace(microsecond=0)

    def now(self) -> dt.datetime:
        return self.at

    def advance(self, **delta) -> None:
        self.at = self.at + dt.timedelta(**delta)


def parse_rfc3339(text) -> dt.datetime:
    """An RFC 3339 date-time with its offset (e.g. 2026-11-22T09:00:00+09:00 or ...Z); raises ValueError."""
    if not isinstance(text, str) or "T" not in text:
        raise ValueError("not an RFC 3339 date-time")
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("an RFC 3339 date-time needs an offset")
    return value


def format_rfc3339(value: dt.datetime) -> str:
    """An aware date-time as RFC 3339 in UTC with a Z (e.g. 2026-11-22T00:00:00Z)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
