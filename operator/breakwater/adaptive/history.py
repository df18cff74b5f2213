"""One upstream's history as the tuner reads it: a fixed ring of equal time buckets.

Memory is independent of traffic and of the window: `BUCKETS` buckets of `FIELDS` unsigned 32-bit
counters each (calls, failures, trips and the sidecar's latency histogram), plus the lengths of the
last `OUTAGES` outages. That is `BYTES_PER_UPSTREAM` bytes of counters (4,112) per policy and upstream,
whatever the call rate; the bucket width is `historyWindow / BUCKETS`.

What goes in comes from the sidecars' periodic reports (`api/report.UpstreamReport`): the counters are
cumulative over a breaker's life, so the operator adds the difference between two reports of the same
pod (`PodCounters.advance`); a lost report costs nothing (the next difference covers it) and a restarted
sidecar (counters lower than before) counts from zero. Outage lengths come from the transitions the
reports carry (Closed -> Open, ... -> Closed); the pods whose breakers were open at overlapping times
saw one outage of the upstream, which is recorded once (from the first trip to the last failed trial
of any of them), not once per pod.

The ring is keyed by wall-clock time (`floor(t / width)`), so a persisted history (`encode`/`decode`)
lines up with the present after an operator restart; buckets older than the window are dropped when
the ring advances, never shifted.
"""

from __future__ import annotations

import base64
import math
import zlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from breakwater.api.report import LATENCY_BOUNDS_SECONDS

__all__ = [
    "BUCKETS",
    "BYTES_PER_UPSTREAM",
    "FIELDS",
    "LATENCY_BINS",
    "History",
    "PodCounters",
    "Totals",
]

BUCKETS = 60
LATENCY_BINS = len(LATENCY_BOUNDS_SECONDS) + 1  # the last bin is "slower than the last bound"
CALLS, FAILURES, TRIPS, LATENCY = 0, 1, 2, 3  # field offsets in a bucket; latency bins from LATENCY on
FIELDS = LATENCY + LATENCY_BINS
OUTAGES = 8
_MAX = 0xFFFFFFFF
BYTES_PER_UPSTREAM = BUCKETS * FIELDS * 4 + OUTAGES * 4
"""Counter bytes per policy and upstream (the Python objects around them add about 250 bytes)."""
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Totals:
    """What one bucket (or a sum of buckets) holds."""

    calls: int
    failures: int
    trips: int
    latency: tuple[int, ...]

    @property
    def failure_rate(self) -> float | None:
        return self.failures / self.calls if self.calls else None


