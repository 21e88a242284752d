"""Helpers for the idempotency tests: row counts, concurrent requests, a private Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import redis
from app_support import Api, Tenant
from processes import PrivateRedis
from sqlalchemy import func, select

from streamcore_server import storage

PATH = "/v1/finance/expenses"


def keyed(tenant: Tenant, key: str) -> dict[str, str]:
    return {**tenant.auth, "Idempotency-Key": key}


def new_key() -> str:
    return str(uuid.uuid4())


def rows(api: Api, table: Any = storage.expenses) -> int:
    async def count() -> int:
        async with api.app.state.db.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(table))).scalar_one())

    return int(api.run(count))


def burst(api: Api, n: int, path: str, body: dict[str, Any], headers: dict[str, str]) -> list[Any]:
    """Send n requests at once on the app's own event loop, as a server would interleave them."""

    async def run() -> list[httpx2.Response]:
        transport = httpx2.ASGITransport(app=api.app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://test") as client:
            return list(
                await asyncio.gather(
                    *(client.post(path, json=body, headers=headers) for _ in range(n))
                )
            )

    return list(api.run(run))


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        yield server
    finally:
        server.stop()


def delete_prefix(url: str, prefix: str) -> None:
    """Remove this test's keys from the shared Redis (never a flush)."""
    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=500))
        if keys:
            client.delete(*keys)
    finally:
        client.close()
