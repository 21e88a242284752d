"""Idempotency keys: claim, store and replay responses per caller and key (docs/IDEMPOTENCY.md).

The database is the source of truth: a write handler saves the key's record in the same
transaction as its write (`Claim.complete`), and the table's primary key (caller, key) makes a
second write impossible whatever happened to a lease or to Redis. Redis, when configured, is the
fast path: one atomic script looks up a stored response or claims the key with a short lease.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import and_, bindparam, delete, or_, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

from . import redis_client, storage
from .settings import Settings
from .storage import idempotency_records as T

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("streamcore_server.idempotency")

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
MAX_KEY_LENGTH = 255
# Replays repeat what the handler said, never what belongs to one exchange or one client.
_NOT_STORED_HEADERS = frozenset(
    {
        b"set-cookie",
        b"date",
        b"server",
        b"content-length",
        b"connection",
        b"transfer-encoding",
        b"keep-alive",
        b"x-request-id",
        b"idempotent-replayed",
    }
)
IN_FLIGHT, COMPLETED = "in_flight", "completed"
_PURGE_EVERY_S = 60.0
_PURGE_BATCH = 1000
_REDIS_RETRY_S = 1.0  # after a Redis failure, go straight to the database for this long


class InvalidKey(ValueError):
    """The Idempotency-Key header is absent-but-empty, repeated or malformed."""


class RecordExists(Exception):
    """The key already has a record another request wrote; the write was rolled back."""


def parse_key(values: list[bytes]) -> str:
    """Return the key from the header's field values, or raise InvalidKey.

    A bare key is 1-255 visible ASCII characters; the IETF draft's sf-string form ("...")
    names the same key. Two fields, an empty one or anything else is refused.
    """
    if len(values) != 1:
        raise InvalidKey("Send exactly one Idempotency-Key header.")
    raw = values[0].strip(b" \t")
    if raw.startswith(b'"'):
        if len(raw) < 2 or not raw.endswith(b'"'):
            raise InvalidKey("A quoted Idempotency-Key must end with a quote.")
        inner, out, escaped = raw[1:-1], bytearray(), False
        for byte in inner:
            if escaped:
                if byte not in b'"\\':
                    raise InvalidKey('Only \\" and \\\\ may be escaped in a quoted key.')
                out.append(byte)
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                raise InvalidKey("A quote inside a quoted key must be escaped.")
            else:
                out.append(byte)
        if escaped:
            raise InvalidKey("A quoted key cannot end with a backslash.")
        raw = bytes(out)
    if not 1 <= len(raw) <= MAX_KEY_LENGTH:
        raise InvalidKey(f"An Idempotency-Key is 1 to {MAX_KEY_LENGTH} characters.")
    if any(not 0x21 <= b <= 0x7E for b in raw):
        raise InvalidKey("An Idempotency-Key is visible ASCII only (no spaces or controls).")
    return raw.decode("ascii")


def fingerprint(method: str, route: str, body: bytes) -> str:
    """SHA-256 over the method, the route template and the body's meaning (canonical JSON)."""
    try:
        # Key order and whitespace do not change what a JSON body means; sorted keys remove them.
        canonical = b"json:" + orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS)
    except orjson.JSONDecodeError:
        canonical = b"raw:" + body  # the handler will refuse it; still, never a false match
    digest = hashlib.sha256()
    for part in (method.upper().encode(), route.encode(), canonical):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def storable(status: int) -> bool:
    """2xx and the handler's business 4xx are kept; validation, 429 and 5xx may be retried."""
    return 200 <= status < 300 or status in (403, 404, 409)