@dataclass(slots=True)
class History:
    """The ring of one policy's upstream. `width` is the bucket length in seconds."""

    width: float
    head: int = -1  # absolute index (floor(t / width)) of the newest bucket; -1 while empty
    counters: array[int] = field(default_factory=lambda: array("I", bytes(4 * BUCKETS * FIELDS)))
    outages: array[float] = field(default_factory=lambda: array("f"))
    newest_outage: tuple[float, float, float] | None = None
    """(first trip, last failed trial, last close) of the newest outage, to merge the other pods' view
    of it into it. Not persisted: a pod that closes after an operator restart adds its own record."""

    @classmethod
    def for_window(cls, window_seconds: float) -> History:
        return cls(width=max(window_seconds / BUCKETS, 1.0))

    # -- writing -------------------------------------------------------------------------------------

    def _slot(self, at: float) -> int | None:
        """The offset of the bucket holding time `at`, advancing the ring; None if `at` is too old."""
        index = math.floor(at / self.width)
        if self.head < 0:
            self.head = index
        elif index > self.head:
            for absolute in range(max(self.head + 1, index - BUCKETS + 1), index + 1):
                start = (absolute % BUCKETS) * FIELDS
                self.counters[start : start + FIELDS] = array("I", bytes(4 * FIELDS))
            self.head = index
        elif index <= self.head - BUCKETS:
            return None
        return (index % BUCKETS) * FIELDS

    def advance(self, now: float) -> None:
        """Move the ring to `now` (buckets that fell out of the window are emptied)."""
        self._slot(now)

    def add(self, at: float, *, calls: int = 0, failures: int = 0, trips: int = 0,
            latency: Sequence[int] = ()) -> None:  # fmt: skip
        slot = self._slot(at)
        if slot is None:
            return
        c = self.counters
        c[slot + CALLS] = min(_MAX, c[slot + CALLS] + calls)
        c[slot + FAILURES] = min(_MAX, c[slot + FAILURES] + failures)
        c[slot + TRIPS] = min(_MAX, c[slot + TRIPS] + trips)
        for i, n in enumerate(latency[:LATENCY_BINS]):
            if n:
                c[slot + LATENCY + i] = min(_MAX, c[slot + LATENCY + i] + n)

    def add_outage(self, seconds: float, *, opened: float | None = None, closed: float | None = None) -> None:
        """An outage was still failing `seconds` after one pod's breaker tripped at `opened` (its last
        failed trial; 0 when the first trial succeeded), and that breaker closed at `closed`. When its
        open time overlaps the newest outage's (another pod's view of the same outage), that one grows
        to cover both instead."""
        if not (seconds >= 0 and math.isfinite(seconds)):
            return
        newest = self.newest_outage
        if opened is not None and closed is not None and newest is not None and self.outages:
            start, failing, end = newest
            if opened <= end and closed >= start:
                start, failing, end = min(start, opened), max(failing, opened + seconds), max(end, closed)
                self.newest_outage = (start, failing, end)
                self.outages[-1] = failing - start
                return
        self.newest_outage = None if opened is None or closed is None else (opened, opened + seconds, closed)
        self.outages.append(seconds)
        if len(self.outages) > OUTAGES:
            del self.outages[0]

    # -- reading -------------------------------------------------------------------------------------

    def buckets(self, now: float) -> list[tuple[float, Totals]]:
        """The buckets of the window ending at `now`, oldest first, with their start times."""
        if self.head < 0:
            return []
        newest = min(self.head, math.floor(now / self.width))
        result = []
        for absolute in range(newest - BUCKETS + 1, newest + 1):
            if absolute < 0 or absolute > self.head or absolute <= self.head - BUCKETS:
                continue
            start = (absolute % BUCKETS) * FIELDS
            row = self.counters[start : start + FIELDS]
            if row[CALLS] or row[TRIPS]:
                result.append(
                    (
                        absolute * self.width,
                        Totals(row[CALLS], row[FAILURES], row[TRIPS], tuple(row[LATENCY:])),
                    )
                )
        return result

    def recent_outages(self) -> tuple[float, ...]:
        return tuple(self.outages)

    # -- persistence ---------------------------------------------------------------------------------

    def encode(self) -> str:
        """A compact text form: zlib of the counters (mostly zeros and small numbers), base64."""
        raw = (
            array("q", [_FORMAT, self.head, BUCKETS, FIELDS, len(self.outages)]).tobytes()
            + array("d", [self.width]).tobytes()
            + self.counters.tobytes()
            + self.outages.tobytes()
        )
        return base64.b64encode(zlib.compress(raw, 9)).decode()

    @classmethod
    def decode(cls, text: str) -> History:
        """The history `encode` wrote; ValueError if it is not one (another format or shape)."""
        try:
            raw = zlib.decompress(base64.b64decode(text, validate=True))
        except (ValueError, zlib.error) as exc:
            raise ValueError(f"not an encoded history: {exc}") from exc
        head = array("q")
        head.frombytes(raw[:40])
        fmt, newest, buckets, fields, outages = head.tolist()
        if (fmt, buckets, fields) != (_FORMAT, BUCKETS, FIELDS) or not 0 <= outages <= OUTAGES:
            raise ValueError("an encoded history of another format")
        width = array("d")
        width.frombytes(raw[40:48])
        counters = array("I")
        end = 48 + 4 * BUCKETS * FIELDS
        counters.frombytes(raw[48:end])
        lengths = array("f")
        lengths.frombytes(raw[end : end + 4 * outages])
        if len(raw) != end + 4 * outages or not width[0] > 0:
            raise ValueError("a truncated encoded history")
        return cls(width=width[0], head=newest, counters=counters, outages=lengths)

    def merged(self, newer: History) -> History:
        """This (persisted) history with `newer` (built from reports since) added into it; `newer`
        alone when the bucket widths differ."""
        if newer.width != self.width:
            return newer
        merged = History(self.width, self.head, array("I", self.counters), array("f", self.outages))
        if newer.head >= 0:
            for start, b in newer.buckets((newer.head + 1) * newer.width - 1e-9):
                merged.add(start, calls=b.calls, failures=b.failures, trips=b.trips, latency=b.latency)
        for seconds in newer.outages:
            merged.add_outage(seconds)
        return merged

    def rescaled(self, window_seconds: float) -> History:
        """This history for another window: kept if the bucket width is the same, else started anew
        (buckets of another width cannot be split honestly); outage lengths are kept either way."""
        fresh = History.for_window(window_seconds)
        if fresh.width == self.width:
            return self
        fresh.outages = array("f", self.outages)
        return fresh


@dataclass(slots=True)
class PodCounters:
    """The last cumulative counters one pod reported for one upstream, to turn reports into additions.

    `open_since` is when this pod's breaker last went Closed -> Open (its outage's start),
    `failed_at` when a trial last failed since then (HalfOpen -> Open: the upstream still down), and
    `last_transition` the time of the newest transition already counted (a resent report carries the
    same transitions again).
    """

    calls: int = -1
    failures: int = 0
    trips: int = 0
    latency: array[int] = field(default_factory=lambda: array("I"))
    open_since: float | None = None
    failed_at: float | None = None
    last_transition: float = 0.0

    def advance(
        self, calls: int, failures: int, trips: int, latency: Sequence[int]
    ) -> tuple[int, int, int, list[int]]:
        """The additions since the previous report (everything, for the first report of a sidecar that
        restarted; nothing for the first report seen, which may hold a long life already counted)."""
        first = self.calls < 0
        restarted = not first and calls < self.calls
        if first:
            added: tuple[int, int, int, list[int]] = (0, 0, 0, [0] * len(latency))
        elif restarted:
            added = (calls, failures, trips, list(latency))
        else:
            previous = list(self.latency) if len(self.latency) == len(latency) else [0] * len(latency)
            added = (
                max(0, calls - self.calls),
                max(0, failures - self.failures),
                max(0, trips - self.trips),
                [max(0, now - before) for now, before in zip(latency, previous, strict=True)],
            )
        self.calls, self.failures, self.trips = calls, failures, trips
        self.latency = array("I", (min(_MAX, n) for n in latency))
        return added
