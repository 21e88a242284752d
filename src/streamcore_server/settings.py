"""One frozen Settings object, read from the environment once at start-up.

No other module reads os.environ. A bad value fails start-up with a message naming the variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


class SettingsError(ValueError):
    """An environment variable holds a value the app cannot use."""


def _read(env: Mapping[str, str], name: str, default: T, cast: Callable[[str], T]) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{name}={raw!r} is not valid: {exc}") from None


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError("a TCP port is 0..65535")
    return port


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0.0 < value <= 1.0:
        raise ValueError("expected a number in (0, 1]")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("must be a finite number > 0")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("must be >= 0")
    return value


def _zstd_level(raw: str) -> int:
    value = int(raw)
    if not 1 <= value <= 22:
        raise ValueError("zstd levels are 1..22")
    return value


def _log_level(raw: str) -> str:
    level = raw.lower()
    if level not in {"critical", "error", "warning", "info", "debug"}:
        raise ValueError("one of critical, error, warning, info, debug")
    return level


def _optional_url(raw: str) -> str | None:
    return raw.strip() or None


def _replica_urls(raw: str) -> tuple[str, ...]:
    urls = tuple(u.strip() for u in raw.split(",") if u.strip())
    for url in urls:
        # A read replica is a PostgreSQL hot standby: replay positions are what routing reads.
        if not url.startswith("postgresql"):
            raise ValueError(f"{url.split('://')[0]}:// is not PostgreSQL; replicas are standbys")
    return urls


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("must be an integer > 0")
    return value


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError("one of 1/0, true/false, yes/no, on/off")


def _mismatch_status(raw: str) -> int:
    value = int(raw)
    if value not in (409, 422):
        raise ValueError("409 (Stripe) or 422 (IETF draft)")
    return value


def _slow_consumer_policy(raw: str) -> str:
    policy = raw.strip().lower()
    if policy not in {"coalesce", "disconnect"}:
        raise ValueError("one of coalesce, disconnect")
    return policy


def _origins(raw: str) -> tuple[str, ...]:
    origins = tuple(o.strip().rstrip("/") for o in raw.split(",") if o.strip())
    for origin in origins:
        # A wildcard would turn the allow-list off, and browsers refuse it with credentials.
        if origin == "*" or not origin.startswith(("https://", "http://")):
            raise ValueError(f"{origin!r} is not an http(s) origin")
    return origins


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not math.isfinite(value) or value < 0:
        raise ValueError("must be a finite number >= 0")
    return value


EDGE_PROVIDERS = ("none", "varnish", "fastly", "cloudflare")


def _edge_provider(raw: str) -> str:
    provider = raw.strip().lower()
    if provider not in EDGE_PROVIDERS:
        raise ValueError("one of " + ", ".join(EDGE_PROVIDERS))
    return provider


def _http_urls(raw: str) -> tuple[str, ...]:
    urls = tuple(u.strip().rstrip("/") for u in raw.split(",") if u.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{url!r} is not an http(s) URL")
    return urls


def _secret(raw: str) -> str:
    # HS256 wants at least 256 bits of key; shorter secrets are brute-forceable offline.
    if len(raw.encode()) < 32:
        raise ValueError("must be at least 32 bytes")
    return raw


# Money is int64 minor units in storage; the bound keeps a year of sums far from overflow.
MAX_AMOUNT_LIMIT = 10**15


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the app can be told, with embedded defaults that run alone."""

    host: str = "127.0.0.1"
    port: int = 4000
    # uvicorn worker processes behind the one port; more than one needs REDIS_URL (`serve`).
    workers: int = 1
    # SQLite under ./var is the embedded default; PostgreSQL via postgresql+asyncpg://...
    database_url: str = "sqlite+aiosqlite:///./var/streamcore.db"
    # PostgreSQL hot standbys (comma-separated) that may serve reads
    # (streamcore_server/replicas.py); a read
    # goes to the least-lagging one within DATABASE_REPLICA_MAX_LAG_S, else to the primary.
    database_replica_urls: tuple[str, ...] = ()
    database_replica_max_lag_s: float = 5.0
    # How long a user's last write pins that user's reads to replicas that replayed it. Above the
    # max lag, so a replica that may serve the user afterwards is no later than the write.
    read_your_writes_ttl_s: float = 10.0
    # Unset: embedded idempotency store, per-process connection counts, single-process fan-out.
    redis_url: str | None = None
    log_level: str = "info"
    window_min_ms: float = 30.0
    window_max_ms: float = 150.0
    # Share of one core the flusher may spend before windows widen (docs/WINDOWS.md).
    window_flush_budget: float = 0.4
    compression_threshold: int = 1024
    zstd_level: int = 1
    # Realtime stream (docs/REALTIME.md): caps, history for resume, slow consumers, fan-out.
    realtime_max_connections_per_user: int = 10
    realtime_max_connections_per_org: int = 1000
    realtime_history_events: int = 10_000
    realtime_history_age_s: float = 120.0
    realtime_unsubscribe_grace_s: float = 5.0
    realtime_outbox_max: int = 100_000
    realtime_outbox_retry_s: float = 10.0
    realtime_slow_consumer_policy: str = "coalesce"
    realtime_queue_max_frames: int = 256
    realtime_queue_max_bytes: int = 1024 * 1024
    realtime_lease_s: float = 15.0
    realtime_publish_max_events: int = 1000
    realtime_event_max_bytes: int = 64 * 1024
    realtime_redis_prefix: str = "streamcore"
    # Files the app keeps beside the embedded database (the generated JWT secret).
    data_dir: str = "./var"
    # Unset: a random secret generated once into DATA_DIR/jwt_secret, shared by workers.
    jwt_secret: str | None = field(default=None, repr=False)  # never printed
    token_ttl_s: int = 3600
    max_body_bytes: int = 32 * 1024 * 1024
    # A client must send its request headers, then its body, within these (408 / dropped).
    http_header_timeout_s: float = 10.0
    http_body_timeout_s: float = 30.0
    # Routes anyone may call (login): a few KiB, so no one buffers MAX_BODY_BYTES unauthenticated.
    max_unauthenticated_body_bytes: int = 8 * 1024
    cors_origins: tuple[str, ...] = (
        "https://app.example.com",
        "https://admin.example.com",
        "https://www.example.com",
    )
    max_amount_cents: int = 100_000_000_000
    page_size_default: int = 50
    page_size_max: int = 200
    # Failed logins per (client, email) inside the window before 429.
    login_max_failures: int = 5
    login_window_s: int = 300
    # With REDIS_URL the failed-login counts live in Redis under this prefix, shared by instances.
    login_redis_prefix: str = "streamcore:login:"
    # `serve` seeds the demo org/property/user into an empty database.
    seed_demo: bool = True
    # Idempotency-Key: how long a response is replayed, and the in-flight claim's lease.
    idempotency_ttl_s: int = 24 * 3600
    idempotency_lease_s: float = 10.0
    # 409 (Stripe, this API's contract) or 422 (the IETF draft) for a key reused with another body.
    idempotency_mismatch_status: int = 409
    idempotency_redis_prefix: str = "streamcore:idem:"
    # Per Redis command; past it the request falls back to the database store.
    idempotency_redis_timeout_ms: int = 100
    # Redis is the fast path for retries, the database the guarantee: Redis keeps a response for
    # the retry window only (at most IDEMPOTENCY_TTL_S), which is what bounds its memory.
    idempotency_redis_ttl_s: int = 3600
    # Metrics (docs/METRICS.md): optional bearer token for both endpoints; each worker publishes
    # its snapshot to Redis every interval under this prefix (expiring after three intervals).
    metrics_token: str | None = field(default=None, repr=False)  # never printed
    metrics_publish_interval_s: float = 5.0
    # `python -m streamcore_server watch` (make watch): credentials for a user other than the
    # demo's.
    watch_password: str | None = field(default=None, repr=False)  # never printed
    watch_token: str | None = field(default=None, repr=False)  # never printed
    metrics_redis_prefix: str = "streamcore:metrics"
    # Edge cache (docs/EDGE.md): which edge keeps finance reads, for how long, and how writes
    # purge it. "none" sends validators but no edge lifetime or tags, and purges nothing.
    edge_provider: str = "none"
    edge_ttl_s: int = 60
    edge_stale_while_revalidate_s: int = 30
    # Varnish: each edge's base URL, e.g. http://127.0.0.1:6081 (PURGE with an xkey header).
    edge_purge_urls: tuple[str, ...] = ()
    edge_purge_window_ms: float = 20.0
    edge_purge_timeout_s: float = 2.0
    edge_purge_retry_base_s: float = 0.2
    edge_purge_retry_max_s: float = 5.0
    # Each purge is sent again this long after it landed (0: never); see
    # streamcore_server/edge/queue.py.
    edge_purge_repeat_s: float = 1.0
    edge_fastly_service_id: str | None = None
    edge_fastly_api_token: str | None = field(default=None, repr=False)  # never printed
    edge_cloudflare_zone_id: str | None = None
    edge_cloudflare_api_token: str | None = field(default=None, repr=False)  # never printed

    def __post_init__(self) -> None:
        if self.window_min_ms > self.window_max_ms:
            raise SettingsError(
                f"WINDOW_MIN_MS={self.window_min_ms} is above WINDOW_MAX_MS={self.window_max_ms}"
            )
        if self.page_size_default > self.page_size_max:
            raise SettingsError(
                f"PAGE_SIZE_DEFAULT={self.page_size_default} is above "
                f"PAGE_SIZE_MAX={self.page_size_max}"
            )
        if self.idempotency_lease_s >= self.idempotency_ttl_s:
            raise SettingsError(
                f"IDEMPOTENCY_LEASE_S={self.idempotency_lease_s} is not below "
                f"IDEMPOTENCY_TTL_S={self.idempotency_ttl_s}"
            )
        if self.database_replica_urls and not self.database_url.startswith("postgresql"):
            raise SettingsError(
                "DATABASE_REPLICA_URL needs a PostgreSQL DATABASE_URL (the primary)"
            )
        if self.read_your_writes_ttl_s <= self.database_replica_max_lag_s:
            raise SettingsError(
                f"READ_YOUR_WRITES_TTL_S={self.read_your_writes_ttl_s} is not above "
                f"DATABASE_REPLICA_MAX_LAG_S={self.database_replica_max_lag_s}"
            )
        needs = {
            "varnish": (("EDGE_PURGE_URLS", self.edge_purge_urls),),
            "fastly": (
                ("EDGE_FASTLY_SERVICE_ID", self.edge_fastly_service_id),
                ("EDGE_FASTLY_API_TOKEN", self.edge_fastly_api_token),
            ),
            "cloudflare": (
                ("EDGE_CLOUDFLARE_ZONE_ID", self.edge_cloudflare_zone_id),
                ("EDGE_CLOUDFLARE_API_TOKEN", self.edge_cloudflare_api_token),
            ),
        }
        for name, value in needs.get(self.edge_provider, ()):
            if not value:
                raise SettingsError(f"EDGE_PROVIDER={self.edge_provider} needs {name}")
        if self.max_amount_cents > MAX_AMOUNT_LIMIT:
            raise SettingsError(
                f"MAX_AMOUNT_CENTS={self.max_amount_cents} is above {MAX_AMOUNT_LIMIT}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment (or a mapping standing in for it)."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            host=_read(env, "HOST", d.host, str),
            port=_read(env, "PORT", d.port, _port),
            workers=_read(env, "WORKERS", d.workers, _positive_int),
            database_url=_read(env, "DATABASE_URL", d.database_url, str),
            database_replica_urls=_read(
                env, "DATABASE_REPLICA_URL", d.database_replica_urls, _replica_urls
            ),
            database_replica_max_lag_s=_read(
                env, "DATABASE_REPLICA_MAX_LAG_S", d.database_replica_max_lag_s, _positive_float
            ),
            read_your_writes_ttl_s=_read(
                env, "READ_YOUR_WRITES_TTL_S", d.read_your_writes_ttl_s, _positive_float
            ),
            redis_url=_read(env, "REDIS_URL", d.redis_url, _optional_url),
            log_level=_read(env, "LOG_LEVEL", d.log_level, _log_level),
            window_min_ms=_read(env, "WINDOW_MIN_MS", d.window_min_ms, _positive_float),
            window_max_ms=_read(env, "WINDOW_MAX_MS", d.window_max_ms, _positive_float),
            window_flush_budget=_read(env, "WINDOW_FLUSH_BUDGET", d.window_flush_budget, _fraction),
            compression_threshold=_read(
                env, "COMPRESSION_THRESHOLD", d.compression_threshold, _non_negative_int
            ),
            zstd_level=_read(env, "ZSTD_LEVEL", d.zstd_level, _zstd_level),
            realtime_max_connections_per_user=_read(
                env,
                "REALTIME_MAX_CONNECTIONS_PER_USER",
                d.realtime_max_connections_per_user,
                _positive_int,
            ),
            realtime_max_connections_per_org=_read(
                env,
                "REALTIME_MAX_CONNECTIONS_PER_ORG",
                d.realtime_max_connections_per_org,
                _positive_int,
            ),
            realtime_history_events=_read(
                env, "REALTIME_HISTORY_EVENTS", d.realtime_history_events, _positive_int
            ),
            realtime_history_age_s=_read(
                env, "REALTIME_HISTORY_AGE_S", d.realtime_history_age_s, _positive_float
            ),
            realtime_unsubscribe_grace_s=_read(
                env,
                "REALTIME_UNSUBSCRIBE_GRACE_S",
                d.realtime_unsubscribe_grace_s,
                _positive_float,
            ),
            realtime_outbox_max=_read(
                env, "REALTIME_OUTBOX_MAX", d.realtime_outbox_max, _positive_int
            ),
            realtime_outbox_retry_s=_read(
                env, "REALTIME_OUTBOX_RETRY_S", d.realtime_outbox_retry_s, _positive_float
            ),
            realtime_slow_consumer_policy=_read(
                env,
                "REALTIME_SLOW_CONSUMER_POLICY",
                d.realtime_slow_consumer_policy,
                _slow_consumer_policy,
            ),
            realtime_queue_max_frames=_read(
                env, "REALTIME_QUEUE_MAX_FRAMES", d.realtime_queue_max_frames, _positive_int
            ),
            realtime_queue_max_bytes=_read(
                env, "REALTIME_QUEUE_MAX_BYTES", d.realtime_queue_max_bytes, _positive_int
            ),
            realtime_lease_s=_read(env, "REALTIME_LEASE_S", d.realtime_lease_s, _positive_float),
            realtime_publish_max_events=_read(
                env, "REALTIME_PUBLISH_MAX_EVENTS", d.realtime_publish_max_events, _positive_int
            ),
            realtime_event_max_bytes=_read(
                env, "REALTIME_EVENT_MAX_BYTES", d.realtime_event_max_bytes, _positive_int
            ),
            realtime_redis_prefix=_read(env, "REALTIME_REDIS_PREFIX", d.realtime_redis_prefix, str),
            data_dir=_read(env, "DATA_DIR", d.data_dir, str),
            jwt_secret=_read(env, "JWT_SECRET", d.jwt_secret, _secret),
            token_ttl_s=_read(env, "TOKEN_TTL_S", d.token_ttl_s, _positive_int),
            max_body_bytes=_read(env, "MAX_BODY_BYTES", d.max_body_bytes, _positive_int),
            http_header_timeout_s=_read(
                env, "HTTP_HEADER_TIMEOUT_S", d.http_header_timeout_s, _positive_float
            ),
            http_body_timeout_s=_read(
                env, "HTTP_BODY_TIMEOUT_S", d.http_body_timeout_s, _positive_float
            ),
            max_unauthenticated_body_bytes=_read(
                env,
                "MAX_UNAUTHENTICATED_BODY_BYTES",
                d.max_unauthenticated_body_bytes,
                _positive_int,
            ),
            cors_origins=_read(env, "CORS_ORIGINS", d.cors_origins, _origins),
            max_amount_cents=_read(env, "MAX_AMOUNT_CENTS", d.max_amount_cents, _positive_int),
            page_size_default=_read(env, "PAGE_SIZE_DEFAULT", d.page_size_default, _positive_int),
            page_size_max=_read(env, "PAGE_SIZE_MAX", d.page_size_max, _positive_int),
            login_max_failures=_read(
                env, "LOGIN_MAX_FAILURES", d.login_max_failures, _positive_int
            ),
            login_window_s=_read(env, "LOGIN_WINDOW_S", d.login_window_s, _positive_int),
            login_redis_prefix=_read(env, "LOGIN_REDIS_PREFIX", d.login_redis_prefix, str),
            seed_demo=_read(env, "SEED_DEMO", d.seed_demo, _bool),
            idempotency_ttl_s=_read(env, "IDEMPOTENCY_TTL_S", d.idempotency_ttl_s, _positive_int),
            idempotency_lease_s=_read(
                env, "IDEMPOTENCY_LEASE_S", d.idempotency_lease_s, _positive_float
            ),
            idempotency_mismatch_status=_read(
                env, "IDEMPOTENCY_MISMATCH_STATUS", d.idempotency_mismatch_status, _mismatch_status
            ),
            idempotency_redis_prefix=_read(
                env, "IDEMPOTENCY_REDIS_PREFIX", d.idempotency_redis_prefix, str
            ),
            idempotency_redis_ttl_s=_read(
                env, "IDEMPOTENCY_REDIS_TTL_S", d.idempotency_redis_ttl_s, _positive_int
            ),
            idempotency_redis_timeout_ms=_read(
                env, "IDEMPOTENCY_REDIS_TIMEOUT_MS", d.idempotency_redis_timeout_ms, _positive_int
            ),
            metrics_token=_read(env, "METRICS_TOKEN", d.metrics_token, _optional_url),
            metrics_publish_interval_s=_read(
                env, "METRICS_PUBLISH_INTERVAL_S", d.metrics_publish_interval_s, _positive_float
            ),
            metrics_redis_prefix=_read(env, "METRICS_REDIS_PREFIX", d.metrics_redis_prefix, str),
            watch_password=_read(env, "WATCH_PASSWORD", d.watch_password, str),
            watch_token=_read(env, "WATCH_TOKEN", d.watch_token, str),
            edge_provider=_read(env, "EDGE_PROVIDER", d.edge_provider, _edge_provider),
            edge_ttl_s=_read(env, "EDGE_TTL_S", d.edge_ttl_s, _positive_int),
            edge_stale_while_revalidate_s=_read(
                env,
                "EDGE_STALE_WHILE_REVALIDATE_S",
                d.edge_stale_while_revalidate_s,
                _non_negative_int,
            ),
            edge_purge_urls=_read(env, "EDGE_PURGE_URLS", d.edge_purge_urls, _http_urls),
            edge_purge_window_ms=_read(
                env, "EDGE_PURGE_WINDOW_MS", d.edge_purge_window_ms, _non_negative_float
            ),
            edge_purge_timeout_s=_read(
                env, "EDGE_PURGE_TIMEOUT_S", d.edge_purge_timeout_s, _positive_float
            ),
            edge_purge_retry_base_s=_read(
                env, "EDGE_PURGE_RETRY_BASE_S", d.edge_purge_retry_base_s, _positive_float
            ),
            edge_purge_retry_max_s=_read(
                env, "EDGE_PURGE_RETRY_MAX_S", d.edge_purge_retry_max_s, _positive_float
            ),
            edge_purge_repeat_s=_read(
                env, "EDGE_PURGE_REPEAT_S", d.edge_purge_repeat_s, _non_negative_float
            ),
            edge_fastly_service_id=_read(
                env, "EDGE_FASTLY_SERVICE_ID", d.edge_fastly_service_id, _optional_url
            ),
            edge_fastly_api_token=_read(
                env, "EDGE_FASTLY_API_TOKEN", d.edge_fastly_api_token, _optional_url
            ),
            edge_cloudflare_zone_id=_read(
                env, "EDGE_CLOUDFLARE_ZONE_ID", d.edge_cloudflare_zone_id, _optional_url
            ),
            edge_cloudflare_api_token=_read(
                env, "EDGE_CLOUDFLARE_API_TOKEN", d.edge_cloudflare_api_token, _optional_url
            ),
        )
