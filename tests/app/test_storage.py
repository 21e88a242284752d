"""One schema for both dialects, created by migrations."""

from __future__ import annotations

import datetime as dt

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, select

from app import storage


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", "app:migrations")
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
