"""Helpers for the idempotency tests: row counts, concurrent requests, a private Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2
import redis
from app_support import Api, Tenant
from sqlalchemy import func, select

from app import storage

PATH = "/v1/finance/expenses"
EXPENSE = {
    "propertyId": 1,
    "category": "maintenance",
    "amountCents": 50000,
    "currency": "INR",
    "description": "Test expense",
    "expenseDate": "2025-12-13T10:00:00Z",
    "paymentMode": "cash",
}


def expense(tenant: Tenant, **changes: Any) -> dict[str, Any]:
    return {**EXPENSE, "propertyId": tenant.property_id, **changes}


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test's own, which it may stop, hang (SIGSTOP) or flush."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--bind",
                "127.0.0.1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = redis.Redis(port=self.port, socket_timeout=0.5)
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                assert time.monotonic() < deadline, "private redis-server did not start"
                time.sleep(0.05)
        client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=1)

    def hang(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)  # the socket stays open and never answers

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


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
