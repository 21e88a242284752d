"""Which database serves a read: a PostgreSQL hot standby when it is current enough, else the
primary (docs/API.md, "Read replicas and read-your-writes").

Reads that may use a replica go through `read()`: the expense and revenue lists, and summaries
when the cache misses. Writes, auth and idempotency use the primary engine directly and never
come here. A read goes to a replica only when the replica answered its last probe, its lag is at
most DATABASE_REPLICA_MAX_LAG_S, and it has replayed the caller's floor: the primary's WAL
position after the caller's newest write, carried by the Consistency-Token header and kept per
user for READ_YOUR_WRITES_TTL_S. With an edge cache (EDGE_PROVIDER), which keys a copy on the
org alone, the floor is kept per org as well: a colleague's read, stored at the edge and served
to the writer, is then never older than the write. The least lagging replica is tried first; one
that fails is skipped until it answers a probe again, and the read goes on to the next, finally
the primary. Every read the primary serves instead of a replica is counted with its reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request

from . import background, redis_client, storage
from .auth import Principal
from .errors import ApiError, NotFound
from .settings import Settings

log = logging.getLogger("streamcore_server.replicas")
T = TypeVar("T")

TOKEN_HEADER = "Consistency-Token"
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0
REDIS_BUDGET_S = 0.1  # per floor command; past it the read goes to the primary
REDIS_PAUSE_S = 5.0
FALLBACK_REASONS = ("behind", "lag", "down", "floor_unknown", "not_found")
LOCAL_FLOORS_MAX = 100_000

# LSNs as integers (bytes since the start of WAL), so they compare and subtract in Python.
# After a commit, the WAL written so far holds its commit record when commits wait for their
# flush (synchronous_commit on, the default); when they do not, only the insert position does.
PRIMARY_LSN_SQL = text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint")
PRIMARY_INSERT_LSN_SQL = text("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint")
SYNCHRONOUS_COMMIT_SQL = text("SELECT current_setting('synchronous_commit')")
REPLAY_LSN_SQL = text("SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint")
STANDBY_SQL = text(
    "SELECT pg_is_in_recovery() AS standby, "
    "pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint AS replay, "
    "EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8 AS age_s"
)
_LSN = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


class InvalidConsistencyToken(ApiError):
    status, code = 400, "invalid_consistency_token"


class FloorUnknown(Exception):
    """The user's floor could not be read (Redis failed): only the primary is safe."""


def format_lsn(lsn: int) -> str:
    """An LSN in PostgreSQL's text form, e.g. 0/3000148."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_token(headers: Mapping[str, str]) -> int | None:
    """The floor a request's Consistency-Token names, or None without one; 400 if malformed."""
    raw = headers.get(TOKEN_HEADER)
    if raw is None:
        return None
    match = _LSN.fullmatch(raw.strip())
    if match is None:
        raise InvalidConsistencyToken(
            f"{TOKEN_HEADER} must be a value this API returned on a write, e.g. 0/3000148.",
            details={"header": TOKEN_HEADER},
        )
    return (int(match[1], 16) << 32) | int(match[2], 16)


# Raise a user's floor to at least ARGV[1] (zero-padded hex, so strings compare as numbers
# without Lua's doubles rounding them) and keep it ARGV[2] ms from now.
_RAISE_LUA = """
local cur = redis.call('GET', KEYS[1])
if (not cur) or cur < ARGV[1] then cur = ARGV[1] end
redis.call('SET', KEYS[1], cur, 'PX', ARGV[2])
return 0
"""


