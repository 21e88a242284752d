"""What each setting means: the one source of the settings tables in docs/API.md and README.md.

`python -m streamcore_server settings-table` prints the full table;
tests/streamcore_server/test_settings_doc.py checks that
it lists exactly the variables Settings reads, and that the docs show it as printed.
"""

from __future__ import annotations

from .settings import Settings, variables

MEANINGS: dict[str, str] = {
    "HOST": "address `serve` listens on",
    "PORT": "port `serve` listens on",
    "WORKERS": "worker processes (or `serve --workers N`); more than one needs `REDIS_URL`",
    "DATABASE_URL": "SQLite (WAL) or `postgresql+asyncpg://…`; migrated on start",
    "DATABASE_REPLICA_URL": "comma list of PostgreSQL hot standbys of `DATABASE_URL` that may "
    "serve lists and summary cache misses (docs/API.md, read replicas); needs PostgreSQL",
    "DATABASE_REPLICA_MAX_LAG_S": "a standby lagging more serves no read",
    "READ_YOUR_WRITES_TTL_S": "how long a user's newest write pins their reads to standbys that "
    "replayed it; must exceed `DATABASE_REPLICA_MAX_LAG_S`",
    "REDIS_URL": "Redis for idempotency, shared connection caps and cross-instance fan-out",
    "LOG_LEVEL": "`debug`, `info`, `warning`, `error`, `critical`",
    "WINDOW_MIN_MS": "shortest adaptive batch window",
    "WINDOW_MAX_MS": "longest adaptive batch window",
    "WINDOW_FLUSH_BUDGET": "share of a core the flusher may use before windows widen (0-1]",
    "COMPRESSION_THRESHOLD": "frames with a larger body are compressed (bytes)",
    "ZSTD_LEVEL": "zstd level for frames (1-22)",
    "REALTIME_MAX_CONNECTIONS_PER_USER": "open streams per user (429 past it)",
    "REALTIME_MAX_CONNECTIONS_PER_ORG": "open streams per org (429 past it)",
    "REALTIME_HISTORY_EVENTS": "events kept per org for resume (in Redis with REDIS_URL)",
    "REALTIME_HISTORY_AGE_S": "an org's history expires after this long without an event",
    "REALTIME_UNSUBSCRIBE_GRACE_S": "an org's subscription outlives its last local subscriber",
    "REALTIME_OUTBOX_MAX": "events of writes waiting for Redis (beyond: lost, with a reset)",
    "REALTIME_OUTBOX_RETRY_S": "how long an event waits for Redis before it is counted lost",
    "REALTIME_SLOW_CONSUMER_POLICY": "`coalesce` or `disconnect` a client that stops reading",
    "REALTIME_QUEUE_MAX_FRAMES": "per-connection send queue bound (frames)",
    "REALTIME_QUEUE_MAX_BYTES": "per-connection send queue bound (bytes)",
    "REALTIME_LEASE_S": "Redis connection-count lease",
    "REALTIME_PUBLISH_MAX_EVENTS": "events per publish request",
    "REALTIME_EVENT_MAX_BYTES": "encoded size of one published event",
    "REALTIME_REDIS_PREFIX": "key/channel prefix of caps and fan-out",
    "DATA_DIR": "where the generated JWT secret lives",
    "JWT_SECRET": "token signing key, at least 32 bytes (unset: generated into `DATA_DIR`)",
    "TOKEN_TTL_S": "token lifetime",
    "MAX_BODY_BYTES": "request body limit (413 past it)",
    "HTTP_HEADER_TIMEOUT_S": "time a client has to send its request headers (408 past it)",
    "HTTP_BODY_TIMEOUT_S": "time a client has to send its request body (dropped past it)",
    "MAX_UNAUTHENTICATED_BODY_BYTES": "body limit of routes that need no token (login)",
    "CORS_ORIGINS": "comma list of http(s) origins; `*` is refused",
    "MAX_AMOUNT_CENTS": "largest `amountCents` (at most 10^15)",
    "PAGE_SIZE_DEFAULT": "list page size without `limit`",
    "PAGE_SIZE_MAX": "largest `limit`",
    "LOGIN_MAX_FAILURES": "failed logins per (client, email) in the window before 429",
    "LOGIN_WINDOW_S": "the login throttle's window",
    "LOGIN_REDIS_PREFIX": "with `REDIS_URL`, Redis key prefix of the shared failed-login counts",
    "SEED_DEMO": "`serve` seeds the demo org, property and user into an empty database",
    "IDEMPOTENCY_TTL_S": "how long a stored response is replayed",
    "IDEMPOTENCY_LEASE_S": "the in-flight claim's lease",
    "IDEMPOTENCY_MISMATCH_STATUS": "`409` (Stripe) or `422` (IETF draft) for a reused key",
    "IDEMPOTENCY_REDIS_PREFIX": "Redis key prefix of idempotency records",
    "IDEMPOTENCY_REDIS_TTL_S": "how long Redis keeps a response (the database answers after)",
    "IDEMPOTENCY_REDIS_TIMEOUT_MS": "per-command Redis timeout before the database store answers",
    "METRICS_TOKEN": "when set, the metrics endpoints want `Authorization: Bearer <token>`",
    "METRICS_PUBLISH_INTERVAL_S": "with `REDIS_URL`, how often each process publishes metrics",
    "METRICS_REDIS_PREFIX": "Redis key prefix of published metrics",
    "EDGE_PROVIDER": "`none`, `varnish`, `fastly` or `cloudflare`: tag header, lifetime, purger "
    "(docs/EDGE.md)",
    "EDGE_TTL_S": "how long the edge serves a read without asking the app",
    "EDGE_STALE_WHILE_REVALIDATE_S": "how long past that it may serve it while refetching",
    "EDGE_PURGE_URLS": "Varnish edges, comma-separated base URLs (required for `varnish`)",
    "EDGE_PURGE_WINDOW_MS": "tags of writes in this window go in one purge request",
    "EDGE_PURGE_TIMEOUT_S": "per purge request",
    "EDGE_PURGE_RETRY_BASE_S": "first retry delay of a failed purge (doubling)",
    "EDGE_PURGE_RETRY_MAX_S": "longest retry delay of a failed purge",
    "EDGE_PURGE_REPEAT_S": "send each landed purge again after this long; `0` never",
    "EDGE_FASTLY_SERVICE_ID": "required for `fastly`",
    "EDGE_FASTLY_API_TOKEN": "required for `fastly`",
    "EDGE_CLOUDFLARE_ZONE_ID": "required for `cloudflare`",
    "EDGE_CLOUDFLARE_API_TOKEN": "required for `cloudflare`",
    "WATCH_PASSWORD": "`make watch`: password for `--email` (the demo user needs none)",
    "WATCH_TOKEN": "`make watch`: a bearer token instead of a password",
}
_VARIABLE_OF = variables()
_FIELD_OF = {v: k for k, v in _VARIABLE_OF.items()}
_SECRET = {_VARIABLE_OF[name] for name, f in Settings.model_fields.items() if not f.repr}


def variable(field: str) -> str:
    """The environment variable a Settings field is read from."""
    return _VARIABLE_OF[field]


def default(variable: str) -> str:
    """The default as an operator would write it in the environment."""
    value = Settings.model_fields[_FIELD_OF[variable]].default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def table() -> str:
    """The Markdown table of every setting, in the order Settings declares them."""
    names = list(_VARIABLE_OF.values())
    rows = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    for name in names:
        shown = "unset" if name in _SECRET else f"`{default(name)}`"
        rows.append(f"| `{name}` | {shown} | {MEANINGS[name]} |")
    return "\n".join(rows) + "\n"
