"""Metrics: the registry, the two endpoints, and publishing across workers (docs/METRICS.md).

create_app makes the Registry and hands it to MetricsMiddleware; the endpoints take one Snapshot
per scrape from the registry and the counters other modules keep (the realtime hub, idempotency
stats, the database pool), merge the snapshots other workers published to Redis, and render it.
"""

from __future__ import annotations

import dataclasses
import hmac
import logging
import time
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

from pydantic import BaseModel, ConfigDict
from starlette.requests import Request
from starlette.responses import Response

from .. import redis_client
from ..errors import Unauthorized
from ..openapi import Operation
from ..replicas import FALLBACK_REASONS
from ..responses import OrjsonResponse
from ..settings import Settings
from . import aggregate, exposition
from .publish import Publisher, instance_id
from .registry import Registry, Snapshot

__all__ = ["Registry", "Snapshot", "collect", "local_snapshot", "operations", "start"]
log = logging.getLogger("streamcore_server.metrics")

ENCODER_COUNTERS = (
    ("frames", "realtime_frames_encoded"),
    ("compressed_frames", "realtime_frames_compressed"),
    ("raw_bytes", "realtime_frame_raw_bytes"),
    ("wire_bytes", "realtime_frame_wire_bytes"),
    ("bytes_saved", "realtime_frame_bytes_saved"),
)
HUB_HISTOGRAMS = (("delivery", "realtime_delivery"), ("window_lengths", "realtime_window"))


def local_snapshot(app: Any) -> Snapshot:
    """This process's numbers, copied once (what a scrape reads and what publish() sends)."""
    state = app.state
    registry: Registry = state.metrics
    snap = registry.snapshot()
    counters = snap.counters
    hub = getattr(state, "hub", None)
    if hub is not None:
        for f in dataclasses.fields(hub.metrics):
            if f.name == "reset_reasons":
                for reason, n in hub.metrics.reset_reasons.items():
                    counters[f"realtime_reset_{reason}"] = n
            elif f.name != "connections":  # a gauge, taken from the live set below
                counters[f"realtime_{f.name}"] = int(getattr(hub.metrics, f.name))
        for attr, name in ENCODER_COUNTERS:
            counters[name] = int(getattr(hub.encoder, attr))
        for attr, name in HUB_HISTOGRAMS:
            hist = getattr(hub, attr, None)
            if hist is not None:
                snap.histograms[name] = hist.copy()
        snap.gauges["realtime_connections"] = len(hub.connections)
        # Cores spent flushing (smoothed): summed over processes, it stays meaningful.
        snap.gauges["realtime_flush_load"] = float(hub.scheduler.load)
        snap.org_connections = dict(Counter(c.org_id for c in hub.connections))
    broker = getattr(state, "broker", None)
    if broker is not None and hasattr(broker, "outbox_size"):
        for attr in ("interruptions", "events_lost", "publish_retries", "gaps_filled"):
            counters[f"realtime_broker_{attr}"] = int(getattr(broker, attr))
        snap.gauges["realtime_broker_outbox"] = broker.outbox_size
        snap.gauges["realtime_broker_orgs"] = broker.orgs_subscribed
    stats = getattr(state, "idempotency_stats", None)
    if stats is not None:
        for f in dataclasses.fields(stats):
            counters[f"idempotency_{f.name}"] = int(getattr(stats, f.name))
    cache = getattr(state, "summary_cache", None)
    if cache is not None:
        counters.update(cache.counters())
    edge = getattr(state, "edge", None)
    if edge is not None:
        counters.update(edge.counters())
    router = getattr(state, "replicas", None)
    engines = [("db_pool", getattr(state, "db", None))]
    if router is not None:
        counters.update(router.counters())
        engines += [("db_replica_pool", r.engine) for r in router.replicas]
    for name, engine in engines:
        pool = getattr(engine, "pool", None)
        if pool is not None and hasattr(pool, "size") and hasattr(pool, "checkedout"):
            snap.gauges[f"{name}_size"] = snap.gauges.get(f"{name}_size", 0) + pool.size()
            snap.gauges[f"{name}_in_use"] = snap.gauges.get(f"{name}_in_use", 0) + pool.checkedout()
    snap.instances = [{"id": getattr(state, "metrics_instance", "local"), "age_s": 0.0}]
    return snap


async def collect(app: Any) -> tuple[Snapshot, dict[str, Any]]:
    """The whole service's snapshot when Redis holds the other workers', else this process's."""
    snap = local_snapshot(app)
    publisher: Publisher | None = getattr(app.state, "metrics_publisher", None)
    if publisher is None:
        return snap, {
            "scope": "process",
            "reason": "REDIS_URL is not set: this process reports only itself",
            "instances": snap.instances,
        }
    try:
        others = await publisher.others()
    except Exception as exc:
        return snap, {
            "scope": "process",
            "reason": f"Redis did not answer ({type(exc).__name__}): this process only",
            "instances": snap.instances,
        }
    for other in others:
        snap.merge(other)
    return snap, {
        "scope": "service",
        "instances": snap.instances,
        "publish_interval_s": publisher.interval_s,
        "max_staleness_s": max((i["age_s"] for i in snap.instances), default=0.0),
    }


def _pool(snap: Snapshot, name: str) -> dict[str, Any] | None:
    if f"{name}_size" not in snap.gauges:
        return None
    size = int(snap.gauges[f"{name}_size"])
    in_use = int(snap.gauges.get(f"{name}_in_use", 0))
    return {"size": size, "in_use": in_use, "utilisation": in_use / size if size else None}


