"""The one schema, the engine for SQLite or PostgreSQL, and migrations run at start-up."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    event,
    inspect,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from . import sqlite_cursor

log = logging.getLogger("streamcore_server.storage")

UTC = dt.UTC


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware instant stored in UTC, read back aware on every dialect.

    SQLite has no time zone type: it gets naive UTC text, which also sorts correctly.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached storage")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def result_processor(self, dialect: Dialect, coltype: Any) -> Any:
        # process_result_value's work in one call a value, the dialect's parsing kept (the
        # generic TypeDecorator makes two Python calls; a page reads two instants a row).
        parse = self.impl_instance.result_processor(dialect, coltype)

        def process(value: Any) -> dt.datetime | None:
            if value is None:
                return None
            at: dt.datetime = value if parse is None else parse(value)  # type: ignore[assignment]
            return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)

        return process


# Integer keys everywhere; SQLite only auto-increments a column typed exactly INTEGER.
Id = BigInteger().with_variant(Integer(), "sqlite")

TotalsSnapshot = JSON().with_variant(postgresql.JSONB(), "postgresql")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

orgs = Table(
    "orgs",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("created_at", UTCDateTime(), nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("org_id", Id, ForeignKey("orgs.id"), nullable=False, index=True),
    Column("email", String(320), nullable=False, unique=True),  # stored lower-cased
    Column("password_hash", String(255), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
)

properties = Table(
    "properties",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("org_id", Id, ForeignKey("orgs.id"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    # Bumped with the running totals: orders their snapshots however late they are published.
    Column("totals_version", BigInteger(), nullable=False, server_default="0"),
    # The same running totals as property_totals, {"INR": [expenses, revenues], ...}, moved by
    # the UPDATE that bumps the version: the write's one statement returns them from its row.
    Column("totals", TotalsSnapshot, nullable=False, server_default="{}"),
    UniqueConstraint("org_id", "name"),
)


def _entries(name: str, date_column: str) -> Table:
    return Table(
        name,
        metadata,
        Column("id", Id, primary_key=True, autoincrement=True),
        Column("org_id", Id, ForeignKey("orgs.id"), nullable=False),
        Column("property_id", Id, ForeignKey("properties.id"), nullable=False),
        Column("category", String(64), nullable=False),
        Column("amount_cents", BigInteger(), nullable=False),
        Column("currency", String(3), nullable=False),
        Column("description", Text(), nullable=False),
        Column(date_column, UTCDateTime(), nullable=False),
        Column("payment_mode", String(32), nullable=False),
        Column("created_at", UTCDateTime(), nullable=False),
        Column("created_by", Id, ForeignKey("users.id"), nullable=False),
        # Serves the list's (date, id) keyset order within a property and the summary's range;
        # both state the org too, so the planner never takes the org's index for them (0005).
        Index(f"ix_{name}_property_org_date_id", "property_id", "org_id", date_column, "id"),
        Index(f"ix_{name}_org_date_id", "org_id", date_column, "id"),
    )


expenses = _entries("expenses", "expense_date")
revenues = _entries("revenues", "revenue_date")

# Running totals per property and currency, updated in the write's own transaction so the
# realtime state never needs a scan of the ledger.
property_totals = Table(
    "property_totals",
    metadata,
    Column("property_id", Id, ForeignKey("properties.id"), primary_key=True),
    Column("currency", String(3), primary_key=True),
    Column("expenses_cents", BigInteger(), nullable=False),
    Column("revenues_cents", BigInteger(), nullable=False),
)


# One row per (caller, Idempotency-Key): an in-flight claim with a lease, then the response.
# Instants are epoch milliseconds: compared on every claim, identical on both dialects.
idempotency_records = Table(
    "idempotency_records",
    metadata,
    Column("org_id", Id, primary_key=True),
    Column("user_id", Id, primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("method", String(16), nullable=False),
    Column("route", String(255), nullable=False),
    Column("state", String(16), nullable=False),  # "in_flight" | "completed"
    Column("claim_token", String(32)),
    Column("claimed_until_ms", BigInteger()),
    Column("status", Integer()),
    Column("headers", LargeBinary()),
    Column("body", LargeBinary()),
    Column("created_ms", BigInteger(), nullable=False),
    Column("expires_ms", BigInteger(), nullable=False, index=True),
)


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    sqlite_cursor.adopt(dbapi_connection)  # one hop to the driver's thread per statement
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; SQLite leaves foreign keys off unless asked.
    # synchronous stays at its FULL default: a committed expense must survive a power cut.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # A transaction's scratch (statement journals, RETURNING's rows, sorts) in memory: on disk
    # SQLite made, wrote and unlinked a temp file in /var/tmp per shared commit. Only the
    # database and its WAL are durable state.
    cursor.execute("PRAGMA temp_store=MEMORY")
    cursor.close()


def _reset_sqlite(dbapi_connection: Any, _record: Any, state: Any) -> None:
    # The pool's reset is a ROLLBACK on every return, on aiosqlite one more hop to the driver's
    # thread: a group commit's batch (committed on that thread, out of SQLAlchemy's sight) paid
    # it every time for a connection with nothing open. SQLite itself says whether a
    # transaction is open; a connection collected without being closed is left alone, as the
    # pool's own reset leaves it.
    if state.terminate_only or not state.asyncio_safe:
        return
    if dbapi_connection.driver_connection.in_transaction:
        dbapi_connection.rollback()


def create_engine(database_url: str) -> AsyncEngine:
    """Create the async engine for SQLite (a file, WAL mode) or PostgreSQL.

    hide_parameters keeps bound values (password hashes, amounts) out of logged DB errors.
    """
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        # timeout is SQLite's busy wait: writers queue for the lock instead of failing.
        engine = create_async_engine(
            url,
            connect_args={"timeout": 30},
            hide_parameters=True,
            pool_reset_on_return=None,  # _reset_sqlite does it, only when there is something
        )
        event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        event.listen(engine.sync_engine, "reset", _reset_sqlite)
        return engine
    # pool_size covers the concurrency one worker serves: connections beyond it ("overflow")
    # are closed on return, and reopening one per burst (TLS probe, auth, startup) cost more
    # CPU than the writes themselves under a steady 16-32 concurrent requests (a request holds
    # its connection only for its statements, so 20 serve more concurrent requests than that).
    engine = create_async_engine(
        url, pool_size=20, max_overflow=10, pool_recycle=POOL_RECYCLE_S, hide_parameters=True
    )
    event.listen(engine.sync_engine, "checkout", _discard_closed)
    return engine


# No pre-ping (a round trip on every checkout): a connection the server closed (restart,
# pg_terminate_backend, idle timeout) is seen closed by asyncpg as soon as the socket says so,
# and the checkout hook swaps it for a fresh one; recycling bounds the age of the rest, so a
# connection a middlebox dropped silently is not kept for long.
POOL_RECYCLE_S = 1800


def _discard_closed(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    driver = record.driver_connection
    if driver is not None and driver.is_closed():
        # The pool invalidates this connection and checks out another (up to three tries).
        raise DisconnectionError("connection closed by the server")


async def driver_connection(conn: AsyncConnection) -> Any:
    """The driver's own connection under conn (asyncpg's), for statements prepared by it."""
    raw = await conn.get_raw_connection()
    return raw.driver_connection


class DriverConnections:
    """asyncpg connections lent for one statement at a time, without SQLAlchemy's checkout.

    The hot writes are single statements run on asyncpg itself; checking a connection out of
    SQLAlchemy's pool for each (AsyncConnection, greenlet, checkout and reset-on-return) cost
    about as much CPU as the statement. Up to `size` connections are taken from that pool once
    and kept; a statement borrows one from a free list. A connection the server closed or one
    older than POOL_RECYCLE_S is handed back to SQLAlchemy's pool (which swaps a closed one
    at its next checkout) and replaced; one whose statement raised is given back too, since a
    cancelled statement can leave it mid-protocol. Opened by the app's lifespan and closed
    before the engine is disposed; an engine without one is served by engine.connect().
    """

    def __init__(self, engine: AsyncEngine, size: int) -> None:
        self.engine = engine
        self.size = size
        self._idle: list[tuple[AsyncConnection, Any, float]] = []
        # A waiter gets a connection, or None: one was dropped, so it may open its own.
        self._waiters: deque[asyncio.Future[tuple[AsyncConnection, Any, float] | None]] = deque()
        self._open = 0
        self._closed = False
        self._late: set[asyncio.Future[None]] = set()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        """Borrow a driver connection for one statement (no transaction is left open on it)."""
        held = await self._acquire()
        try:
            yield held[1]
        except BaseException:
            await self._drop(held)
            raise
        self._release(held)

    async def _acquire(self) -> tuple[AsyncConnection, Any, float]:
        while self._idle:
            held = self._idle.pop()
            if held[1].is_closed() or time.monotonic() - held[2] > POOL_RECYCLE_S:
                await self._drop(held)
                continue
            return held
        if self._open < self.size:
            self._open += 1
            try:
                conn = await self.engine.connect()
                return conn, await driver_connection(conn), time.monotonic()
            except BaseException:
                self._open -= 1
                raise
        waiter: asyncio.Future[tuple[AsyncConnection, Any, float] | None]
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        handed = await waiter
        if handed is None or handed[1].is_closed():
            if handed is not None:
                await self._drop(handed)
            return await self._acquire()
        return handed

    def _hand_over(self, held: tuple[AsyncConnection, Any, float] | None) -> bool:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(held)
                return True
        return False

    def _release(self, held: tuple[AsyncConnection, Any, float]) -> None:
        if self._closed:
            self._open -= 1
            task = asyncio.ensure_future(held[0].close())  # returned after close(): let go
            self._late.add(task)
            task.add_done_callback(self._late.discard)
        elif not self._hand_over(held):
            self._idle.append(held)

    async def _drop(self, held: tuple[AsyncConnection, Any, float]) -> None:
        self._open -= 1
        try:
            await held[0].close()  # back to SQLAlchemy's pool, which checks it at checkout
        finally:
            self._hand_over(None)

    async def close(self) -> None:
        """Give every idle connection back to SQLAlchemy's pool (before engine.dispose)."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn, _, _ in idle:
            self._open -= 1
            await conn.close()


