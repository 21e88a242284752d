"""SQLite statements through SQLAlchemy take one hop to the driver's thread, and mean the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.sqlite.aiosqlite import AsyncAdapt_aiosqlite_connection
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from streamcore_server import sqlite_cursor, storage

things = sa.Table(
    "things",
    sa.MetaData(),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String, nullable=False, unique=True),
    sa.Column("at", storage.UTCDateTime, nullable=True),
)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = storage.create_engine(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    async with engine.begin() as conn:
        await conn.run_sync(things.metadata.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every job aiosqlite queues for its thread, by the function it runs."""
    seen: list[Any] = []
    queue = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(fn)
        return await queue(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return seen


async def test_the_engines_connections_hand_out_one_hop_cursors(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        adapted = raw.dbapi_connection
        assert isinstance(adapted, AsyncAdapt_aiosqlite_connection)  # what adopt() relies on
        assert type(adapted) is sqlite_cursor.OneHopConnection
        assert type(adapted.cursor()) is sqlite_cursor.OneHopCursor


async def test_a_select_is_one_hop_where_it_was_four(engine: AsyncEngine, hops: list[Any]) -> None:
    async with engine.connect() as conn:
        await conn.execute(sa.select(sa.literal(1)))  # the pool's first checkout, settled
        hops.clear()
        rows = (await conn.execute(sa.select(sa.literal(1), sa.literal("a")))).all()
    assert [tuple(r) for r in rows] == [(1, "a")]
    assert hops[:1] == [sqlite_cursor._execute]
    assert hops.count(sqlite_cursor._execute) == 1
    # The rest is the connection's return to the pool (its reset), not the statement's.
    assert all(fn is not sqlite_cursor._execute for fn in hops[1:])


async def test_rows_rowcount_lastrowid_and_types_read_as_before(engine: AsyncEngine) -> None:
    import datetime as dt

    at = dt.datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=dt.UTC)
    async with engine.begin() as conn:
        inserted = await conn.execute(things.insert().values(name="a", at=at))
        assert inserted.inserted_primary_key == (1,)  # from the cursor's lastrowid
        await conn.execute(things.insert(), [{"name": "b"}, {"name": "c"}])  # executemany
        updated = await conn.execute(
            things.update().where(things.c.name.in_(["b", "c"])).values(at=at)
        )
        assert updated.rowcount == 2
        returned = (
            await conn.execute(things.insert().values(name="d").returning(things.c.id))
        ).scalar_one()
        assert returned == 4
    async with engine.connect() as conn:
        rows = (await conn.execute(sa.select(things).order_by(things.c.id))).all()
        assert [(r.id, r.name, r.at) for r in rows] == [
            (1, "a", at),
            (2, "b", at),
            (3, "c", at),
            (4, "d", None),
        ]
        assert rows[0].at.tzinfo is dt.UTC  # read back aware, as UTCDateTime promises
        result = await conn.execute(sa.select(things.c.name).order_by(things.c.id))
        assert result.fetchone() == ("a",)
        assert result.fetchmany(2) == [("b",), ("c",)]
        assert result.fetchall() == [("d",)]


async def test_driver_errors_arrive_as_sqlalchemys_and_the_connection_goes_on(
    engine: AsyncEngine,
) -> None:
    async with engine.connect() as conn:
        await conn.execute(things.insert().values(name="a"))
        with pytest.raises(IntegrityError):
            await conn.execute(things.insert().values(name="a"))
        await conn.rollback()
        with pytest.raises(OperationalError, match="no such table"):
            await conn.execute(sa.text("SELECT * FROM nowhere"))
        await conn.rollback()
        assert (await conn.execute(sa.select(sa.func.count()).select_from(things))).scalar() == 0