class Floors:
    """Each user's newest write position for ttl_s: in this process, and in Redis when set."""

    def __init__(self, redis: Any, prefix: str, ttl_s: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._local: OrderedDict[int, tuple[int, float]] = OrderedDict()
        self._raise = redis.register_script(_RAISE_LUA) if redis is not None else None
        self._breaker = redis_client.Breaker(
            log,
            "read-your-writes: Redis failed; reads go to the primary",
            "read-your-writes: Redis answers again",
        )
        self.errors = 0

    async def remember(self, user_id: int, lsn: int) -> None:
        now = time.monotonic()
        old = self._local.pop(user_id, None)
        self._local[user_id] = (max(lsn, old[0] if old else 0), now + self.ttl_s)
        # Every entry has the same lifetime, so the oldest are first: drop the expired ones.
        while self._local:
            first = next(iter(self._local.values()))
            if first[1] > now and len(self._local) <= LOCAL_FLOORS_MAX:
                break
            self._local.popitem(last=False)
        if self._raise is None or not self._breaker.usable():
            return
        try:
            async with asyncio.timeout(REDIS_BUDGET_S):
                await self._raise(
                    keys=[self._key(user_id)], args=[f"{lsn:016x}", int(self.ttl_s * 1000)]
                )
            self._breaker.ok()
        except Exception as exc:
            self._failed(exc)

    async def get(self, user_id: int) -> int | None:
        """The user's floor, None when no write of theirs is recent; FloorUnknown if unsure."""
        entry = self._local.get(user_id)
        local = entry[0] if entry is not None and entry[1] > time.monotonic() else None
        if self.redis is None:
            return local
        if not self._breaker.usable():
            raise FloorUnknown
        try:
            async with asyncio.timeout(REDIS_BUDGET_S):
                raw = await self.redis.get(self._key(user_id))
            self._breaker.ok()
        except Exception as exc:
            self._failed(exc)
            raise FloorUnknown from exc
        remote = int(raw, 16) if raw else None
        if local is None or remote is None:
            return local if remote is None else remote
        return max(local, remote)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        # Paused for at least the floors' lifetime: one not stored meanwhile has then expired.
        self._breaker.failed(exc, max(REDIS_PAUSE_S, self.ttl_s))

    def _key(self, user_id: int) -> str:
        return f"{self.prefix}:{user_id}"


@dataclass
class Replica:
    """One standby and what its last probe (or failed read) said of it."""

    name: str
    engine: AsyncEngine
    up: bool = False
    reason: str | None = "not probed yet"
    replay_lsn: int = 0
    lag_bytes: int | None = None
    lag_s: float | None = None
    probed_at: float | None = None
    reads: int = 0  # served by this standby

    def usable(self, max_lag_s: float) -> bool:
        return self.up and self.lag_s is not None and self.lag_s <= max_lag_s

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "up": self.up,
            "lag_s": self.lag_s,
            "lag_bytes": self.lag_bytes,
            "replay_lsn": format_lsn(self.replay_lsn),
            "probed_at": self.probed_at,
            "reads": self.reads,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def replica_name(url: str) -> str:
    """host:port/database of a replica URL: a label without the credentials."""
    u = make_url(url)
    return f"{u.host or 'localhost'}:{u.port or 5432}/{u.database or ''}"


class ReplicaRouter:
    """Routes reads between the primary and its standbys, and measures the standbys' lag."""

    def __init__(
        self,
        primary: AsyncEngine,
        replicas: Sequence[Replica],
        max_lag_s: float,
        floors: Floors,
        org_floors: Floors | None = None,
    ) -> None:
        self.primary = primary
        self.replicas = list(replicas)
        self.max_lag_s = max_lag_s
        self.floors = floors
        self.org_floors = org_floors  # with an edge: every write's position, per org
        self.reads_replica = 0
        self.reads_primary = 0
        self.fallbacks = dict.fromkeys(FALLBACK_REASONS, 0)
        self._lsn_sql = PRIMARY_LSN_SQL

    def counters(self) -> dict[str, int]:
        out = {"db_reads_replica": self.reads_replica, "db_reads_primary": self.reads_primary}
        out.update({f"db_replica_fallback_{r}": n for r, n in self.fallbacks.items()})
        return out

    def status(self) -> list[dict[str, Any]]:
        return [r.status() for r in self.replicas]

    async def primary_lsn(self) -> int:
        async with self.primary.connect() as conn:
            return int(await conn.scalar(self._lsn_sql))

    async def check_primary(self) -> None:
        """Pick the position a write's token names from how the primary commits."""
        async with self.primary.connect() as conn:
            if await conn.scalar(SYNCHRONOUS_COMMIT_SQL) == "off":
                self._lsn_sql = PRIMARY_INSERT_LSN_SQL

    async def after_write(self, user_id: int, org_id: int | None = None) -> str:
        """The token of a committed write: the primary's WAL position now, kept for the user."""
        lsn = await self.primary_lsn()
        await self.floors.remember(user_id, lsn)
        if self.org_floors is not None and org_id is not None:
            await self.org_floors.remember(org_id, lsn)
        return format_lsn(lsn)

    async def read(
        self,
        user_id: int,
        token: int | None,
        fn: Callable[[AsyncConnection], Awaitable[T]],
        org_id: int | None = None,
    ) -> T:
        """Run fn on the least lagging replica that may serve this user, else on the primary."""
        try:
            floor = await self.floors.get(user_id)
            if self.org_floors is not None and org_id is not None:
                org_floor = await self.org_floors.get(org_id)
                if org_floor is not None:
                    floor = org_floor if floor is None else max(floor, org_floor)
        except FloorUnknown:
            return await self._on_primary(fn, "floor_unknown")
        if token is not None:
            floor = token if floor is None else max(floor, token)
        candidates = sorted(
            (r for r in self.replicas if r.usable(self.max_lag_s)),
            key=lambda r: (r.lag_bytes if r.lag_bytes is not None else 2**64, r.lag_s),
        )
        if not candidates:
            lagging = any(r.up for r in self.replicas)
            return await self._on_primary(fn, "lag" if lagging else "down")
        behind = False
        for replica in candidates:
            try:
                async with (
                    asyncio.timeout(storage.REPLICA_READ_TIMEOUT_S),
                    replica.engine.connect() as conn,
                ):
                    if floor is not None and replica.replay_lsn < floor:
                        # Asked on the connection that will serve the read: replay only moves on.
                        replay = int(await conn.scalar(REPLAY_LSN_SQL) or 0)
                        replica.replay_lsn = replay
                        if replay < floor:
                            behind = True
                            continue
                    result = await fn(conn)
            except NotFound:
                # Absent on a standby may be not replayed yet: only the primary says 404.
                return await self._on_primary(fn, "not_found")
            except ApiError:
                raise
            except Exception as exc:
                self._mark_down(replica, f"a read failed ({type(exc).__name__})")
                continue
            self.reads_replica += 1
            replica.reads += 1
            return result
        return await self._on_primary(fn, "behind" if behind else "down")

    async def _on_primary(self, fn: Callable[[AsyncConnection], Awaitable[T]], reason: str) -> T:
        self.fallbacks[reason] += 1
        self.reads_primary += 1
        async with self.primary.connect() as conn:
            return await fn(conn)

    def _mark_down(self, replica: Replica, reason: str) -> None:
        if replica.up:
            log.warning("replica down: %s", reason, extra={"replica": replica.name})
        replica.up = False
        replica.reason = reason

    async def probe(self) -> None:
        """Measure every standby's replay position and lag against the primary's position."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                primary_lsn: int | None = await self.primary_lsn()
        except Exception:
            primary_lsn = None
        await asyncio.gather(*(self._probe(r, primary_lsn) for r in self.replicas))

    async def _probe(self, replica: Replica, primary_lsn: int | None) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S), replica.engine.connect() as conn:
                row = (await conn.execute(STANDBY_SQL)).one()
        except Exception as exc:
            self._mark_down(replica, f"did not answer ({type(exc).__name__})")
            replica.lag_s = replica.lag_bytes = None
            return
        replica.probed_at = time.time()
        if not row.standby:
            self._mark_down(replica, "not in recovery: a primary, not a standby")
            replica.lag_s = replica.lag_bytes = None
            return
        # Not the larger of old and new: a restarted standby may resume from an earlier point.
        replica.replay_lsn = int(row.replay or 0)
        replica.lag_bytes = None if primary_lsn is None else max(0, primary_lsn - row.replay)
        replica.reason = None
        if replica.lag_bytes == 0:
            replica.lag_s = 0.0
        elif row.age_s is None:
            replica.lag_s = None
            replica.reason = "behind, and has replayed no transaction to date its lag by"
        else:
            # The age of the newest replayed commit: an upper bound of how stale its reads are.
            replica.lag_s = max(0.0, float(row.age_s))
        if not replica.up:
            log.warning("replica up", extra={"replica": replica.name})
        replica.up = True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(PROBE_INTERVAL_S)
            try:
                await self.probe()
            except Exception:
                log.exception("replica probe failed")


async def read(
    request: Request, who: Principal, fn: Callable[[AsyncConnection], Awaitable[T]]
) -> T:
    """Run a read that may be served by a replica (lists, summaries); the primary without one."""
    router: ReplicaRouter | None = getattr(request.app.state, "replicas", None)
    if router is None:
        async with request.app.state.db.connect() as conn:
            return await fn(conn)
    return await router.read(who.user_id, parse_token(request.headers), fn, who.org_id)


async def start(app: Any, settings: Settings, stack: AsyncExitStack) -> ReplicaRouter | None:
    """Open the replicas' engines, probe them once, and keep probing; None without replicas."""
    if not settings.database_replica_urls:
        return None
    replicas = []
    for url in settings.database_replica_urls:
        engine = storage.create_replica_engine(url)
        stack.push_async_callback(engine.dispose)
        replicas.append(Replica(replica_name(url), engine))
    # The primary's identity is in the key: LSNs of two databases sharing a Redis never mix.
    db = hashlib.sha256(settings.database_url.encode()).hexdigest()[:12]
    floors = Floors(
        getattr(app.state, "redis", None),
        f"{settings.metrics_redis_prefix}:ryw:{db}",
        settings.read_your_writes_ttl_s,
    )
    org_floors = None
    if settings.edge_provider != "none":
        org_floors = Floors(
            getattr(app.state, "redis", None),
            f"{settings.metrics_redis_prefix}:ryw-org:{db}",
            settings.read_your_writes_ttl_s,
        )
    router = ReplicaRouter(
        app.state.db, replicas, settings.database_replica_max_lag_s, floors, org_floors
    )
    await router.check_primary()
    await router.probe()
    task = asyncio.create_task(router.run(), name="replica-probe")

    stack.push_async_callback(background.stop, task)
    return router