_driver_connections: weakref.WeakKeyDictionary[AsyncEngine, DriverConnections] = (
    weakref.WeakKeyDictionary()
)


def open_driver_connections(engine: AsyncEngine, size: int = 10) -> DriverConnections:
    """Lend asyncpg connections of this engine to single statements (PostgreSQL only)."""
    found = _driver_connections[engine] = DriverConnections(engine, size)
    return found


async def close_driver_connections(engine: AsyncEngine) -> None:
    found = _driver_connections.pop(engine, None)
    if found is not None:
        await found.close()


@asynccontextmanager
async def single_statement(engine: AsyncEngine) -> AsyncIterator[Any]:
    """An asyncpg connection for one autocommitted statement: lent if the app opened a
    DriverConnections for the engine, else checked out of SQLAlchemy's pool."""
    lender = _driver_connections.get(engine)
    if lender is not None:
        async with lender.connection() as db:
            yield db
        return
    async with engine.connect() as conn:
        yield await driver_connection(conn)


# SQLite has one writer at a time. Writers that queue on an asyncio lock are served in order;
# writers left to SQLite's busy handler poll with growing sleeps, which made p99 seconds long.
_sqlite_writers: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Lock] = weakref.WeakKeyDictionary()


T = TypeVar("T")
Job = Callable[[AsyncConnection], Awaitable[T]]
# A job run on SQLite's own thread with the sqlite3 connection: no hop per statement.
SyncJob = Callable[[sqlite3.Connection], T]


