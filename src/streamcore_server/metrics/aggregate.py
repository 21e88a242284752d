"""The JSON of GET /v1/system/metrics/aggregated: a pure function of a Snapshot.

Latencies are in milliseconds here (seconds in the Prometheus export); a value that cannot be
measured is null with a reason beside it, never an invented number.
"""

from __future__ import annotations

from typing import Any

from streamcore import Histogram

from .registry import RECENT_MINUTES, STATUS_CLASSES, Series, Snapshot
from .slo import evaluate

QUANTILES = (50.0, 95.0, 99.0)
TOP_ORGS = 10


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def latency(hist: Histogram) -> dict[str, Any]:
    if hist.count == 0:
        return {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    p50, p95, p99 = hist.percentiles(QUANTILES)
    return {
        "count": hist.count,
        "p50_ms": _ms(p50),
        "p95_ms": _ms(p95),
        "p99_ms": _ms(p99),
        "max_ms": _ms(hist.max),
    }


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def outcomes(series: Series) -> dict[str, Any]:
    total = series.requests
    by_class = {c: series.statuses[i + 1] for i, c in enumerate(STATUS_CLASSES)}
    return {
        "requests": total,
        "responses": by_class,
        "error_rate_4xx": _ratio(by_class["4xx"], total),
        "error_rate_5xx": _ratio(by_class["5xx"], total),
        "availability": None if not total else 1.0 - by_class["5xx"] / total,
        **latency(series.hist),
    }


def _api(snap: Snapshot, now_minute: int) -> tuple[dict[str, Any], Series, Series]:
    total = snap.total()
    recent = snap.recent(now_minute)
    by_method: dict[str, Series] = {}
    for (_, method), series in snap.api.items():
        by_method.setdefault(method, Series()).merge(series)
    routes = [
        {"route": route, "method": method, **outcomes(series)}
        for (route, method), series in sorted(snap.api.items())
    ]
    return (
        {
            "lifetime": outcomes(total),
            "recent": {"window_s": RECENT_MINUTES * 60, **outcomes(recent)},
            "by_method": {m: outcomes(s) for m, s in sorted(by_method.items())},
            "by_route": routes,
        },
        total,
        recent,
    )


def _realtime(snap: Snapshot) -> dict[str, Any]:
    c = snap.counters
    delivery = snap.histograms.get("realtime_delivery")
    window = snap.histograms.get("realtime_window")
    events_in = c.get("realtime_events_in", 0)
    events_out = c.get("realtime_events_out", 0)
    raw = c.get("realtime_frame_raw_bytes", 0)
    wire = c.get("realtime_frame_wire_bytes", 0)
    frames = c.get("realtime_frames_encoded", 0)
    return {
        "delivery_latency": latency(delivery) if delivery is not None else None,
        "window_length": latency(window) if window is not None else None,
        "flush_load_cores": snap.gauges.get("realtime_flush_load", 0.0),
        "frames_flushed": c.get("realtime_frames_flushed", 0),
        "frames_sent": c.get("realtime_frames_sent", 0),
        "events_in": events_in,
        "events_out": events_out,
        # Events in per event out: 1.0 means nothing was conflated.
        "conflation_ratio": events_in / events_out if events_out else None,
        "frame_bytes_raw": raw,
        "frame_bytes_sent": wire,
        "frame_bytes_saved": c.get("realtime_frame_bytes_saved", 0),
        "compressed_share": _ratio(c.get("realtime_frames_compressed", 0), frames),
        "slow_consumer_disconnects": c.get("realtime_slow_disconnects", 0),
        "slow_consumer_coalesced": c.get("realtime_coalesced", 0),
        "resumes": c.get("realtime_resumes", 0),
        "resets": c.get("realtime_resets", 0),
        "broker_interruptions": c.get("realtime_broker_interruptions", 0),
        "broker_events_lost": c.get("realtime_broker_events_lost", 0),
        "resets_by_reason": {
            k[len("realtime_reset_") :]: v for k, v in c.items() if k.startswith("realtime_reset_")
        },
        "stale_states_dropped": c.get("realtime_stale_dropped", 0),
    }


def _connections(snap: Snapshot, per_org_cap: int, per_user_cap: int) -> dict[str, Any]:
    c = snap.counters
    top = sorted(snap.org_connections.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ORGS]
    return {
        "total": int(snap.gauges.get("realtime_connections", 0)),
        "caps": {"per_org": per_org_cap, "per_user": per_user_cap},
        "top_orgs": [
            {"org_id": org, "connections": n, "utilisation": n / per_org_cap} for org, n in top
        ],
        "refused": {
            "user_cap": c.get("realtime_refused_user_cap", 0),
            "org_cap": c.get("realtime_refused_org_cap", 0),
            "auth": c.get("realtime_refused_auth", 0),
            "bad_request": c.get("realtime_refused_bad_request", 0),
            "unavailable": c.get("realtime_refused_unavailable", 0),
        },
    }


def _idempotency(snap: Snapshot) -> dict[str, Any]:
    c = snap.counters
    return {
        "stored": c.get("idempotency_stored", 0),
        "replayed": c.get("idempotency_replays", 0),
        "conflicts": c.get("idempotency_mismatches", 0),
        "in_progress": c.get("idempotency_in_progress", 0),
        "store_errors": c.get("idempotency_redis_errors", 0),
        "store_fallbacks": c.get("idempotency_redis_fallbacks", 0),
        "claims": c.get("idempotency_claims", 0),
    }


def _cache(snap: Snapshot) -> dict[str, Any]:
    """Finance summary read-through cache (streamcore_server.cache): hits and misses per level."""
    c = snap.counters
    levels: dict[str, Any] = {}
    for level in ("l1", "l2", "l3"):
        hits = c.get(f"cache_{level}_hits")
        misses = c.get(f"cache_{level}_misses")
        if hits is None or misses is None:
            levels[level] = None
        else:
            levels[level] = {
                "hits": hits,
                "misses": misses,
                "hit_ratio": _ratio(hits, hits + misses),
            }
    if levels["l1"] is None:
        return {**levels, "hit_ratio": None, "reason": "no read-through cache is in place"}
    if levels["l2"] is None:
        levels["l2_reason"] = "REDIS_URL is not set: L1 misses go to the database"
    reads = c["cache_l1_hits"] + c["cache_l1_misses"]
    served = c["cache_l1_hits"] + c.get("cache_l2_hits", 0)
    levels["reads"] = reads
    # Reads answered without the database, over all summary reads.
    levels["hit_ratio"] = _ratio(served, reads)
    if reads == 0:
        levels["reason"] = "no summary was read yet"
    return levels


def build(
    snap: Snapshot,
    *,
    now: float,
    now_minute: int,
    source: dict[str, Any],
    database: dict[str, Any],
    per_org_cap: int,
    per_user_cap: int,
) -> dict[str, Any]:
    api, _total, recent = _api(snap, now_minute)
    realtime = _realtime(snap)
    cache = _cache(snap)
    recent_req = recent.requests
    no_requests = "no requests in the recent window"
    p95 = p99 = None
    if recent.hist.count:
        p95, p99 = recent.hist.percentiles((95.0, 99.0))
    delivery = snap.histograms.get("realtime_delivery")
    delivery_p95 = delivery.percentile(95.0) if delivery is not None and delivery.count else None
    error_rate = recent.statuses[5] / recent_req if recent_req else None
    window = f"last {RECENT_MINUTES} min"
    slos = evaluate(
        {
            "api_latency_p95": (p95, window, no_requests),
            "api_latency_p99": (p99, window, no_requests),
            "realtime_delivery_p95": (
                delivery_p95,
                "process lifetime",
                "no realtime frame was delivered",
            ),
            "cache_hit_ratio": (cache.get("hit_ratio"), "process lifetime", cache.get("reason")),
            "error_rate": (error_rate, window, no_requests),
            "availability": (None if error_rate is None else 1.0 - error_rate, window, no_requests),
        }
    )
    return {
        "generated_at": now,
        "source": source,
        "api": api,
        "realtime": realtime,
        "connections": _connections(snap, per_org_cap, per_user_cap),
        "idempotency": _idempotency(snap),
        "cache": cache,
        "edge": {k[len("edge_") :]: v for k, v in snap.counters.items() if k.startswith("edge_")},
        "database": database,
        "slo": slos,
    }