def _replicas(app: Any, snap: Snapshot) -> dict[str, Any]:
    """Each standby as this process's last probe saw it, and where routed reads went."""
    router = getattr(app.state, "replicas", None)
    if router is None:
        return {
            "replica_lag_s": None,
            "replica_reason": "no read replica is configured (DATABASE_REPLICA_URL); "
            "reads use the primary",
        }
    statuses = router.status()
    usable = [s["lag_s"] for s in statuses if s["up"] and s["lag_s"] is not None]
    c = snap.counters
    reads = c.get("db_reads_replica", 0) + c.get("db_reads_primary", 0)
    out: dict[str, Any] = {
        "replica_pool": _pool(snap, "db_replica_pool"),
        # The least lag of a standby that answers: what the next read may be served at.
        "replica_lag_s": min(usable) if usable else None,
        "replica_max_lag_s": router.max_lag_s,
        "replicas": statuses,
        "routed_reads": {
            "replica": c.get("db_reads_replica", 0),
            "primary": c.get("db_reads_primary", 0),
            "replica_share": c.get("db_reads_replica", 0) / reads if reads else None,
            "fallbacks": {r: c.get(f"db_replica_fallback_{r}", 0) for r in FALLBACK_REASONS},
        },
    }
    if not usable:
        out["replica_reason"] = "no standby answers: " + "; ".join(
            f"{s['name']}: {s.get('reason')}" for s in statuses
        )
    return out


async def _database(app: Any, snap: Snapshot) -> dict[str, Any]:
    out: dict[str, Any] = {"pool": _pool(snap, "db_pool")}
    if out["pool"] is None:
        out["pool_reason"] = "the database engine has no fixed-size pool"
    out.update(_replicas(app, snap))
    out["partitions_ready"] = None
    out["partitions_reason"] = "the schema has no partitioned tables"
    return out


def _authorise(request: Request) -> None:
    token = request.app.state.settings.metrics_token
    if token is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise Unauthorized("A valid METRICS_TOKEN bearer token is required.")


class AggregatedMetrics(BaseModel):
    """The whole service's metrics and SLO compliance (docs/METRICS.md)."""

    model_config = ConfigDict(extra="allow")

    generated_at: float
    source: dict[str, Any]
    api: dict[str, Any]
    realtime: dict[str, Any]
    connections: dict[str, Any]
    idempotency: dict[str, Any]
    cache: dict[str, Any]
    database: dict[str, Any]
    slo: list[dict[str, Any]]


async def aggregated_metrics(request: Request) -> Response:
    """API latency and errors by route, realtime delivery, connections, idempotency, cache,
    database and SLO compliance, merged across every worker that publishes to Redis.
    Requires `Authorization: Bearer <METRICS_TOKEN>` when METRICS_TOKEN is set."""
    _authorise(request)
    app = request.app
    snap, source = await collect(app)
    settings: Settings = app.state.settings
    body = aggregate.build(
        snap,
        now=time.time(),
        now_minute=app.state.metrics.now_minute(),
        source=source,
        database=await _database(app, snap),
        per_org_cap=settings.realtime_max_connections_per_org,
        per_user_cap=settings.realtime_max_connections_per_user,
    )
    return OrjsonResponse(body, headers={"Cache-Control": "no-store"})


async def prometheus_metrics(request: Request) -> Response:
    """Prometheus exposition (text 0.0.4, or OpenMetrics 1.0 when Accept asks for
    application/openmetrics-text), merged across workers. Requires
    `Authorization: Bearer <METRICS_TOKEN>` when METRICS_TOKEN is set."""
    _authorise(request)
    snap, _ = await collect(request.app)
    om = "application/openmetrics-text" in request.headers.get("accept", "")
    router = getattr(request.app.state, "replicas", None)
    body = exposition.render(
        snap,
        openmetrics=om,
        org_cap=request.app.state.settings.realtime_max_connections_per_org,
        replicas=router.status() if router is not None else (),
        replica_max_lag_s=router.max_lag_s if router is not None else None,
    )
    media = exposition.OPENMETRICS_CONTENT_TYPE if om else exposition.TEXT_CONTENT_TYPE
    return Response(body, headers={"Content-Type": media, "Cache-Control": "no-store"})


def operations(settings: Settings) -> list[Operation]:
    """The two endpoints; 401 is documented (and answered) only when METRICS_TOKEN is set."""
    errors = (401,) if settings.metrics_token else ()
    return [
        Operation(
            "GET",
            "/v1/system/metrics/aggregated",
            aggregated_metrics,
            "Aggregated metrics and SLO compliance",
            "system",
            responses={200: AggregatedMetrics},
            errors=errors,
            auth=False,
        ),
        Operation(
            "GET",
            "/v1/system/metrics/prometheus",
            prometheus_metrics,
            "Prometheus exposition",
            "system",
            text_responses={
                200: (
                    "text/plain",
                    "Prometheus text format 0.0.4, or OpenMetrics 1.0.0 "
                    "(application/openmetrics-text) when Accept asks for it",
                )
            },
            errors=errors,
            auth=False,
        ),
    ]


async def start(app: Any, settings: Settings, stack: AsyncExitStack) -> None:
    """Publish this process's snapshot to Redis on an interval (when REDIS_URL is set)."""
    app.state.metrics_instance = instance_id()
    app.state.metrics_publisher = None
    if not settings.redis_url:
        return
    client = redis_client.connect(settings.redis_url, timeout=1.0)
    stack.push_async_callback(client.aclose)
    publisher = Publisher(
        client,
        settings.metrics_redis_prefix,
        settings.metrics_publish_interval_s,
        lambda: local_snapshot(app),
        app.state.metrics_instance,
    )
    await publisher.start()
    stack.push_async_callback(publisher.stop)
    app.state.metrics_publisher = publisher
