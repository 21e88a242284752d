"""One frozen Settings object, read from the environment once at start-up.

No other module reads os.environ. A bad value fails start-up with a message naming the variable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the app can be told, with embedded defaults that run alone."""

    host: str = "127.0.0.1"
    port: int = 4000
    # SQLite under ./var is the embedded default; PostgreSQL via postgresql+asyncpg://...
    database_url: str = "sqlite+aiosqlite:///./var/streamcore.db"
    # Unset: embedded idempotency store, per-process connection counts, single-process fan-out.
    redis_url: str | None = None
    log_level: str = "info"
    window_min_ms: float = 30.0
    window_max_ms: float = 150.0
    compression_threshold: int = 1024
    zstd_level: int = 1

    def __post_init__(self) -> None:
        if self.window_min_ms > self.window_max_ms:
            raise SettingsError(
                f"WINDOW_MIN_MS={self.window_min_ms} is above WINDOW_MAX_MS={self.window_max_ms}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment (or a mapping standing in for it)."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            host=_read(env, "HOST", d.host, str),
            port=_read(env, "PORT", d.port, _port),
            database_url=_read(env, "DATABASE_URL", d.database_url, str),
            redis_url=_read(env, "REDIS_URL", d.redis_url, _optional_url),
            log_level=_read(env, "LOG_LEVEL", d.log_level, _log_level),
            window_min_ms=_read(env, "WINDOW_MIN_MS", d.window_min_ms, _positive_float),
            window_max_ms=_read(env, "WINDOW_MAX_MS", d.window_max_ms, _positive_float),
            compression_threshold=_read(
                env, "COMPRESSION_THRESHOLD", d.compression_threshold, _non_negative_int
            ),
            zstd_level=_read(env, "ZSTD_LEVEL", d.zstd_level, _zstd_level),
        )