@dataclass(frozen=True, slots=True)
class Stored:
    """A response as replayed: status, headers (without per-exchange ones) and the body bytes."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    @classmethod
    def of(cls, status: int, raw_headers: Iterable[tuple[bytes, bytes]], body: bytes) -> Stored:
        headers = tuple(
            (k.lower(), v) for k, v in raw_headers if k.lower() not in _NOT_STORED_HEADERS
        )
        return cls(status, headers, body)

    def headers_blob(self) -> bytes:
        return orjson.dumps([[k.decode("latin-1"), v.decode("latin-1")] for k, v in self.headers])

    @staticmethod
    def parse_headers(blob: bytes) -> tuple[tuple[bytes, bytes], ...]:
        return tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in orjson.loads(blob))


@dataclass(frozen=True, slots=True)
class Replay:
    stored: Stored


@dataclass(frozen=True, slots=True)
class Mismatch:
    pass


@dataclass(frozen=True, slots=True)
class InProgress:
    retry_after_s: int


@dataclass
class Stats:
    """Counters the metrics endpoint exports (app.state.idempotency_stats)."""

    claims: int = 0
    replays: int = 0
    mismatches: int = 0
    in_progress: int = 0
    stored: int = 0
    released: int = 0
    backstop_hits: int = 0  # a write rolled back because the key already had a record
    redis_errors: int = 0
    redis_fallbacks: int = 0
    purged: int = 0


@dataclass(eq=False)
class Claim:
    """This request holds the key; hand it to the handler through request.state.idempotency."""

    store: DatabaseStore
    org_id: int
    user_id: int
    key: str
    fingerprint: str
    method: str
    route: str
    token: str
    lease_until_ms: int
    via_redis: bool = False
    saved: Stored | None = field(default=None)

    async def complete(self, conn: AsyncConnection, response: Response) -> None:
        """Save the response in the caller's write transaction; raise RecordExists if taken."""
        stored = Stored.of(response.status_code, response.raw_headers, bytes(response.body))
        await self.store.upsert_completed(conn, self, stored)
        self.saved = stored

    def completed_args(self, stored: Stored) -> tuple[Any, ...]:
        """Parameters of a completed record written inside another statement (COMPLETED_PG)."""
        now = self.store.now_ms()
        return (
            self.user_id,
            self.key,
            self.fingerprint,
            self.method,
            self.route,
            stored.status,
            stored.headers_blob(),
            now,
            now + self.store.ttl_ms,
            self.token,
        )

    def complete_on_sqlite(self, db: sqlite3.Connection, stored: Stored) -> bool:
        """On SQLite's thread, in the write's transaction: upsert the record; False if taken."""
        values = self.store._values(self, self.store.now_ms(), stored)
        try:
            return bool(
                db.execute(_SQLITE_COMPLETED.sql, _SQLITE_COMPLETED.args(values)).fetchall()
            )
        except sqlite3.IntegrityError:  # a concurrent insert reported this way
            return False

    def completed_in_statement(self, stored: Stored, written: bool) -> None:
        """Account for a record that a write statement stored (or found taken: RecordExists)."""
        if not written:
            self.store.stats.backstop_hits += 1
            raise RecordExists(self.key)
        self.store.stats.stored += 1
        self.saved = stored


def claim_of(request: Request) -> Claim | None:
    """The idempotency claim of this request, if it carried a key on a covered route."""
    claim: Claim | None = request.scope.get("state", {}).get("idempotency")
    return claim


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def _retry_after(until_ms: int | None, now_ms: int) -> int:
    return max(1, math.ceil(((until_ms or now_ms) - now_ms) / 1000))


def _upsert(dialect: str, *, completed: bool) -> Any:
    """INSERT the record, or take over a row whose claim or record has lapsed."""
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(T)
    now: Any = bindparam("now")
    takeover = or_(T.c.expires_ms <= now, and_(T.c.state == IN_FLIGHT, T.c.claimed_until_ms <= now))
    if completed:
        # Our own claim row, or a lapsed one; never someone else's live claim or record.
        takeover = or_(takeover, and_(T.c.state == IN_FLIGHT, T.c.claim_token == bindparam("mine")))
    cols = [c.name for c in T.c if c.name not in ("org_id", "user_id", "key")]
    stmt = ins.on_conflict_do_update(
        index_elements=[T.c.org_id, T.c.user_id, T.c.key],
        set_={name: ins.excluded[name] for name in cols},
        where=takeover,
    )
    return stmt.returning(T.c.state)


