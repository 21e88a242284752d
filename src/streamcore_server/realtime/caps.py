"""Connection caps per user and per org: in-process, or shared through Redis with leases.

Redis keeps, per user and per org, a sorted set of connection ids scored by lease expiry (the
server's own clock, TIME, so hosts' clocks need not agree). Acquire is one Lua script: purge the
expired, check both caps, add to both. Each process refreshes its leases every lease/3 seconds, so
the connections of a worker that dies stop counting within LEASE seconds.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .. import background

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("streamcore_server.realtime")

USER_LIMIT = "User connection limit exceeded"
ORG_LIMIT = "Org connection limit exceeded"


@dataclass(frozen=True, slots=True)
class Lease:
    conn_id: str
    user_id: int
    org_id: int


class CapExceeded(Exception):
    """The connection would go over a cap; `scope` is "user" or "org"."""

    def __init__(self, scope: str) -> None:
        super().__init__(USER_LIMIT if scope == "user" else ORG_LIMIT)
        self.scope = scope
        self.reason = str(self)


class ConnectionCaps(Protocol):
    # What acquire raises when the counts cannot be read (the handshake then answers 503).
    unavailable: tuple[type[BaseException], ...]

    async def acquire(self, lease: Lease) -> None:
        """Count the connection, or raise CapExceeded."""

    async def release(self, lease: Lease) -> None:
        """Stop counting it (idempotent)."""

    def counts(self, user_id: int, org_id: int) -> tuple[int, int]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class LocalCaps:
    """Counts in this process only (no REDIS_URL)."""

    unavailable: tuple[type[BaseException], ...] = ()  # always readable

    def __init__(self, per_user: int, per_org: int) -> None:
        self.per_user = per_user
        self.per_org = per_org
        self._user: dict[int, set[str]] = {}
        self._org: dict[int, set[str]] = {}

    async def acquire(self, lease: Lease) -> None:
        users = self._user.get(lease.user_id, set())
        orgs = self._org.get(lease.org_id, set())
        if len(users) >= self.per_user:
            raise CapExceeded("user")
        if len(orgs) >= self.per_org:
            raise CapExceeded("org")
        self._user.setdefault(lease.user_id, users).add(lease.conn_id)
        self._org.setdefault(lease.org_id, orgs).add(lease.conn_id)

    async def release(self, lease: Lease) -> None:
        for table, key in ((self._user, lease.user_id), (self._org, lease.org_id)):
            members = table.get(key)
            if members is not None:
                members.discard(lease.conn_id)
                if not members:
                    del table[key]

    def counts(self, user_id: int, org_id: int) -> tuple[int, int]:
        return len(self._user.get(user_id, ())), len(self._org.get(org_id, ()))

    def total(self) -> int:
        return sum(len(m) for m in self._org.values())

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass


_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 2 end
redis.call('ZADD', KEYS[1], expiry, ARGV[1])
redis.call('ZADD', KEYS[2], expiry, ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 2)
return 0
"""

# Refresh only members still present (XX): a lease already purged stays released.
_REFRESH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[2 * i - 3], 'XX', expiry, ARGV[i])
  redis.call('ZADD', KEYS[2 * i - 2], 'XX', expiry, ARGV[i])
  redis.call('PEXPIRE', KEYS[2 * i - 3], tonumber(ARGV[1]) * 2)
  redis.call('PEXPIRE', KEYS[2 * i - 2], tonumber(ARGV[1]) * 2)
end
return #ARGV - 1
"""


class RedisCaps:
    """Counts shared by every process using the same Redis and prefix."""

    def __init__(
        self, client: aioredis.Redis, prefix: str, per_user: int, per_org: int, lease_s: float
    ) -> None:
        from redis.exceptions import RedisError  # loaded with the client, never before

        self.unavailable = (RedisError, OSError)
        self.client = client
        self.prefix = prefix
        self.per_user = per_user
        self.per_org = per_org
        self.lease_ms = int(lease_s * 1000)
        self._acquire = client.register_script(_ACQUIRE)
        self._refresh = client.register_script(_REFRESH)
        self._leases: dict[str, Lease] = {}
        self._task: asyncio.Task[None] | None = None

    def user_key(self, user_id: int) -> str:
        return f"{self.prefix}:conns:user:{user_id}"

    def org_key(self, org_id: int) -> str:
        return f"{self.prefix}:conns:org:{org_id}"

    async def acquire(self, lease: Lease) -> None:
        keys = [self.user_key(lease.user_id), self.org_key(lease.org_id)]
        args: list[str | int] = [lease.conn_id, self.lease_ms, self.per_user, self.per_org]
        result = int(await self._acquire(keys=keys, args=args))
        if result == 1:
            raise CapExceeded("user")
        if result == 2:
            raise CapExceeded("org")
        self._leases[lease.conn_id] = lease

    async def release(self, lease: Lease) -> None:
        self._leases.pop(lease.conn_id, None)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.zrem(self.user_key(lease.user_id), lease.conn_id)
                pipe.zrem(self.org_key(lease.org_id), lease.conn_id)
                await pipe.execute()
        except Exception:
            # The lease then expires on its own within lease_s.
            log.warning("could not release a connection lease", exc_info=True)

    def counts(self, user_id: int, org_id: int) -> tuple[int, int]:
        leases = self._leases.values()
        return (
            sum(1 for x in leases if x.user_id == user_id),
            sum(1 for x in leases if x.org_id == org_id),
        )

    def total(self) -> int:
        return len(self._leases)

    async def refresh(self) -> None:
        leases = list(self._leases.values())
        for start in range(0, len(leases), 500):
            chunk = leases[start : start + 500]
            keys: list[str] = []
            for x in chunk:
                keys += [self.user_key(x.user_id), self.org_key(x.org_id)]
            await self._refresh(keys=keys, args=[self.lease_ms, *(x.conn_id for x in chunk)])

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ms / 3000)
            try:
                await self.refresh()
            except Exception:
                log.warning("could not refresh connection leases", exc_info=True)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._heartbeat())

    async def stop(self) -> None:
        await background.stop(self._task)
        for lease in list(self._leases.values()):
            await self.release(lease)
