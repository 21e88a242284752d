"""Share metrics across workers and hosts through Redis.

Every process writes its Snapshot (histograms as streamcore's sparse blobs, counters, gauges) to
`{prefix}:i:{instance}` every METRICS_PUBLISH_INTERVAL_S with an expiry of three intervals, and
registers itself in the sorted set `{prefix}:instances` scored by the time it published. A reader
merges its own live snapshot with every other instance published within the expiry, so what it
reports about the others is at most one interval old (plus the scrape's own latency); an
instance that stopped publishing drops out after three intervals. Counters of an instance that
died are lost from the sums when it drops out, which Prometheus' rate() reads as a reset.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

from .. import background
from .registry import Snapshot

log = logging.getLogger("streamcore_server.metrics")
EXPIRY_INTERVALS = 3


def instance_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class Publisher:
    def __init__(
        self,
        client: Any,
        prefix: str,
        interval_s: float,
        snapshot: Callable[[], Snapshot],
        instance: str | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.interval_s = interval_s
        self.expiry_s = interval_s * EXPIRY_INTERVALS
        self.snapshot = snapshot
        self.instance = instance or instance_id()
        self.set_key = f"{prefix}:instances"
        self.published = 0
        self.errors = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    def _key(self, instance: str) -> str:
        return f"{self.prefix}:i:{instance}"

    async def publish(self) -> None:
        snap = self.snapshot()
        now = time.time()
        snap.published_at = now
        ttl_ms = max(1, int(self.expiry_s * 1000))
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.set(self._key(self.instance), snap.to_bytes(), px=ttl_ms)
            pipe.zadd(self.set_key, {self.instance: now})
            pipe.zremrangebyscore(self.set_key, "-inf", now - self.expiry_s)
            pipe.pexpire(self.set_key, ttl_ms)
            await pipe.execute()
        self.published += 1

    async def others(self) -> list[Snapshot]:
        """Live snapshots of every other instance (raises if Redis does not answer)."""
        now = time.time()
        members = await self.client.zrangebyscore(self.set_key, now - self.expiry_s, "+inf")
        names = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
        names = [n for n in names if n != self.instance]
        if not names:
            return []
        blobs = await self.client.mget([self._key(n) for n in names])
        out = []
        for name, blob in zip(names, blobs, strict=True):
            if blob is None:
                continue  # expired between the two reads
            try:
                snap = Snapshot.from_bytes(blob)
            except Exception:  # a foreign or corrupt value must not break the endpoint
                log.warning("ignoring an undecodable metrics snapshot", extra={"instance": name})
                continue
            snap.instances = [{"id": name, "age_s": round(max(0.0, now - snap.published_at), 3)}]
            out.append(snap)
        return out

    async def _run(self) -> None:
        # The flag ends the loop even when a cancel came out of redis as its TimeoutError.
        while not self._stopping:
            try:
                await self.publish()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                log.warning("could not publish metrics: %s", type(exc).__name__)
            await asyncio.sleep(self.interval_s)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._stopping = True
        await background.stop(self._task)
        self._task = None
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrem(self.set_key, self.instance)
                pipe.delete(self._key(self.instance))
                await pipe.execute()
        except Exception as exc:  # it expires on its own
            log.warning("could not withdraw metrics: %s", type(exc).__name__)
