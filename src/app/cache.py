"""A read-through cache of finance summaries: L1 in this process, L2 Redis, L3 the database.

Keys are (org, property, period) under a per-property version. A write bumps the version — in
this process at once, and in Redis (INCR) before the write's response is sent. With Redis, every
read first fetches the property's version (one small GET): an L1 entry is served only if it was
stored under that version, so no process serves a summary older than the last write; an L1 hit
saves the body's transfer and the database query, an L2 hit the query. Without Redis, L1 is
invalidated by this process's writes and expires after L1_TTL_S, so several workers without
Redis may serve a summary up to L1_TTL_S old after a write on another worker. If the version
cannot be bumped in Redis, this process bypasses L2 until its entries have expired. Each Redis
command has REDIS_BUDGET_S; after any failure L2 is paused (L2_PAUSE_S), and a write during the
pause is not announced in Redis — if only this process lost Redis, the others' L2 may serve that
property's previous summary until L2_TTL_S.

Hits and misses are counted per level as they happen: an L1 miss goes to L2 (when Redis is
configured and answers), an L2 miss to the database (L3, a hit there: it always answers).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("app.cache")

L1_TTL_S = 2.0
L1_MAX_ENTRIES = 10_000
L2_TTL_S = 300
# Each Redis command gets this long; after a failure L2 is skipped for a while, so an outage
# costs one short timeout, not one per request.
REDIS_BUDGET_S = 0.1
L2_PAUSE_S = 5.0


@dataclass
class CacheStats:
    l1_hits: int = 0
    l1_misses: int = 0
    l2_hits: int = 0
    l2_misses: int = 0
    l3_hits: int = 0
    l2_errors: int = 0


class SummaryCache:
    def __init__(self, redis: Any, prefix: str, database_url: str) -> None:
        self.redis = redis
        # The database's identity is in the key, so two databases sharing a Redis never mix.
        db = hashlib.sha256(database_url.encode()).hexdigest()[:12]
        self.prefix = f"{prefix}:{db}"
        self.stats = CacheStats()
        # key -> ((local version, Redis version), expiry, body)
        self._l1: OrderedDict[tuple[Any, ...], tuple[Any, float, bytes]] = OrderedDict()
        self._versions: dict[int, int] = {}  # property -> local version
        self._l2_off_until = 0.0

    def counters(self) -> dict[str, int]:
        s = self.stats
        out = {
            "cache_l1_hits": s.l1_hits,
            "cache_l1_misses": s.l1_misses,
            "cache_l3_hits": s.l3_hits,
            "cache_l3_misses": 0,
        }
        if self.redis is not None:
            out.update(
                cache_l2_hits=s.l2_hits, cache_l2_misses=s.l2_misses, cache_l2_errors=s.l2_errors
            )
        return out

    def _l2_usable(self) -> bool:
        return self.redis is not None and time.monotonic() >= self._l2_off_until

    async def _call(self, command: Awaitable[Any]) -> Any:
        async with asyncio.timeout(REDIS_BUDGET_S):
            return await command

    def _failed(self, what: str, exc: BaseException, pause_s: float = L2_PAUSE_S) -> None:
        self.stats.l2_errors += 1
        self._l2_off_until = max(self._l2_off_until, time.monotonic() + pause_s)
        log.warning("summary cache: Redis %s failed: %s", what, type(exc).__name__)

    async def get(
        self, org_id: int, property_id: int, period: str, compute: Callable[[], Awaitable[bytes]]
    ) -> bytes:
        key = (org_id, property_id, period)
        local_version = self._versions.get(property_id, 0)
        remote_version: int | None = None
        if self._l2_usable():
            try:
                raw = await self._call(self.redis.get(self._version_key(property_id)))
                remote_version = int(raw or 0)
            except Exception as exc:
                self._failed("read", exc)
        stamp = (local_version, remote_version)
        entry = self._l1.get(key)
        if entry is not None and entry[0] == stamp and entry[1] > time.monotonic():
            self.stats.l1_hits += 1
            return entry[2]
        self.stats.l1_misses += 1
        l2_key = None
        if remote_version is not None:
            l2_key = f"{self.prefix}:s:{org_id}:{property_id}:{remote_version}:{period}"
            try:
                body = await self._call(self.redis.get(l2_key))
            except Exception as exc:
                self._failed("read", exc)
                l2_key, body = None, None
            if body is not None:
                self.stats.l2_hits += 1
                self._put_l1(key, stamp, bytes(body))
                return bytes(body)
            if l2_key is not None:
                self.stats.l2_misses += 1
        body = await compute()
        self.stats.l3_hits += 1
        if self._versions.get(property_id, 0) == local_version:  # no local write meanwhile
            self._put_l1(key, stamp, body)
        if l2_key is not None:
            try:
                await self._call(self.redis.set(l2_key, body, ex=L2_TTL_S))
            except Exception as exc:
                self._failed("write", exc)
        return body

    def _put_l1(self, key: tuple[Any, ...], stamp: tuple[int, int | None], body: bytes) -> None:
        self._l1[key] = (stamp, time.monotonic() + L1_TTL_S, body)
        self._l1.move_to_end(key)
        while len(self._l1) > L1_MAX_ENTRIES:
            self._l1.popitem(last=False)

    def _version_key(self, property_id: int) -> str:
        return f"{self.prefix}:v:{property_id}"

    async def invalidate(self, property_id: int) -> None:
        """A write changed this property's totals: forget every summary of it."""
        self._versions[property_id] = self._versions.get(property_id, 0) + 1
        if not self._l2_usable():
            return  # L2 is paused (or absent): this process does not read it meanwhile
        try:
            await self._call(self.redis.incr(self._version_key(property_id)))
        except Exception as exc:
            # Entries of the old version may still sit in Redis: stop reading L2 until they expire.
            self._failed("invalidation", exc, pause_s=L2_TTL_S)
