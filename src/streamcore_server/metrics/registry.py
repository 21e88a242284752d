"""The metrics registry of one process, and the mergeable Snapshot every reader works from.

The request path costs one dict lookup, two `Histogram.record` calls (the series and the current
minute) and two integer increments; nothing here touches prometheus_client. Readers take a
Snapshot (copies), merge the Snapshots of other workers into it (publish.py), and render it as
JSON (aggregate.py) or Prometheus text (exposition.py).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.routing import Match, Route

from streamcore import Histogram

UNMATCHED = "unmatched"  # the one route label of requests no route matched
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"
STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")
MINUTE_S = 60
RING_MINUTES = 16  # minutes kept for the recent windows (the JSON uses the last RECENT_MINUTES)
RECENT_MINUTES = 5
SNAPSHOT_VERSION = 1


class Series:
    """One (route, method): its latency histogram and its responses per status class."""

    __slots__ = ("hist", "statuses")

    def __init__(self, hist: Histogram | None = None, statuses: list[int] | None = None) -> None:
        self.hist = hist if hist is not None else Histogram()
        # Index = status // 100; 1..5 are exported, anything else counts in 0 (never exported).
        self.statuses = statuses if statuses is not None else [0] * 10

    def copy(self) -> Series:
        return Series(self.hist.copy(), list(self.statuses))

    def merge(self, other: Series) -> None:
        self.hist.merge(other.hist)
        self.statuses = [a + b for a, b in zip(self.statuses, other.statuses, strict=True)]

    @property
    def requests(self) -> int:
        return sum(self.statuses[1:6])

    def dump(self) -> dict[str, Any]:
        return {"h": base64.b64encode(self.hist.to_bytes()).decode(), "s": self.statuses}

    @classmethod
    def load(cls, raw: Mapping[str, Any]) -> Series:
        statuses = [int(x) for x in raw["s"]]
        if len(statuses) != 10:
            raise ValueError("a series has 10 status counters")
        return cls(Histogram.from_bytes(base64.b64decode(raw["h"])), statuses)


class Registry:
    """Created by the app (create_app) and handed to the middleware and the metrics endpoints."""

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self._routes = list(routes)
        self._templates: dict[Any, str] = {r.endpoint: r.path for r in self._routes}
        self._series: dict[tuple[Any, str], Series] = {}
        self.by_label: dict[tuple[str, str], Series] = {}
        self.minutes: dict[int, Series] = {}
        self._minute = -1
        self._minute_start = self._minute_end = 0.0
        self._current = Series()
        # Wall-clock minutes from the monotonic clock: aligned across workers, immune to steps.
        self._offset = time.time() - time.perf_counter()
        self.started_at = time.time()

    def match(self, scope: MutableMapping[str, Any]) -> Any:
        """The endpoint of the route a request matches (for requests answered before routing)."""
        for route in self._routes:
            m, child = route.matches(scope)
            if m is not Match.NONE:
                return child.get("endpoint")
        return None

    def record(self, endpoint: Any, method: str, status: int, seconds: float, end: float) -> None:
        """Count one answered request (called by MetricsMiddleware; `end` is its perf_counter)."""
        key = (endpoint, method)
        series = self._series.get(key)
        if series is None:
            series = self._new_series(endpoint, method)
        idx = status // 100
        if not 0 < idx < 6:
            idx = 0
        series.hist.record(seconds)
        series.statuses[idx] += 1
        if not self._minute_start <= end < self._minute_end:
            self._roll(int((end + self._offset) // MINUTE_S))
        current = self._current
        current.hist.record(seconds)
        current.statuses[idx] += 1

    def _new_series(self, endpoint: Any, method: str) -> Series:
        route = self._templates.get(endpoint, UNMATCHED)
        label = method if method in METHODS else OTHER_METHOD
        series = self.by_label.get((route, label))
        if series is None:
            series = self.by_label[(route, label)] = Series()
        # Endpoints a route does not declare (mounts, unknown methods) share the label's series.
        if len(self._series) < 10_000:
            self._series[(endpoint, method)] = series
        return series

    def _roll(self, minute: int) -> None:
        self._minute = minute
        # The minute's bounds on the perf_counter clock, so record() compares instead of divides.
        self._minute_start = minute * MINUTE_S - self._offset
        self._minute_end = self._minute_start + MINUTE_S
        current = self.minutes.get(minute)  # never replaced: rounding may roll to the same one
        if current is None:
            current = self.minutes[minute] = Series()
            for old in [m for m in self.minutes if m <= minute - RING_MINUTES]:
                del self.minutes[old]
        self._current = current

    def now_minute(self) -> int:
        return int((time.perf_counter() + self._offset) // MINUTE_S)

    def snapshot(self) -> Snapshot:
        """Copies of the API series and the minute ring (realtime etc. are added by collect)."""
        return Snapshot(
            api={k: s.copy() for k, s in self.by_label.items()},
            minutes={m: s.copy() for m, s in self.minutes.items()},
            started_at=self.started_at,
        )


@dataclass
class Snapshot:
    """Everything one process (or a merge of several) reports; merge() adds another in place."""

    api: dict[tuple[str, str], Series] = field(default_factory=dict)
    minutes: dict[int, Series] = field(default_factory=dict)
    # Named histograms (seconds): "realtime_delivery", "realtime_window".
    histograms: dict[str, Histogram] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)  # monotonic, summed on merge
    gauges: dict[str, float] = field(default_factory=dict)  # point-in-time, summed on merge
    org_connections: dict[int, int] = field(default_factory=dict)
    started_at: float = 0.0
    published_at: float = 0.0
    instances: list[dict[str, Any]] = field(default_factory=list)

    def merge(self, other: Snapshot) -> None:
        for key, series in other.api.items():
            mine = self.api.get(key)
            if mine is None:
                self.api[key] = series.copy()
            else:
                mine.merge(series)
        for minute, series in other.minutes.items():
            mine = self.minutes.get(minute)
            if mine is None:
                self.minutes[minute] = series.copy()
            else:
                mine.merge(series)
        for name, hist in other.histograms.items():
            if name in self.histograms:
                self.histograms[name].merge(hist)
            else:
                self.histograms[name] = hist.copy()
        for name, value in other.counters.items():
            self.counters[name] = self.counters.get(name, 0) + value
        for name, gauge in other.gauges.items():
            self.gauges[name] = self.gauges.get(name, 0) + gauge
        for org, count in other.org_connections.items():
            self.org_connections[org] = self.org_connections.get(org, 0) + count
        self.started_at = min(self.started_at, other.started_at) or other.started_at
        self.instances.extend(other.instances)

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {
                "v": SNAPSHOT_VERSION,
                "api": [[r, m, s.dump()] for (r, m), s in self.api.items()],
                "minutes": [[minute, s.dump()] for minute, s in self.minutes.items()],
                "histograms": {
                    k: base64.b64encode(h.to_bytes()).decode() for k, h in self.histograms.items()
                },
                "counters": self.counters,
                "gauges": self.gauges,
                "orgs": [[org, n] for org, n in self.org_connections.items()],
                "started_at": self.started_at,
                "published_at": self.published_at,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Snapshot:
        """Decode a published snapshot; ValueError (or CorruptDataError) if it is not one."""
        raw = orjson.loads(data)
        if not isinstance(raw, dict) or raw.get("v") != SNAPSHOT_VERSION:
            raise ValueError("not a metrics snapshot of this version")
        return cls(
            api={(str(r), str(m)): Series.load(s) for r, m, s in raw["api"]},
            minutes={int(m): Series.load(s) for m, s in raw["minutes"]},
            histograms={
                str(k): Histogram.from_bytes(base64.b64decode(v))
                for k, v in raw["histograms"].items()
            },
            counters={str(k): int(v) for k, v in raw["counters"].items()},
            gauges={str(k): float(v) for k, v in raw["gauges"].items()},
            org_connections={int(o): int(n) for o, n in raw["orgs"]},
            started_at=float(raw["started_at"]),
            published_at=float(raw["published_at"]),
        )

    def recent(self, now_minute: int, minutes: int = RECENT_MINUTES) -> Series:
        """The last `minutes` minutes (the current, partial one included) as one series."""
        out = Series()
        for minute, series in self.minutes.items():
            if now_minute - minutes < minute <= now_minute:
                out.merge(series)
        return out

    def total(self) -> Series:
        out = Series()
        for series in self.api.values():
            out.merge(series)
        return out