_UPSERTS = {
    (name, completed): _upsert(name, completed=completed)
    for name in ("sqlite", "postgresql")
    for completed in (False, True)
}
_PK = and_(T.c.org_id == bindparam("o"), T.c.user_id == bindparam("u"), T.c.key == bindparam("k"))
_LOOKUP = select(
    T.c.fingerprint,
    T.c.state,
    T.c.claimed_until_ms,
    T.c.status,
    T.c.headers,
    T.c.body,
    T.c.expires_ms,
).where(_PK)
_RELEASE = delete(T).where(_PK, T.c.state == IN_FLIGHT, T.c.claim_token == bindparam("mine"))


def completed_pg(org: str, first: int, select_from: str, body: str) -> str:
    """The completed upsert as a sub-statement of a write (PostgreSQL), Claim.completed_args'
    ten values from ${first}; the same takeover rule as _upsert(completed=True).

    org and body are SQL expressions of the enclosing statement (the body can then hold an
    id that statement draws); it inserts one row per row of select_from, and returns 1 if won.
    """
    n = [f"${first + i}" for i in range(10)]
    return f"""
    INSERT INTO idempotency_records AS r (org_id, user_id, key, fingerprint, method, route, state,
        claim_token, claimed_until_ms, status, headers, body, created_ms, expires_ms)
    SELECT {org}, {n[0]}::bigint, {n[1]}::varchar, {n[2]}::varchar, {n[3]}::varchar,
        {n[4]}::varchar, '{COMPLETED}', NULL, NULL, {n[5]}::integer, {n[6]}::bytea, {body},
        {n[7]}::bigint, {n[8]}::bigint
    FROM {select_from}
    ON CONFLICT (org_id, user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint,
        method = excluded.method, route = excluded.route, state = excluded.state,
        claim_token = NULL, claimed_until_ms = NULL, status = excluded.status,
        headers = excluded.headers, body = excluded.body, created_ms = excluded.created_ms,
        expires_ms = excluded.expires_ms
    WHERE r.expires_ms <= {n[7]}::bigint OR (r.state = '{IN_FLIGHT}'
        AND (r.claimed_until_ms <= {n[7]}::bigint OR r.claim_token = {n[9]}::varchar))
    RETURNING 1"""


class _DriverStatement:
    """A statement compiled once to the driver's SQL, run on the raw driver connection.

    asyncpg prepares it once per connection; SQLAlchemy's execution layer (a few hundred µs of
    CPU per statement) is skipped on the idempotency hot path.
    """

    def __init__(self, stmt: Any, dialect: Any) -> None:
        compiled = stmt.compile(dialect=dialect)
        self.sql = compiled.string
        self.names = list(compiled.positiontup or ())
        self.defaults = dict(compiled.params)

    def args(self, values: dict[str, Any]) -> list[Any]:
        return [values[n] if n in values else self.defaults[n] for n in self.names]


_PG_DIALECT = asyncpg_dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
# _upsert(completed=False) for a batch of keys, in key order (two batches cannot deadlock on
# them); each row's created_ms is its "now". Returns the keys won.
_PG_CLAIM_COLUMNS = (
    "org_id",
    "user_id",
    "key",
    "fingerprint",
    "method",
    "route",
    "claim_token",
    "claimed_until_ms",
    "created_ms",
    "expires_ms",
)
_PG_CLAIM_MANY = f"""
INSERT INTO idempotency_records AS r (org_id, user_id, key, fingerprint, method, route, state,
    claim_token, claimed_until_ms, status, headers, body, created_ms, expires_ms)
SELECT o, u, k, f, m, rt, '{IN_FLIGHT}', tok, until, NULL, NULL, NULL, now_ms, exp
FROM unnest($1::bigint[], $2::bigint[], $3::varchar[], $4::varchar[], $5::varchar[],
    $6::varchar[], $7::varchar[], $8::bigint[], $9::bigint[], $10::bigint[])
    AS c(o, u, k, f, m, rt, tok, until, now_ms, exp)
ORDER BY o, u, k
ON CONFLICT (org_id, user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint,
    method = excluded.method, route = excluded.route, state = excluded.state,
    claim_token = excluded.claim_token, claimed_until_ms = excluded.claimed_until_ms,
    status = NULL, headers = NULL, body = NULL, created_ms = excluded.created_ms,
    expires_ms = excluded.expires_ms
WHERE r.expires_ms <= excluded.created_ms
    OR (r.state = '{IN_FLIGHT}' AND r.claimed_until_ms <= excluded.created_ms)
RETURNING org_id, user_id, key"""
_PG_LOOKUP = _DriverStatement(_LOOKUP, _PG_DIALECT)
_SQLITE_CLAIM = _DriverStatement(_UPSERTS[("sqlite", False)], sqlite.dialect())
_SQLITE_COMPLETED = _DriverStatement(_UPSERTS[("sqlite", True)], sqlite.dialect())


