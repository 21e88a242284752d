"""A read-through cache of finance summaries: L1 in this process, L2 Redis, L3 the database.

Every write to a property bumps its totals version in the write's own transaction (under the
property's row lock, so versions follow commit order). A summary is cached with the version it
was computed at (read before and after its queries: equal, or it is not cached), and it is
current while no newer version is known. A write that commits version v does not invalidate:
it applies its amount to each cached summary of that property at v - 1 whose period holds the
entry's date, and moves the others on to v unchanged — so a property's summaries stay cached
across writes, and a summary more than one write behind is dropped.

With Redis, a write also raises the property's version there (to at least v) and stores the
summaries it moved on in L2 under v; every read first fetches that version (one small GET), so no
process serves a summary older than the last announced write. Without Redis (or while it is
paused after a failure), L1 entries also expire after L1_TTL_S, which bounds how long a write of
another process can go unseen. Each Redis command has REDIS_BUDGET_S; after any failure L2 is
paused (L2_PAUSE_S; L2_TTL_S if a version could not be announced, so entries other processes
may still trust have expired before this one reads L2 again).

Hits and misses are counted per level as they happen: an L1 miss goes to L2 (when Redis is
configured and answers), an L2 miss to the database (L3, a hit there: it always answers).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from . import redis_client

log = logging.getLogger("streamcore_server.cache")

L1_TTL_S = 2.0
L1_MAX_ENTRIES = 10_000
L2_TTL_S = 300
VERSION_TTL_S = 7 * 24 * 3600  # a version key outlives every summary stored under it
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


@dataclass(frozen=True, slots=True)
class Write:
    """One committed entry: what it adds to the summaries of its property at version - 1."""

    version: int
    kind: str  # "expense" or "revenue"
    currency: str
    amount_cents: int
    date: dt.datetime


Patch = Callable[[bytes, Write], bytes]  # a summary body with one write applied (finance.py)
Compute = Callable[[], Awaitable[tuple[int | None, bytes]]]  # (version or None, body)

# Raise a property's version to at least ARGV[1]; writes may announce out of order.
_RAISE_LUA = """
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 0
"""


@dataclass(slots=True)
class _Entry:
    version: int
    expires: float
    body: bytes


class SummaryCache:
    def __init__(self, redis: Any, prefix: str, database_url: str, patch: Patch) -> None:
        self.redis = redis
        # The database's identity is in the key, so two databases sharing a Redis never mix.
        db = hashlib.sha256(database_url.encode()).hexdigest()[:12]
        self.prefix = f"{prefix}:{db}"
        self.stats = CacheStats()
        self._patch = patch
        self._l1: OrderedDict[tuple[int, int, str], _Entry] = OrderedDict()
        self._by_property: dict[int, set[tuple[int, int, str]]] = {}
        self._latest: dict[int, int] = {}  # property -> newest version this process has seen
        self._breaker = redis_client.Breaker(
            log,
            "summary cache: Redis failed; reading the database",
            "summary cache: Redis answers again",
        )
        self._raise = redis.register_script(_RAISE_LUA) if redis is not None else None

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
        return self.redis is not None and self._breaker.usable()

    async def _call(self, command: Awaitable[Any]) -> Any:
        async with asyncio.timeout(REDIS_BUDGET_S):
            return await command

    def _failed(self, exc: BaseException, pause_s: float = L2_PAUSE_S) -> None:
        self.stats.l2_errors += 1
        self._breaker.failed(exc, pause_s)

    async def get(self, org_id: int, property_id: int, period: str, compute: Compute) -> bytes:
        return (await self.get_versioned(org_id, property_id, period, compute))[1]

    async def get_versioned(
        self, org_id: int, property_id: int, period: str, compute: Compute
    ) -> tuple[int | None, bytes]:
        """The summary and the totals version it shows (None: of no version, see compute)."""
        key = (org_id, property_id, period)
        known = self._latest.get(property_id, 0)
        remote: int | None = None
        if self._l2_usable():
            try:
                raw = await self._call(self.redis.get(self._version_key(property_id)))
                remote = int(raw or 0)
                known = max(known, remote)
                self._breaker.ok()
            except Exception as exc:
                self._failed(exc)
        entry = self._l1.get(key)
        if entry is not None and entry.version >= known and entry.expires > time.monotonic():
            self.stats.l1_hits += 1
            return entry.version, entry.body
        self.stats.l1_misses += 1
        if remote is not None:
            try:
                body = await self._call(self.redis.get(self._summary_key(key, known)))
            except Exception as exc:
                self._failed(exc)
            else:
                if body is not None:
                    self.stats.l2_hits += 1
                    self._put_l1(key, known, bytes(body))
                    return known, bytes(body)
                self.stats.l2_misses += 1
        version, body = await compute()
        self.stats.l3_hits += 1
        if version is not None and version >= max(known, self._latest.get(property_id, 0)):
            self._put_l1(key, version, body)
            if remote is not None and self._l2_usable():
                try:
                    await self._call(
                        self.redis.set(self._summary_key(key, version), body, ex=L2_TTL_S)
                    )
                except Exception as exc:
                    self._failed(exc)
        return version, body

    async def apply(self, property_id: int, write: Write) -> None:
        """A write committed: move this property's cached summaries on to its version."""
        v = write.version
        self._latest[property_id] = max(self._latest.get(property_id, 0), v)
        moved = []
        for key in list(self._by_property.get(property_id, ())):
            entry = self._l1[key]
            if entry.version == v - 1:
                entry.body = self._patch(entry.body, write)
                entry.version = v
                moved.append((key, entry.body))
            elif entry.version < v - 1:
                self._drop_l1(key)  # more than one write behind: the missing ones are unknown
        if not self._l2_usable() or self._raise is None:
            return  # L2 is paused (or absent): this process does not read it meanwhile
        try:
            await self._call(
                self._raise(keys=[self._version_key(property_id)], args=[v, VERSION_TTL_S])
            )
            for key, body in moved:
                await self._call(self.redis.set(self._summary_key(key, v), body, ex=L2_TTL_S))
        except Exception as exc:
            # Other processes may not learn of this write: stop reading L2 until entries they
            # could still trust have expired.
            self._failed(exc, pause_s=L2_TTL_S)

    def _put_l1(self, key: tuple[int, int, str], version: int, body: bytes) -> None:
        self._l1[key] = _Entry(version, time.monotonic() + L1_TTL_S, body)
        self._l1.move_to_end(key)
        self._by_property.setdefault(key[1], set()).add(key)
        while len(self._l1) > L1_MAX_ENTRIES:
            self._drop_l1(next(iter(self._l1)))

    def _drop_l1(self, key: tuple[int, int, str]) -> None:
        del self._l1[key]
        keys = self._by_property[key[1]]
        keys.discard(key)
        if not keys:
            del self._by_property[key[1]]

    def _version_key(self, property_id: int) -> str:
        return f"{self.prefix}:tv:{property_id}"

    def _summary_key(self, key: tuple[int, int, str], version: int) -> str:
        org_id, property_id, period = key
        return f"{self.prefix}:s:{org_id}:{property_id}:{version}:{period}"
