"""One frozen Settings object, read from the environment once at start-up (pydantic-settings).

No other module reads os.environ. A bad value fails start-up with a message naming the variable
and the value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasGenerator,
    BeforeValidator,
    Field,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class SettingsError(ValueError):
    """An environment variable holds a value the app cannot use."""


def redacted(value: object) -> object:
    """value with the password of every URL in it replaced (a str, or a tuple of them)."""
    if isinstance(value, tuple):
        return tuple(redacted(item) for item in value)
    if not isinstance(value, str) or "@" not in value or "://" not in value:
        return value
    scheme, rest = value.split("://", 1)
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return value
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}{slash}{path}"


def _stripped(value: object) -> object:
    return value.strip() if isinstance(value, str) else value


def _lowered(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _blank_is_none(value: object) -> object:
    return (value.strip() or None) if isinstance(value, str) else value


def _comma_list(value: object) -> object:
    # A list arrives from the environment as one comma-separated variable; blanks are dropped.
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def _each(check: Callable[[str], str]) -> Callable[[tuple[str, ...]], tuple[str, ...]]:
    return lambda items: tuple(check(item) for item in items)


def _postgresql(url: str) -> str:
    # A read replica is a PostgreSQL hot standby: replay positions are what routing reads.
    if not url.startswith("postgresql"):
        raise ValueError(f"{url.split('://')[0]}:// is not PostgreSQL; replicas are standbys")
    return url


def _origin(origin: str) -> str:
    origin = origin.rstrip("/")
    # A wildcard would turn the allow-list off, and browsers refuse it with credentials.
    if origin == "*" or not origin.startswith(("https://", "http://")):
        raise ValueError(f"{origin!r} is not an http(s) origin")
    return origin


def _http_url(url: str) -> str:
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http(s) URL")
    return url


def _secret(value: str | None) -> str | None:
    # HS256 wants at least 256 bits of key; shorter secrets are brute-forceable offline.
    if value is not None and len(value.encode()) < 32:
        raise ValueError("must be at least 32 bytes")
    return value


def _mismatch_status(value: int) -> int:
    if value not in (409, 422):
        raise ValueError("409 (Stripe) or 422 (IETF draft)")
    return value


Port = Annotated[int, Field(ge=0, le=65535)]
PositiveInt = Annotated[int, Field(gt=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0, le=1)]
Flag = Annotated[bool, BeforeValidator(_stripped)]
OptionalText = Annotated[str | None, BeforeValidator(_blank_is_none)]
LogLevel = Annotated[
    Literal["critical", "error", "warning", "info", "debug"], BeforeValidator(_lowered)
]
SlowConsumerPolicy = Annotated[Literal["coalesce", "disconnect"], BeforeValidator(_lowered)]
EdgeProvider = Annotated[
    Literal["none", "varnish", "fastly", "cloudflare"], BeforeValidator(_lowered)
]
ReplicaUrls = Annotated[
    tuple[str, ...], BeforeValidator(_comma_list), AfterValidator(_each(_postgresql))
]
Origins = Annotated[tuple[str, ...], BeforeValidator(_comma_list), AfterValidator(_each(_origin))]
HttpUrls = Annotated[
    tuple[str, ...], BeforeValidator(_comma_list), AfterValidator(_each(_http_url))
]

# Money is int64 minor units in storage; the bound keeps a year of sums far from overflow.
MAX_AMOUNT_LIMIT = 10**15


class _Environment(EnvSettingsSource):
    """The environment, or a mapping standing in for it, read as pydantic-settings reads it."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env  # before super().__init__, which loads the variables
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Only the variables' exact names: pydantic-settings would also take a field's Python
        # name (port for PORT), since Settings(...) accepts those. An empty variable is unset.
        found = {name: self._env.get(name) for name in _VARIABLE.values()}
        return {name: value for name, value in found.items() if value}