class DatabaseStore:
    """The durable store in the app's own database; also the backstop behind Redis."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        stats: Stats,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.ttl_ms = _ms(settings.idempotency_ttl_s)
        self.lease_ms = _ms(settings.idempotency_lease_s)
        self.stats = stats
        self.clock = clock  # wall clock (records outlive the process); tests inject their own
        self._next_purge = 0.0
        self._claims = storage.Combiner(refused=storage.refused_whole(engine))

    def now_ms(self) -> int:
        return _ms(self.clock())

    def _values(self, c: Claim, now: int, stored: Stored | None) -> dict[str, Any]:
        return {
            "org_id": c.org_id,
            "user_id": c.user_id,
            "key": c.key,
            "fingerprint": c.fingerprint,
            "method": c.method,
            "route": c.route,
            "state": COMPLETED if stored else IN_FLIGHT,
            "claim_token": None if stored else c.token,
            "claimed_until_ms": None if stored else c.lease_until_ms,
            "status": stored.status if stored else None,
            "headers": stored.headers_blob() if stored else None,
            "body": stored.body if stored else None,
            "created_ms": now,
            "expires_ms": now + self.ttl_ms,
            "now": now,
            "mine": c.token,
        }

    def new_claim(
        self, org_id: int, user_id: int, key: str, fp: str, method: str, route: str
    ) -> Claim:
        token = secrets.token_hex(16)
        until = self.now_ms() + self.lease_ms
        return Claim(self, org_id, user_id, key, fp, method, route, token, until)

    async def claim(self, c: Claim) -> Claim | Replay | Mismatch | InProgress:
        """Claim the key with a lease, or say why not (stored, other body, still running)."""
        await self._maybe_purge()
        for _ in range(3):  # a row released between our INSERT and SELECT: try again
            now = self.now_ms()
            c.lease_until_ms = now + self.lease_ms
            won = await self._claim_row(self._values(c, now, None))
            if won is not None:
                self.stats.claims += 1
                return c
            outcome = await self.lookup(c)
            if outcome is not None:
                return outcome
        return InProgress(1)

    async def _claim_row(self, values: dict[str, Any]) -> Any:
        if self.engine.dialect.name == "postgresql":
            # Claims arriving while one is in flight go as the next statement, one WAL flush.
            return await self._claims.write(None, values, self._claim_rows)
        # On SQLite a claim is a job of the writes' group commit: it shares their transaction,
        # fsync and single hop to the driver's thread instead of taking the lock alone.
        args = _SQLITE_CLAIM.args(values)
        rows = await storage.group_commit(self.engine).run_sync(
            lambda db: db.execute(_SQLITE_CLAIM.sql, args).fetchall()
        )
        return rows[0] if rows else None

    async def _claim_rows(self, batch: list[dict[str, Any]]) -> list[Any]:
        """Claim a batch of keys in one autocommitted statement; a row per key won, else None."""
        names = _PG_CLAIM_COLUMNS
        first: dict[tuple[Any, ...], int] = {}
        for i, v in enumerate(batch):
            # A key twice in one batch: the first claims it, the other then finds that claim.
            first.setdefault((v["org_id"], v["user_id"], v["key"]), i)
        rows = [batch[i] for i in first.values()]
        async with storage.single_statement(self.engine) as db:
            won = await db.fetch(_PG_CLAIM_MANY, *([v[n] for v in rows] for n in names))
        taken = {(r["org_id"], r["user_id"], r["key"]) for r in won}
        return [
            True if first[name] == i and name in taken else None
            for i, name in enumerate((v["org_id"], v["user_id"], v["key"]) for v in batch)
        ]

    async def lookup(self, c: Claim) -> Replay | Mismatch | InProgress | None:
        """Judge the stored row for this caller and key against the request; None if none."""
        now = self.now_ms()
        key = {"o": c.org_id, "u": c.user_id, "k": c.key}
        row: Any
        if self.engine.dialect.name == "postgresql":
            async with storage.single_statement(self.engine) as db:
                row = await db.fetchrow(_PG_LOOKUP.sql, *_PG_LOOKUP.args(key))
        else:
            async with self.engine.connect() as conn:
                row = (await conn.execute(_LOOKUP, key)).mappings().first()
        if row is None or row["expires_ms"] <= now:
            return None
        if row["fingerprint"] != c.fingerprint:
            return Mismatch()
        if row["state"] == COMPLETED:
            headers = Stored.parse_headers(row["headers"])
            return Replay(Stored(row["status"], headers, bytes(row["body"])))
        until = row["claimed_until_ms"]
        if until is not None and until <= now:
            return None  # a lapsed claim: free to take
        return InProgress(_retry_after(until, now))

    async def upsert_completed(self, conn: AsyncConnection, c: Claim, stored: Stored) -> None:
        """Write the completed record in conn's transaction; raise RecordExists if taken."""
        stmt = _UPSERTS[(conn.dialect.name, True)]
        try:
            won = (await conn.execute(stmt, self._values(c, self.now_ms(), stored))).first()
        except IntegrityError:  # a concurrent insert on a dialect that reports it this way
            won = None
        if won is None:
            self.stats.backstop_hits += 1
            raise RecordExists(c.key)
        self.stats.stored += 1

    async def save(self, c: Claim, stored: Stored) -> Stored:
        """Store a response the handler did not store itself; answer the record that stands."""
        try:
            async with storage.write_transaction(self.engine) as conn:
                await self.upsert_completed(conn, c, stored)
        except RecordExists:
            pass
        return stored

    async def release(self, c: Claim) -> None:
        """Free the key after an outcome that is not stored (validation, 429, 5xx)."""
        async with storage.write_transaction(self.engine) as conn:
            await conn.execute(
                _RELEASE, {"o": c.org_id, "u": c.user_id, "k": c.key, "mine": c.token}
            )
        self.stats.released += 1

    async def _maybe_purge(self) -> None:
        # Opportunistic: at most once a minute per process, a bounded batch of expired rows.
        if time.monotonic() < self._next_purge:
            return
        self._next_purge = time.monotonic() + _PURGE_EVERY_S
        now = self.now_ms()
        victims = (
            select(T.c.org_id, T.c.user_id, T.c.key)
            .where(T.c.expires_ms <= now)
            .limit(_PURGE_BATCH)
            .subquery()
        )
        stmt = delete(T).where(
            tuple_(T.c.org_id, T.c.user_id, T.c.key).in_(
                select(victims.c.org_id, victims.c.user_id, victims.c.key)
            )
        )
        async with storage.write_transaction(self.engine) as conn:
            self.stats.purged += (await conn.execute(stmt)).rowcount or 0


