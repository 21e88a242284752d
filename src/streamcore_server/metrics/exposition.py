"""Prometheus text exposition (format 0.0.4 and OpenMetrics 1.0): a pure function of a Snapshot.

One prefix, base units in the names, cumulative histogram buckets read from streamcore's
histograms at LATENCY_EDGES (which hold the SLO thresholds), bounded labels: route template,
method, status class, refusal reason, and the org ids of the top TOP_ORGS orgs by connections.
Raw series only: percentiles and SLO verdicts are the JSON endpoint's and the recording rules'.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from streamcore import Histogram

from ..replicas import FALLBACK_REASONS
from .registry import STATUS_CLASSES, Snapshot
from .slo import LATENCY_EDGES

PREFIX = "streamcore"
TOP_ORGS = 10
TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# (counter name without _total, snapshot counter key, help)
REALTIME_COUNTERS = (
    ("realtime_events_in", "realtime_events_in", "Events accepted by the hub."),
    ("realtime_events_out", "realtime_events_out", "Events put into frames after conflation."),
    ("realtime_frames_flushed", "realtime_frames_flushed", "Event frames built by the flusher."),
    ("realtime_frames_sent", "realtime_frames_sent", "Frames written to sockets."),
    ("realtime_frames_encoded", "realtime_frames_encoded", "Frames encoded (one per codec)."),
    ("realtime_frames_compressed", "realtime_frames_compressed", "Encoded frames compressed."),
    ("realtime_frame_raw_bytes", "realtime_frame_raw_bytes", "Frame bytes before compression."),
    ("realtime_frame_wire_bytes", "realtime_frame_wire_bytes", "Frame bytes after compression."),
    (
        "realtime_slow_consumer_disconnects",
        "realtime_slow_disconnects",
        "Connections closed for not reading.",
    ),
    (
        "realtime_slow_consumer_coalesced",
        "realtime_coalesced",
        "Queues coalesced for slow readers.",
    ),
    ("realtime_resumes", "realtime_resumes", "Streams resumed from history."),
    ("realtime_resets", "realtime_resets", "Streams told to reset."),
    (
        "realtime_broker_interruptions",
        "realtime_broker_interruptions",
        "Times this instance's subscription to the broker broke.",
    ),
    (
        "realtime_broker_events_lost",
        "realtime_broker_events_lost",
        "Events of committed writes that never reached the shared history.",
    ),
    (
        "realtime_broker_publish_retries",
        "realtime_broker_publish_retries",
        "Failed publishes to the broker, retried.",
    ),
    (
        "realtime_broker_gaps_filled",
        "realtime_broker_gaps_filled",
        "Holes in an org's sequence filled from the history.",
    ),
    (
        "realtime_stale_states_dropped",
        "realtime_stale_dropped",
        "State events older than one already taken.",
    ),
)
REFUSALS = ("user_cap", "org_cap", "auth", "bad_request", "unavailable")
RESET_REASONS = (
    "history_expired",
    "epoch_changed",
    "unknown_seq",
    "history_unavailable",
    "history_lost",
    "events_lost",
)
IDEMPOTENCY_COUNTERS = (
    ("idempotency_claims", "idempotency_claims", "Idempotency keys claimed by a request."),
    ("idempotency_stored", "idempotency_stored", "Responses stored under a key."),
    ("idempotency_replays", "idempotency_replays", "Stored responses replayed."),
    ("idempotency_conflicts", "idempotency_mismatches", "Keys reused with another request."),
    ("idempotency_in_progress", "idempotency_in_progress", "Answers that a key is in flight."),
    ("idempotency_store_errors", "idempotency_redis_errors", "Redis store errors."),
    ("idempotency_store_fallbacks", "idempotency_redis_fallbacks", "Falls back to the database."),
)
CACHE_LEVELS = ("l1", "l2", "l3")
EDGE_COUNTERS = (
    ("edge_purge_tags", "edge_purge_tags", "Tags writes asked the edge to purge."),
    ("edge_purge_batches", "edge_purge_batches", "Purge windows sent."),
    ("edge_purge_requests", "edge_purge_requests", "Purge requests sent, retries included."),
    ("edge_purge_succeeded", "edge_purge_succeeded", "Purge requests the edge accepted."),
    ("edge_purge_failed", "edge_purge_failed", "Purge requests that failed (each retried)."),
    ("edge_purge_retries", "edge_purge_retries", "Purge requests sent again after a failure."),
    ("edge_purge_repeats", "edge_purge_repeats", "Purges sent once more after landing."),
    ("edge_purge_moot", "edge_purge_moot", "Purges given up once the edge had expired them."),
)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Sequence[tuple[str, str]]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _num(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class _Writer:
    def __init__(self, openmetrics: bool) -> None:
        self.om = openmetrics
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str) -> str:
        full = f"{PREFIX}_{name}"
        meta = full if (self.om or kind != "counter") else f"{full}_total"
        self.lines.append(f"# HELP {meta} {help_}")
        self.lines.append(f"# TYPE {meta} {kind}")
        return full

    def sample(self, name: str, labels: Sequence[tuple[str, str]], value: float) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_num(value)}")

    def counter(
        self, name: str, help_: str, samples: Iterable[tuple[Sequence[tuple[str, str]], int]]
    ) -> None:
        full = self.family(name, "counter", help_)
        for labels, value in samples:
            self.sample(f"{full}_total", labels, value)

    def gauge(
        self, name: str, help_: str, samples: Iterable[tuple[Sequence[tuple[str, str]], float]]
    ) -> None:
        full = self.family(name, "gauge", help_)
        for labels, value in samples:
            self.sample(full, labels, value)

    def histogram(
        self,
        name: str,
        help_: str,
        samples: Iterable[tuple[Sequence[tuple[str, str]], Histogram]],
        edges: Sequence[float] = LATENCY_EDGES,
    ) -> None:
        full = self.family(name, "histogram", help_)
        for labels, hist in samples:
            cumulative = hist.cumulative_counts(edges)
            for edge, count in zip(edges, cumulative, strict=True):
                self.sample(f"{full}_bucket", [*labels, ("le", repr(float(edge)))], count)
            self.sample(f"{full}_bucket", [*labels, ("le", "+Inf")], hist.count)
            self.sample(f"{full}_count", labels, hist.count)
            self.sample(f"{full}_sum", labels, hist.sum)

    def render(self) -> bytes:
        if self.om:
            self.lines.append("# EOF")
        return ("\n".join(self.lines) + "\n").encode()


def render(
    snap: Snapshot,
    *,
    openmetrics: bool = False,
    org_cap: int | None = None,
    replicas: Sequence[Mapping[str, Any]] = (),
    replica_max_lag_s: float | None = None,
) -> bytes:
    """The exposition of one snapshot, in the text format or OpenMetrics.

    replicas are the standbys as the scraped process's last probe saw them: a standby's lag is
    the same for every worker, so it is not summed across them like the snapshot's gauges.
    """
    w = _Writer(openmetrics)
    api = sorted(snap.api.items())
    w.counter(
        "http_requests",
        "HTTP requests answered, by route template, method and status class.",
        (
            ([("route", r), ("method", m), ("status_class", c)], s.statuses[i + 1])
            for (r, m), s in api
            for i, c in enumerate(STATUS_CLASSES)
            if s.statuses[i + 1]
        ),
    )
    w.histogram(
        "http_request_duration_seconds",
        "Time from the request's arrival to the end of its response.",
        (([("route", r), ("method", m)], s.hist) for (r, m), s in api),
    )
    delivery = snap.histograms.get("realtime_delivery")
    if delivery is not None:
        w.histogram(
            "realtime_delivery_seconds",
            "Realtime latency from an event's arrival at the hub to its frame's flush to sockets.",
            [((), delivery)],
        )
    window = snap.histograms.get("realtime_window")
    if window is not None:
        w.histogram("realtime_window_seconds", "Length of flushed windows.", [((), window)])
    c = snap.counters
    for name, key, help_ in REALTIME_COUNTERS:
        if key in c:
            w.counter(name, help_, [((), c[key])])
    w.counter(
        "realtime_connections_refused",
        "WebSocket connections refused, by reason.",
        (([("reason", r)], c.get(f"realtime_refused_{r}", 0)) for r in REFUSALS),
    )
    w.counter(
        "realtime_resets_by_reason",
        "Streams told to reset, by reason.",
        (([("reason", r)], c.get(f"realtime_reset_{r}", 0)) for r in RESET_REASONS),
    )
    w.gauge(
        "realtime_connections",
        "Open realtime connections.",
        [((), snap.gauges.get("realtime_connections", 0))],
    )
    for key, help_ in (
        ("realtime_broker_outbox", "Committed writes' events waiting for the broker."),
        ("realtime_broker_orgs", "Orgs this instance is subscribed to."),
    ):
        if key in snap.gauges:
            w.gauge(key, help_, [((), snap.gauges[key])])
    top = sorted(snap.org_connections.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ORGS]
    w.gauge(
        "realtime_org_connections",
        f"Open realtime connections of the {TOP_ORGS} orgs with the most.",
        (([("org_id", str(org))], n) for org, n in top),
    )
    if org_cap is not None:
        w.gauge(
            "realtime_org_connection_cap",
            "Connections allowed per org (REALTIME_MAX_CONNECTIONS_PER_ORG).",
            [((), org_cap)],
        )
    for name, key, help_ in IDEMPOTENCY_COUNTERS:
        if key in c:
            w.counter(name, help_, [((), c[key])])
    for name, key, help_ in EDGE_COUNTERS:
        if key in c:
            w.counter(name, help_, [((), c[key])])
    if "edge_purge_backlog" in c:
        w.gauge(
            "edge_purge_backlog",
            "Purges waiting for their window or a retry.",
            [((), c["edge_purge_backlog"])],
        )
    if any(f"cache_{lv}_hits" in c for lv in CACHE_LEVELS):
        for outcome in ("hits", "misses"):
            w.counter(
                f"cache_{outcome}",
                f"Finance summary cache {outcome}, by level.",
                (
                    ([("level", lv)], c[f"cache_{lv}_{outcome}"])
                    for lv in CACHE_LEVELS
                    if f"cache_{lv}_{outcome}" in c
                ),
            )
    for key, help_ in (
        ("db_pool_size", "Database pool size."),
        ("db_pool_in_use", "Database connections checked out."),
        ("db_replica_pool_size", "Read replica pool size."),
        ("db_replica_pool_in_use", "Read replica connections checked out."),
        (
            "realtime_flush_load",
            "Cores the realtime flusher uses (smoothed); windows widen past WINDOW_FLUSH_BUDGET.",
        ),
    ):
        if key in snap.gauges:
            w.gauge(key, help_, [((), snap.gauges[key])])
    _replicas(w, snap, replicas, replica_max_lag_s)
    w.gauge(
        "metrics_instances",
        "Processes whose metrics this exposition merges.",
        [((), max(1, len(snap.instances)))],
    )
    return w.render()


def _replicas(
    w: _Writer, snap: Snapshot, replicas: Sequence[Mapping[str, Any]], max_lag_s: float | None
) -> None:
    c = snap.counters
    if "db_reads_replica" in c:
        w.counter(
            "db_routed_reads",
            "Reads the replica router sent, by the database that served them.",
            [
                ([("database", "replica")], c["db_reads_replica"]),
                ([("database", "primary")], c["db_reads_primary"]),
            ],
        )
        w.counter(
            "db_replica_fallbacks",
            "Reads the primary served because no standby could, by reason.",
            (
                ([("reason", r)], c[f"db_replica_fallback_{r}"])
                for r in FALLBACK_REASONS
                if f"db_replica_fallback_{r}" in c
            ),
        )
    if not replicas:
        return
    w.gauge(
        "db_replica_up",
        "1 while the standby answers its probes as a standby, else 0.",
        (([("replica", r["name"])], 1 if r["up"] else 0) for r in replicas),
    )
    w.gauge(
        "db_replica_lag_seconds",
        "Age of the standby's newest replayed commit while it is behind the primary, else 0.",
        (([("replica", r["name"])], r["lag_s"]) for r in replicas if r["lag_s"] is not None),
    )
    w.gauge(
        "db_replica_lag_bytes",
        "WAL bytes between the primary's position and the standby's replay position.",
        (
            ([("replica", r["name"])], r["lag_bytes"])
            for r in replicas
            if r["lag_bytes"] is not None
        ),
    )
    if max_lag_s is not None:
        w.gauge(
            "db_replica_max_lag_seconds",
            "Lag above which a standby serves no read (DATABASE_REPLICA_MAX_LAG_S).",
            [((), max_lag_s)],
        )