class GroupCommit:
    """SQLite group commit: concurrent writers of one process share one transaction and fsync.

    Each job runs in a savepoint of the batch's transaction, so a job that raises (a constraint,
    a lost idempotency race) is rolled back alone and gets its own exception; the others
    commit. A job's caller is answered only after the COMMIT that holds its rows (synchronous
    stays FULL). Writers arriving while a batch runs join it, up to MAX_BATCH.

    A job is either async (run(job), statements through SQLAlchemy, one hop to the driver's
    thread each) or sync (run_sync(job), plain sqlite3 calls): consecutive sync jobs run in
    one hop to that thread, savepoints included, and a batch of sync jobs only runs BEGIN and
    COMMIT in that same hop too.
    """

    MAX_BATCH = 64

    def __init__(self, engine: AsyncEngine, lock: asyncio.Lock) -> None:
        self.engine = engine
        self.lock = lock
        self._pending: list[tuple[Job[Any] | SyncJob[Any], bool, asyncio.Future[Any]]] = []
        self._leader: asyncio.Task[None] | None = None
        self.commits = 0  # batches committed (tests and metrics read the sharing from it)
        self.jobs = 0

    async def run(self, job: Job[T]) -> T:
        """Run job(conn) in the next shared transaction; its result once that has committed."""
        result: T = await self._enqueue(job, False)
        return result

    async def run_sync(self, job: SyncJob[T]) -> T:
        """Run job(sqlite3 connection) on the driver's thread in the next shared transaction."""
        result: T = await self._enqueue(job, True)
        return result

    async def _enqueue(self, job: Any, sync: bool) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((job, sync, future))
        if self._leader is None:
            self._leader = asyncio.create_task(self._lead())
        return await future

    async def _lead(self) -> None:
        try:
            while self._pending:
                async with self.lock:
                    await self._batch()
        except BaseException as exc:  # cancelled at shutdown: nobody is left waiting forever
            for _, _, future in self._pending:
                _settle(future, False, exc)
            self._pending.clear()
            raise
        finally:
            self._leader = None

    async def _batch(self) -> None:
        if all(sync for _, sync, _ in self._pending[: self.MAX_BATCH]):
            await self._sync_batch()
            return
        done: list[tuple[asyncio.Future[Any], bool, Any]] = []
        current: list[asyncio.Future[Any]] = []
        try:
            async with self.engine.connect() as conn:
                # Explicit: the driver would otherwise start the transaction at the first
                # INSERT, after the first SAVEPOINT, whose RELEASE would then commit alone.
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
                while self._pending and len(done) < self.MAX_BATCH:
                    if self._pending[0][1]:
                        jobs: list[SyncJob[Any]] = []
                        while (
                            self._pending
                            and self._pending[0][1]
                            and len(done) + len(jobs) < self.MAX_BATCH
                        ):
                            job, _, future = self._pending.pop(0)
                            jobs.append(job)  # type: ignore[arg-type]  # sync: flagged True
                            current.append(future)
                        outcomes = await on_sqlite_thread(conn, _run_sync_jobs, jobs)
                        done.extend(
                            (f, ok, v) for f, (ok, v) in zip(current, outcomes, strict=True)
                        )
                        current = []
                        continue
                    job, _, future = self._pending.pop(0)
                    current = [future]
                    # Never released: the batch's COMMIT releases them all, one statement
                    # (one hop to the driver's thread) less per job. ROLLBACK TO names the
                    # newest savepoint called "job", this job's own.
                    await conn.exec_driver_sql("SAVEPOINT job")
                    try:
                        value = await job(conn)  # type: ignore[arg-type]
                    except Exception as exc:
                        await conn.exec_driver_sql("ROLLBACK TO job")
                        done.append((future, False, exc))
                    else:
                        done.append((future, True, value))
                    current = []
                try:
                    await conn.commit()
                except Exception:
                    # SQLite keeps a transaction whose COMMIT failed (a deferred constraint)
                    # open: end it here, or the pooled connection's next user would commit it.
                    await conn.rollback()
                    raise
        except BaseException as exc:
            # BEGIN, a savepoint or COMMIT failed: nothing of this batch is stored.
            failed = exc if isinstance(exc, Exception) else RuntimeError("write batch cancelled")
            for future in current:
                _settle(future, False, failed)
            for future, ok, value in done:
                _settle(future, False, failed if ok else value)
            if not isinstance(exc, Exception):
                raise
            return
        self.commits += 1
        self.jobs += len(done)
        for future, ok, value in done:
            _settle(future, ok, value)

    async def _sync_batch(self) -> None:
        """A batch of sync jobs only: BEGIN, the jobs and COMMIT in one hop to the thread."""
        batch = self._pending[: self.MAX_BATCH]
        del self._pending[: self.MAX_BATCH]
        jobs: list[SyncJob[Any]] = [job for job, _, _ in batch]  # type: ignore[misc]
        try:
            async with self.engine.connect() as conn:
                outcomes = await on_sqlite_thread(conn, _run_sync_batch, jobs)
        except BaseException as exc:
            # BEGIN or COMMIT failed: nothing of this batch is stored.
            failed = exc if isinstance(exc, Exception) else RuntimeError("write batch cancelled")
            for _, _, future in batch:
                _settle(future, False, failed)
            if not isinstance(exc, Exception):
                raise
            return
        self.commits += 1
        self.jobs += len(batch)
        for (_, _, future), (ok, value) in zip(batch, outcomes, strict=True):
            _settle(future, ok, value)