# One round trip: a stored record or a live claim answers as is; otherwise claim with a lease.
_CLAIM_LUA = """
local v = redis.call('GET', KEYS[1])
if v then return {v, redis.call('PTTL', KEYS[1])} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore:
    """Redis in front of the database store: claim + cached response in one key per caller."""

    def __init__(
        self, client: aioredis.Redis, db: DatabaseStore, prefix: str, ttl_s: float
    ) -> None:
        from redis.exceptions import RedisError  # loaded with the client, never before

        self._failures = (RedisError, OSError, asyncio.TimeoutError)
        self.client = client
        self.db = db
        # A response leaves Redis before the database forgets it; a retry after that is
        # answered from the database record (the handler's transaction collides with it).
        self.ttl_ms = min(_ms(ttl_s), db.ttl_ms)
        self.stats = db.stats
        self.prefix = prefix
        self._claim = client.register_script(_CLAIM_LUA)
        self._release = client.register_script(_RELEASE_LUA)
        self._breaker = redis_client.Breaker(
            log,
            "idempotency: Redis unavailable, using the database store",
            "idempotency: Redis answers again",
        )

    def new_claim(
        self, org_id: int, user_id: int, key: str, fp: str, method: str, route: str
    ) -> Claim:
        return self.db.new_claim(org_id, user_id, key, fp, method, route)

    def _key(self, c: Claim) -> str:
        return f"{self.prefix}{c.org_id}:{c.user_id}:{c.key}"

    def _usable(self) -> bool:
        return self._breaker.usable()

    def _failed(self, exc: BaseException) -> None:
        self.stats.redis_errors += 1
        self._breaker.failed(exc, _REDIS_RETRY_S)

    def _ok(self) -> None:
        self._breaker.ok()

    async def claim(self, c: Claim) -> Claim | Replay | Mismatch | InProgress:
        if self._usable():
            value = b"C" + c.fingerprint.encode() + c.token.encode()
            try:
                found = await self._claim(keys=[self._key(c)], args=[value, self.db.lease_ms])
            except self._failures as exc:
                self._failed(exc)
            else:
                self._ok()
                if not found:
                    self.stats.claims += 1
                    c.via_redis = True
                    return c
                return self._judge(c, found[0], int(found[1]))
        self.stats.redis_fallbacks += 1
        return await self.db.claim(c)

    def _judge(self, c: Claim, value: bytes, pttl: int) -> Replay | Mismatch | InProgress:
        if value[1:65].decode() != c.fingerprint:
            return Mismatch()
        if value[:1] == b"C":
            return InProgress(max(1, math.ceil(pttl / 1000)))
        meta, _, body = value[65:].partition(b"\n")
        status = int(meta[:3])
        return Replay(Stored(status, Stored.parse_headers(meta[3:]), body))

    async def lookup(self, c: Claim) -> Replay | Mismatch | InProgress | None:
        return await self.db.lookup(c)

    async def cache(self, c: Claim, stored: Stored) -> None:
        """Keep a stored response in Redis for fast replays (the database already has it)."""
        if not self._usable():
            return
        value = b"R" + c.fingerprint.encode() + b"%03d" % stored.status + stored.headers_blob()
        try:
            await self.client.set(self._key(c), value + b"\n" + stored.body, px=self.ttl_ms)
        except self._failures as exc:
            self._failed(exc)

    async def save(self, c: Claim, stored: Stored) -> Stored:
        await self.db.save(c, stored)
        await self.cache(c, stored)
        return stored

    async def release(self, c: Claim) -> None:
        if not c.via_redis:
            await self.db.release(c)
            return
        self.stats.released += 1
        if not self._usable():
            return  # the lease frees the key
        value = b"C" + c.fingerprint.encode() + c.token.encode()
        try:
            await self._release(keys=[self._key(c)], args=[value])
        except self._failures as exc:
            self._failed(exc)


Store = DatabaseStore | RedisStore


def open_store(
    settings: Settings, engine: AsyncEngine, stats: Stats
) -> tuple[Store, aioredis.Redis | None]:
    """The Redis store when REDIS_URL is set, else the database store; and the client to close."""
    db = DatabaseStore(engine, settings, stats)
    if not settings.redis_url:
        return db, None
    timeout = settings.idempotency_redis_timeout_ms / 1000
    # Short timeouts: a hung Redis costs a request at most this before the database answers.
    client = redis_client.connect(settings.redis_url, timeout=timeout, connect_timeout=timeout)
    store = RedisStore(
        client, db, settings.idempotency_redis_prefix, settings.idempotency_redis_ttl_s
    )
    return store, client
