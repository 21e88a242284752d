"""Shared fixtures: where the real Redis and PostgreSQL live for this run.

Tests that need a service skip when it is unreachable, except under CI
(STREAMCORE_REQUIRE_SERVICES=1), where a missing service fails the run instead of hiding it.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

import pytest

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 1
        ):
            return True
    except OSError:
        return False


def _service(url: str, default_port: int, name: str) -> str:
    if _reachable(url, default_port):
        return url
    message = f"{name} is not reachable at {url}"
    if os.environ.get("STREAMCORE_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the shared Redis: never flush it; use keys of your own."""
    return _service(os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS_URL), 6379, "Redis")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of the shared PostgreSQL test database."""
    return _service(os.environ.get("TEST_DATABASE_URL", DEFAULT_DATABASE_URL), 5432, "PostgreSQL")