def _run_sync_batch(db: sqlite3.Connection, jobs: list[SyncJob[Any]]) -> list[tuple[bool, Any]]:
    """On the driver's thread: one transaction around the jobs, committed before returning."""
    db.execute("BEGIN IMMEDIATE")
    try:
        outcomes = _run_sync_jobs(db, jobs)
        db.commit()
    except BaseException:
        # Ended here either way: the pooled connection's next user must not inherit it.
        db.rollback()
        raise
    return outcomes


def _run_sync_jobs(db: sqlite3.Connection, jobs: list[SyncJob[Any]]) -> list[tuple[bool, Any]]:
    """On the driver's thread: each job in a savepoint of its own, rolled back if it raises."""
    outcomes: list[tuple[bool, Any]] = []
    for job in jobs:
        db.execute("SAVEPOINT job")
        try:
            outcomes.append((True, job(db)))
        except Exception as exc:
            db.execute("ROLLBACK TO job")
            outcomes.append((False, exc))
    return outcomes


async def on_sqlite_thread(conn: AsyncConnection, fn: Callable[..., T], *args: Any) -> T:
    """Call fn(sqlite3 connection, *args) on aiosqlite's thread, in one hop."""
    aio = await driver_connection(conn)
    # aiosqlite runs every call of a connection on that connection's one thread, in order;
    # _execute is how its own methods get there (there is no public spelling).
    result: T = await aio._execute(fn, aio._conn, *args)
    return result


