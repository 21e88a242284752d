"""Metrics: the registry, the two endpoints, and publishing across workers (docs/METRICS.md).

create_app makes the Registry and hands it to MetricsMiddleware; the endpoints take one Snapshot
per scrape from the registry and the counters other modules keep (the realtime hub, idempotency
stats, the database pool), merge the snapshots other workers published to Redis, and render it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import time
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import Response

from .. import redis_client
from ..errors import Unauthorized
from ..openapi import Operation
from ..responses import OrjsonResponse
from ..settings import Settings
from . import aggregate, exposition
from .publish import Publisher, instance_id
from .registry import Registry, Snapshot

__all__ = ["Registry", "Snapshot", "collect", "local_snapshot", "operations", "start"]
log = logging.getLogger("app.metrics")

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
            if f.name != "connections":  # a gauge, taken from the live set below
                counters[f"realtime_{f.name}"] = int(getattr(hub.metrics, f.name))
        for attr, name in ENCODER_COUNTERS:
            counters[name] = int(getattr(hub.encoder, attr))
        for attr, name in HUB_HISTOGRAMS:
            hist = getattr(hub, attr, None)
            if hist is not None:
                snap.histograms[name] = hist.copy()
        snap.gauges["realtime_connections"] = len(hub.connections)
        snap.org_connections = dict(Counter(c.org_id for c in hub.connections))
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
    for attr, name in (("db", "db_pool"), ("db_replica", "db_replica_pool")):
        pool = getattr(getattr(state, attr, None), "pool", None)
        if pool is not None and hasattr(pool, "size") and hasattr(pool, "checkedout"):
            snap.gauges[f"{name}_size"] = pool.size()
            snap.gauges[f"{name}_in_use"] = pool.checkedout()
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


# Lag of a PostgreSQL standby: 0 when it has replayed all it received, else the age of the last
# replayed transaction. NULL lag (a primary) is reported as null with that reason.
REPLICA_LAG_SQL = text(
    "SELECT pg_is_in_recovery() AS standby, CASE WHEN pg_last_wal_receive_lsn() = "
    "pg_last_wal_replay_lsn() THEN 0 ELSE EXTRACT(EPOCH FROM now() - "
    "pg_last_xact_replay_timestamp()) END AS lag_s"
)
REPLICA_TIMEOUT_S = 1.0


async def replica_lag(engine: Any) -> tuple[float | None, str | None]:
    """(lag in seconds, None) or (None, why it cannot be measured)."""
    if engine is None:
        return None, "no read replica is configured (DATABASE_REPLICA_URL); reads use the primary"
    if engine.dialect.name != "postgresql":
        return None, f"the replica is {engine.dialect.name}, which has no replication to measure"
    try:
        async with asyncio.timeout(REPLICA_TIMEOUT_S), engine.connect() as conn:
            row = (await conn.execute(REPLICA_LAG_SQL)).one()
    except Exception as exc:
        return None, f"the replica did not answer ({type(exc).__name__})"
    if not row.standby:
        return None, "DATABASE_REPLICA_URL names a server that is not in recovery (a primary)"
    if row.lag_s is None:
        return None, "the standby has not replayed any transaction yet"
    return float(row.lag_s), None


async def _database(app: Any, snap: Snapshot) -> dict[str, Any]:
    out: dict[str, Any] = {"pool": _pool(snap, "db_pool")}
    if out["pool"] is None:
        out["pool_reason"] = "the database engine has no fixed-size pool"
    replica = getattr(app.state, "db_replica", None)
    if replica is not None:
        out["replica_pool"] = _pool(snap, "db_replica_pool")
    lag, reason = await replica_lag(replica)
    out["replica_lag_s"] = lag
    if reason is not None:
        out["replica_reason"] = reason
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
    body = exposition.render(
        snap,
        openmetrics=om,
        org_cap=request.app.state.settings.realtime_max_connections_per_org,
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
