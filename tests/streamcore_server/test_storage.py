"""One schema for both dialects, created by migrations."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import closing
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from waiting import eventually_async

from streamcore_server import storage


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", "streamcore_server:migrations")
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


async def test_migrations_build_exactly_the_declared_schema(database_url: str) -> None:
    engine = storage.create_engine(database_url)
    try:
        await storage.migrate(engine)
        await storage.migrate(engine)  # idempotent: every start runs it
        async with engine.connect() as conn:
            diff = await conn.run_sync(
                lambda c: compare_metadata(MigrationContext.configure(c), storage.metadata)
            )
            version = (await conn.exec_driver_sql("SELECT version_num FROM alembic_version")).all()
        assert diff == []
        assert version == [(_head(),)]
    finally:
        await engine.dispose()


def test_head_revision_is_alembics_head() -> None:
    assert _head() == storage.HEAD_REVISION


def test_a_current_schema_is_migrated_without_importing_alembic(tmp_path: Any) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/db.sqlite"
    script = (
        "import asyncio, sys\n"
        "from streamcore_server import storage\n"
        "async def main():\n"
        f"    engine = storage.create_engine({url!r})\n"
        "    await storage.migrate(engine)\n"
        "    await engine.dispose()\n"
        "asyncio.run(main())\n"
        "print('alembic' in sys.modules)\n"
    )
    run = [sys.executable, "-c", script]
    first = subprocess.run(run, capture_output=True, text=True, check=True).stdout.split()
    again = subprocess.run(run, capture_output=True, text=True, check=True).stdout.split()
    assert (first, again) == (["True"], ["False"])


async def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str) -> None:
    engine = storage.create_engine(sqlite_url)
    try:
        await storage.migrate(engine)
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
            assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    finally:
        await engine.dispose()


async def test_instants_round_trip_as_aware_utc(database_url: str) -> None:
    engine = storage.create_engine(database_url)
    try:
        await storage.migrate(engine)
        india = dt.timezone(dt.timedelta(hours=5, minutes=30))
        when = dt.datetime(2025, 12, 13, 15, 30, 0, 123456, tzinfo=india)
        async with engine.begin() as conn:
            await conn.execute(insert(storage.orgs).values(name="Tz", created_at=when))
            stored = await conn.scalar(select(storage.orgs.c.created_at))
            await conn.rollback()
        assert stored == when
        assert stored.utcoffset() == dt.timedelta(0)
    finally:
        await engine.dispose()


async def test_a_sqlite_connection_goes_back_to_the_pool_rolled_back_only_if_open(
    sqlite_url: str,
) -> None:
    """The pool's reset costs a hop to the driver's thread: taken only for an open transaction."""
    engine = storage.create_engine(sqlite_url)
    hops: list[str] = []

    def count_hops(aio: Any) -> None:
        real = aio._execute

        async def counted(fn: Any, *args: Any, **kwargs: Any) -> Any:
            hops.append(getattr(fn, "__name__", repr(fn)))
            return await real(fn, *args, **kwargs)

        aio._execute = counted

    try:
        async with engine.connect() as conn:
            aio = await storage.driver_connection(conn)
            count_hops(aio)
            await aio.execute("CREATE TABLE t (x INTEGER)")
            await aio.commit()
            hops.clear()
        assert hops == []  # committed: nothing to roll back, no hop
        async with engine.connect() as conn:
            aio = await storage.driver_connection(conn)
            await aio.execute("BEGIN IMMEDIATE")
            await aio.execute("INSERT INTO t VALUES (1)")
            hops.clear()
        assert hops == ["rollback"]  # left open: rolled back on the way in
        async with engine.connect() as conn:
            aio = await storage.driver_connection(conn)
            rows = await (await aio.execute("SELECT count(*) FROM t")).fetchall()
            assert rows == [(0,)]
            assert not aio.in_transaction
    finally:
        await engine.dispose()


async def test_sqlite_group_commit_shares_commits_and_isolates_a_failing_writer(
    sqlite_url: str,
) -> None:
    """Concurrent writers share COMMITs; one that fails leaves nothing and fails nobody else."""
    from sqlalchemy.engine import make_url

    engine = storage.create_engine(sqlite_url)
    path = make_url(sqlite_url).database
    try:
        await storage.migrate(engine)
        commits = storage.group_commit(engine)
        seen_on_return: list[bool] = []

        def visible(name: str) -> bool:
            # Another connection, which sees only committed rows.
            with closing(sqlite3.connect(path)) as other:
                query = "SELECT 1 FROM orgs WHERE name = ?"
                return other.execute(query, (name,)).fetchone() is not None

        async def write(i: int) -> int:
            async def job(conn: Any) -> int:
                result = await conn.execute(
                    insert(storage.orgs)
                    .values(name=f"org {i}", created_at=storage.utcnow())
                    .returning(storage.orgs.c.id)
                )
                if i == 7:  # wrote its row, then failed: the row must go with it
                    raise LookupError("writer 7 fails")
                return int(result.scalar_one())

            org_id = await commits.run(job)
            seen_on_return.append(visible(f"org {i}"))  # answered only after its COMMIT
            return org_id

        outcomes = await asyncio.gather(*(write(i) for i in range(40)), return_exceptions=True)
        assert isinstance(outcomes[7], LookupError)
        assert all(isinstance(o, int) for i, o in enumerate(outcomes) if i != 7)
        assert seen_on_return == [True] * 39
        assert not visible("org 7")
        async with engine.connect() as conn:
            names = (await conn.execute(select(storage.orgs.c.name))).scalars().all()
        assert sorted(names) == sorted(f"org {i}" for i in range(40) if i != 7)
        assert commits.jobs == 40
        assert commits.commits < 40  # several writers per COMMIT (and per fsync)
        async with engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA synchronous")).scalar() == 2  # FULL
    finally:
        await engine.dispose()


async def test_sqlite_group_commit_fails_the_whole_batch_when_its_commit_fails(
    sqlite_url: str,
) -> None:
    """A COMMIT that fails answers every writer of its batch with the failure: none is stored."""
    engine = storage.create_engine(sqlite_url)
    try:
        await storage.migrate(engine)
        commits = storage.group_commit(engine)

        async def org(conn: Any) -> str:
            now = storage.utcnow()
            await conn.execute(insert(storage.orgs).values(name="not kept", created_at=now))
            return "ok"

        async def fails_at_commit(conn: Any) -> str:
            # A foreign key checked only at COMMIT (a savepoint's RELEASE does not check it).
            await conn.exec_driver_sql("PRAGMA defer_foreign_keys=ON")
            now = storage.utcnow()
            row = {"org_id": 999, "email": "x@example.com", "password_hash": "-", "created_at": now}
            await conn.execute(insert(storage.users).values(**row))
            return "ok"

        outcomes = await asyncio.gather(
            commits.run(fails_at_commit), commits.run(org), return_exceptions=True
        )
        assert all(isinstance(o, IntegrityError) for o in outcomes), outcomes
        async with engine.connect() as conn:
            assert (await conn.execute(select(storage.orgs.c.name))).all() == []
        assert await commits.run(org) == "ok"  # the next batch commits
        async with engine.connect() as conn:
            assert (await conn.execute(select(storage.orgs.c.name))).scalars().all() == ["not kept"]
    finally:
        await engine.dispose()


@pytest.mark.postgres
async def test_a_connection_the_server_closed_is_replaced_at_checkout(pg_database: str) -> None:
    """No pre-ping: a pooled connection whose backend was terminated is swapped, not used."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = storage.create_engine(pg_database)
    admin = create_async_engine(pg_database, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            victim = (await conn.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one()
            pooled = await storage.driver_connection(conn)
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f"SELECT pg_terminate_backend({int(victim)})")
        # The claim is about a connection asyncpg has seen closed. Between the backend's exit
        # and the event loop reading its FATAL message and EOF, asyncpg is mid-error and not
        # yet closed; polling pg_stat_activity alone let the checkout land in that gap.
        await eventually_async(lambda: _closed(pooled), "asyncpg to see the close")
        async with engine.connect() as conn:  # the hot path's checkout, through asyncpg itself
            db = await storage.driver_connection(conn)
            pid = await db.fetchval("SELECT pg_backend_pid()")
        assert pid != victim
        assert engine.sync_engine.pool.checkedout() == 0
    finally:
        await engine.dispose()
        await admin.dispose()


@pytest.mark.postgres
async def test_lent_driver_connections_are_bounded_and_a_closed_one_is_replaced(
    pg_database: str,
) -> None:
    """The single statements' lender keeps at most its size open, and never lends a dead one."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = storage.create_engine(pg_database)
    admin = create_async_engine(pg_database, isolation_level="AUTOCOMMIT")
    lender = storage.open_driver_connections(engine, size=2)
    try:
        active = 0
        most = 0

        async def statement() -> int:
            nonlocal active, most
            async with storage.single_statement(engine) as db:
                active += 1
                most = max(most, active)
                pid = int(await db.fetchval("SELECT pg_backend_pid() FROM pg_sleep(0.01)"))
                active -= 1
                return pid

        pids = await asyncio.gather(*(statement() for _ in range(12)))
        assert most == 2 and len(set(pids)) == 2
        assert engine.sync_engine.pool.checkedout() == 2  # kept, not checked out per statement

        async with storage.single_statement(engine) as db:
            victim = int(await db.fetchval("SELECT pg_backend_pid()"))
            lent = db
        async with admin.connect() as conn:
            await conn.exec_driver_sql(f"SELECT pg_terminate_backend({victim})")
        await eventually_async(lambda: _closed(lent), "asyncpg to see the close")
        assert victim not in await asyncio.gather(*(statement() for _ in range(4)))

        async def fails() -> None:
            async with storage.single_statement(engine) as db:
                await db.fetchval("SELECT 1 / 0")

        with pytest.raises(Exception, match="division by zero"):
            await fails()
        assert await statement() > 0  # the failed statement's connection was given back
        await storage.close_driver_connections(engine)
        assert lender._open == 0 and engine.sync_engine.pool.checkedout() == 0
    finally:
        await storage.close_driver_connections(engine)
        await engine.dispose()
        await admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_database_url(request: pytest.FixtureRequest, sqlite_url: str) -> Iterator[str]:
    """An empty database, not even migrated (the session's PostgreSQL one is at head)."""
    if request.param == "sqlite":
        yield sqlite_url
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    admin_url = make_url(request.getfixturevalue("postgres_url"))
    name = f"streamcore_fresh_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.exec_driver_sql(sql)
        await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


def test_migration_0004_copies_the_running_totals_onto_their_property(
    fresh_database_url: str,
) -> None:
    """A database written before 0004 gets each property's snapshot from property_totals."""
    from alembic import command
    from alembic.config import Config

    def upgrade_to(revision: str) -> Any:
        def run(connection: Any) -> None:
            config = Config()
            config.set_main_option("script_location", "streamcore_server:migrations")
            config.attributes["connection"] = connection
            command.upgrade(config, revision)

        return run

    async def run() -> list[Any]:
        engine = storage.create_engine(fresh_database_url)
        try:
            async with engine.begin() as conn:
                await conn.run_sync(upgrade_to("0003"))
                for sql in (
                    "INSERT INTO orgs (id, name, created_at) VALUES (1, 'Old', '2025-01-01')",
                    "INSERT INTO properties (id, org_id, name, created_at, totals_version) "
                    "VALUES (1, 1, 'P1', '2025-01-01', 2), (2, 1, 'P2', '2025-01-01', 0)",
                    "INSERT INTO property_totals VALUES (1, 'INR', 500, 20), (1, 'USD', 0, 7)",
                ):
                    await conn.exec_driver_sql(sql)
            async with engine.begin() as conn:
                await conn.run_sync(upgrade_to("head"))
            p = storage.properties
            async with engine.connect() as conn:
                return list((await conn.execute(select(p.c.id, p.c.totals).order_by(p.c.id))).all())
        finally:
            await engine.dispose()

    rows = asyncio.run(run())
    assert [tuple(r) for r in rows] == [(1, {"INR": [500, 20], "USD": [0, 7]}), (2, {})]


async def _closed(driver_connection: Any) -> bool:
    return bool(driver_connection.is_closed())