# Read jobs on SQLite's threads, at most this many at once per engine. Each pooled connection
# has its thread, and sqlite3 takes the GIL back for every row it steps: 16 concurrent page
# reads on 16 threads spent most of their CPU handing the GIL round (a page of 50: 447 req/s,
# 2.8 ms of CPU each); one at a time, 1,026 req/s at 1.0 ms (2, 904 at 1.2 ms; measured on 2
# cores with 20,000 rows).
SQLITE_READERS = 1
_sqlite_readers: weakref.WeakKeyDictionary[AsyncEngine, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


async def read_on_sqlite_thread(conn: AsyncConnection, fn: Callable[..., T], *args: Any) -> T:
    """on_sqlite_thread for a read, waiting its turn among the engine's SQLITE_READERS."""
    turn = _sqlite_readers.get(conn.engine)
    if turn is None:
        turn = _sqlite_readers[conn.engine] = asyncio.Semaphore(SQLITE_READERS)
    async with turn:
        return await on_sqlite_thread(conn, fn, *args)


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():  # the waiter was cancelled; a committed row stays committed all the same
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


_group_commits: weakref.WeakKeyDictionary[AsyncEngine, GroupCommit] = weakref.WeakKeyDictionary()


def group_commit(engine: AsyncEngine) -> GroupCommit:
    """The SQLite engine's group committer (one per engine, sharing its writer lock)."""
    found = _group_commits.get(engine)
    if found is None:
        lock = _sqlite_writers.setdefault(engine, asyncio.Lock())
        found = _group_commits[engine] = GroupCommit(engine, lock)
    return found


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """Begin a transaction that will write; on SQLite, one per process at a time."""
    if engine.dialect.name != "sqlite":
        async with engine.begin() as conn:
            yield conn
        return
    lock = _sqlite_writers.setdefault(engine, asyncio.Lock())
    async with lock, engine.begin() as conn:
        yield conn


# The newest migration's revision (tests/streamcore_server/test_storage.py checks it against
# alembic's head): a schema already there is recognised without importing alembic, which keeps
# ~11 MB resident in every server process that imported it.
HEAD_REVISION = "0005"


def _at_head(connection: Connection) -> bool:
    if not inspect(connection).has_table("alembic_version"):
        return False
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows == [HEAD_REVISION]


def _upgrade(connection: Connection) -> None:
    if _at_head(connection):
        return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", "streamcore_server:migrations")
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest migration."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


async def ping(engine: AsyncEngine) -> None:
    """Raise unless the database answers a trivial query."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


# A standby that is down or hung must cost a read a refused or short-timed-out connect, or a
# bounded wait, never a hang: the read then goes to the primary (streamcore_server/replicas.py).
REPLICA_CONNECT_TIMEOUT_S = 1.0
REPLICA_READ_TIMEOUT_S = 5.0


def create_replica_engine(replica_url: str) -> AsyncEngine:
    """Create the engine of a PostgreSQL hot standby that serves reads.

    No pre-ping: a dead pooled connection fails the read, which the router retries on the
    primary, and that failure invalidates the pool, so a ping per checkout would only add a
    round trip to every read.
    """
    return create_async_engine(
        make_url(replica_url),
        pool_size=10,
        max_overflow=10,
        hide_parameters=True,
        connect_args={"timeout": REPLICA_CONNECT_TIMEOUT_S},
    )


def refused_whole(engine: AsyncEngine) -> tuple[type[BaseException], ...]:
    """The driver's errors that mean the server refused a statement: it committed nothing."""
    if engine.dialect.name != "postgresql":
        return ()
    import asyncpg  # type: ignore[import-untyped]  # only where PostgreSQL is used (memory)

    return (asyncpg.PostgresError,)


_Waiter = tuple[Any, "asyncio.Future[Any]"]  # a write's arguments and its caller's answer


class Combiner:
    """Statements that take turns anyway (one property's row, locked until COMMIT has flushed
    the WAL; or one process's claims) go as one: those arriving while one is in flight queue.

    One task per busy key runs the batches in arrival order (up to MAX_BATCH); a caller is
    answered once its batch's statement has returned, i.e. committed. run(batch) must be one
    atomic statement: it answers one result per item, in order (AGAIN puts an item back for
    the next batch), or raises. A batch that raises one of `refused` (the statement was refused
    whole, so nothing committed) is run again one item at a time, so an item the database
    refuses fails only its own caller; any other failure (a connection lost, which may be after
    the commit) fails the batch's callers, as a lone write's would.
    """

    MAX_BATCH = 64
    AGAIN: Final = object()  # a result meaning "not in this statement: queue me for the next"

    def __init__(self, refused: tuple[type[BaseException], ...] = ()) -> None:
        self.refused = refused
        self._queues: dict[Any, list[_Waiter]] = {}
        self._running: dict[Any, asyncio.Task[None]] = {}
        self.statements = 0  # tests read the sharing from these
        self.writes = 0

    async def write(self, key: Any, args: Any, run: Callable[[list[Any]], Awaitable[Any]]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, []).append((args, future))
        if key not in self._running:
            self._running[key] = asyncio.create_task(self._drain(key, run))
        return await future

    async def _drain(self, key: Any, run: Callable[[list[Any]], Awaitable[Any]]) -> None:
        batch: list[_Waiter] = []
        try:
            while queued := self._queues.pop(key, None):
                batch, rest = queued[: self.MAX_BATCH], queued[self.MAX_BATCH :]
                if rest:
                    self._queues[key] = rest + self._queues.get(key, [])
                again = await self._run(batch, run)
                if again:  # first in line for the next statement
                    self._queues[key] = again + self._queues.get(key, [])
                batch = []
        except BaseException as exc:  # cancelled, or a broken run: no waiter is left hanging
            for _, future in batch + self._queues.pop(key, []):
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            if not isinstance(exc, Exception):
                raise
            log.exception("a combined statement failed outside its run")
        finally:
            del self._running[key]

    async def _run(
        self, batch: list[_Waiter], run: Callable[[list[Any]], Awaitable[Any]]
    ) -> list[_Waiter]:
        """Run one batch and answer its waiters; return the items to queue again."""
        self.statements += 1
        self.writes += len(batch)
        try:
            results = await run([args for args, _ in batch])
        except Exception as exc:
            if len(batch) == 1 or not isinstance(exc, self.refused):
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                return []
            again = []
            for item in batch:  # nothing was committed: each alone, to find whose it was
                again += await self._run([item], run)
            return again
        again = []
        for item, result in zip(batch, results, strict=True):
            if result is self.AGAIN:
                again.append(item)
            elif not item[1].done():  # else the waiter was cancelled; its write stands
                item[1].set_result(result)
        return again