class Settings(BaseSettings):
    """Everything the app can be told, with embedded defaults that run alone."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        # Each field is read from its name in upper case, exactly (PORT, not port); the Python
        # name is accepted too, for code that builds Settings with overrides.
        alias_generator=AliasGenerator(validation_alias=str.upper),
        validate_by_name=True,
        case_sensitive=True,
        # An empty variable means the default; lists are comma-separated, not JSON.
        env_ignore_empty=True,
        enable_decoding=False,
    )

    host: str = "127.0.0.1"
    port: Port = 4000
    # uvicorn worker processes behind the one port; more than one needs REDIS_URL (`serve`).
    workers: PositiveInt = 1
    # SQLite under ./var is the embedded default; PostgreSQL via postgresql+asyncpg://...
    database_url: str = "sqlite+aiosqlite:///./var/streamcore.db"
    # PostgreSQL hot standbys (comma-separated) that may serve reads
    # (streamcore_server/replicas.py); a read
    # goes to the least-lagging one within DATABASE_REPLICA_MAX_LAG_S, else to the primary.
    database_replica_urls: ReplicaUrls = Field((), validation_alias="DATABASE_REPLICA_URL")
    database_replica_max_lag_s: PositiveFloat = 5.0
    # How long a user's last write pins that user's reads to replicas that replayed it. Above the
    # max lag, so a replica that may serve the user afterwards is no later than the write.
    read_your_writes_ttl_s: PositiveFloat = 10.0
    # Unset: embedded idempotency store, per-process connection counts, single-process fan-out.
    redis_url: OptionalText = None
    log_level: LogLevel = "info"
    window_min_ms: PositiveFloat = 30.0
    window_max_ms: PositiveFloat = 150.0
    # Share of one core the flusher may spend before windows widen (docs/WINDOWS.md).
    window_flush_budget: Fraction = 0.4
    compression_threshold: NonNegativeInt = 1024
    zstd_level: Annotated[int, Field(ge=1, le=22)] = 1
    # Realtime stream (docs/REALTIME.md): caps, history for resume, slow consumers, fan-out.
    realtime_max_connections_per_user: PositiveInt = 10
    realtime_max_connections_per_org: PositiveInt = 1000
    realtime_history_events: PositiveInt = 10_000
    realtime_history_age_s: PositiveFloat = 120.0
    realtime_unsubscribe_grace_s: PositiveFloat = 5.0
    realtime_outbox_max: PositiveInt = 100_000
    realtime_outbox_retry_s: PositiveFloat = 10.0
    realtime_slow_consumer_policy: SlowConsumerPolicy = "coalesce"
    realtime_queue_max_frames: PositiveInt = 256
    realtime_queue_max_bytes: PositiveInt = 1024 * 1024
    realtime_lease_s: PositiveFloat = 15.0
    realtime_publish_max_events: PositiveInt = 1000
    realtime_event_max_bytes: PositiveInt = 64 * 1024
    realtime_redis_prefix: str = "streamcore"
    # Files the app keeps beside the embedded database (the generated JWT secret).
    data_dir: str = "./var"
    # Unset: a random secret generated once into DATA_DIR/jwt_secret, shared by workers.
    jwt_secret: Annotated[str | None, AfterValidator(_secret)] = Field(None, repr=False)
    token_ttl_s: PositiveInt = 3600
    max_body_bytes: PositiveInt = 32 * 1024 * 1024
    # A client must send its request headers, then its body, within these (408 / dropped).
    http_header_timeout_s: PositiveFloat = 10.0
    http_body_timeout_s: PositiveFloat = 30.0
    # Routes anyone may call (login): a few KiB, so no one buffers MAX_BODY_BYTES unauthenticated.
    max_unauthenticated_body_bytes: PositiveInt = 8 * 1024
    cors_origins: Origins = (
        "https://app.example.com",
        "https://admin.example.com",
        "https://www.example.com",
    )
    max_amount_cents: PositiveInt = 100_000_000_000
    page_size_default: PositiveInt = 50
    page_size_max: PositiveInt = 200
    # Failed logins per (client, email) inside the window before 429.
    login_max_failures: PositiveInt = 5
    login_window_s: PositiveInt = 300
    # With REDIS_URL the failed-login counts live in Redis under this prefix, shared by instances.
    login_redis_prefix: str = "streamcore:login:"
    # `serve` seeds the demo org/property/user into an empty database.
    seed_demo: Flag = True
    # Idempotency-Key: how long a response is replayed, and the in-flight claim's lease.
    idempotency_ttl_s: PositiveInt = 24 * 3600
    idempotency_lease_s: PositiveFloat = 10.0
    # 409 (Stripe, this API's contract) or 422 (the IETF draft) for a key reused with another body.
    idempotency_mismatch_status: Annotated[int, AfterValidator(_mismatch_status)] = 409
    idempotency_redis_prefix: str = "streamcore:idem:"
    # Per Redis command; past it the request falls back to the database store.
    idempotency_redis_timeout_ms: PositiveInt = 100
    # Redis is the fast path for retries, the database the guarantee: Redis keeps a response for
    # the retry window only (at most IDEMPOTENCY_TTL_S), which is what bounds its memory.
    idempotency_redis_ttl_s: PositiveInt = 3600
    # Metrics (docs/METRICS.md): optional bearer token for both endpoints; each worker publishes
    # its snapshot to Redis every interval under this prefix (expiring after three intervals).
    metrics_token: OptionalText = Field(None, repr=False)
    metrics_publish_interval_s: PositiveFloat = 5.0
    # `python -m streamcore_server watch` (make watch): credentials for a user other than the
    # demo's.
    watch_password: str | None = Field(None, repr=False)
    watch_token: str | None = Field(None, repr=False)
    metrics_redis_prefix: str = "streamcore:metrics"
    # Edge cache (docs/EDGE.md): which edge keeps finance reads, for how long, and how writes
    # purge it. "none" sends validators but no edge lifetime or tags, and purges nothing.
    edge_provider: EdgeProvider = "none"
    edge_ttl_s: PositiveInt = 60
    edge_stale_while_revalidate_s: NonNegativeInt = 30
    # Varnish: each edge's base URL, e.g. http://127.0.0.1:6081 (PURGE with an xkey header).
    edge_purge_urls: HttpUrls = ()
    edge_purge_window_ms: NonNegativeFloat = 20.0
    edge_purge_timeout_s: PositiveFloat = 2.0
    edge_purge_retry_base_s: PositiveFloat = 0.2
    edge_purge_retry_max_s: PositiveFloat = 5.0
    # Each purge is sent again this long after it landed (0: never); see
    # streamcore_server/edge/queue.py.
    edge_purge_repeat_s: NonNegativeFloat = 1.0
    edge_fastly_service_id: OptionalText = None
    edge_fastly_api_token: OptionalText = Field(None, repr=False)
    edge_cloudflare_zone_id: OptionalText = None
    edge_cloudflare_api_token: OptionalText = Field(None, repr=False)

    if not TYPE_CHECKING:  # type checkers keep the per-field signature pydantic declares

        def __init__(self, **values: Any) -> None:
            try:
                super().__init__(**values)
            except ValidationError as exc:
                raise _settings_error(exc) from None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Settings(...) takes only what it is given: from_env is the one reader of the
        # environment, and there is no .env file or secrets directory.
        return (init_settings,)

    @classmethod
    def read_environment(cls, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Return the raw values Settings takes from the environment, by variable name."""
        return _Environment(cls, os.environ if env is None else env)()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment (or a mapping standing in for it)."""
        return cls(**cls.read_environment(env))

    def __repr_args__(self) -> Any:
        # Secrets are repr=False; the passwords inside URLs are masked as well.
        for name, value in super().__repr_args__():
            yield name, redacted(value)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with these fields changed, validated as at start-up."""
        return type(self)(**(self.model_dump() | changes))

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
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
                f"DATABASE_REPLICA_URL needs a PostgreSQL DATABASE_URL (the primary), "
                f"not DATABASE_URL={redacted(self.database_url)!r}"
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
        return self


def variables() -> dict[str, str]:
    """Map each Settings field to the environment variable it is read from."""
    return {name: str(f.validation_alias) for name, f in Settings.model_fields.items()}


_VARIABLE = variables()
_SECRET = {name for name, f in Settings.model_fields.items() if not f.repr}


def _settings_error(exc: ValidationError) -> SettingsError:
    """Say which variables hold which bad values, one clause per error pydantic found."""
    reasons = []
    for error in exc.errors(include_url=False):
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, SettingsError):  # a cross-field rule, already worded
            reasons.append(str(cause))
            continue
        message = str(cause) if isinstance(cause, ValueError) else error["msg"]
        field = str(error["loc"][0]) if error["loc"] else ""
        name = _VARIABLE.get(field, field)
        # A secret's value stays out of the message, which start-up prints, and so does the
        # password inside a URL.
        shown = "(hidden)" if field.lower() in _SECRET else repr(redacted(error["input"]))
        reasons.append(f"{name}={shown} is not valid: {message}")
    return SettingsError("; ".join(reasons))
