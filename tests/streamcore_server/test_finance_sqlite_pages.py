"""SQLite's one-job page read answers exactly what the same read through SQLAlchemy answers."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from streamcore_server import accounts, finance, storage
from streamcore_server.auth import Principal
from streamcore_server.edge import versions
from streamcore_server.finance import EXPENSES, ListQuery

UTC = dt.UTC
BASE = dt.datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


async def _seed(conn: AsyncConnection) -> tuple[Principal, int, int, int]:
    org = await accounts.create_org(conn, "Acme")
    other_org = await accounts.create_org(conn, "Other")
    home = await accounts.create_property(conn, org, "Home")
    shop = await accounts.create_property(conn, org, "Shop")
    theirs = await accounts.create_property(conn, other_org, "Theirs")
    user = await accounts.create_user(conn, org, "a@example.com", "correct horse battery")
    rows = []
    for n in range(23):
        # Days repeat (ties broken by id), some instants carry microseconds, two properties.
        when = BASE + dt.timedelta(days=n // 3, microseconds=(n % 2) * 250_000)
        rows.append(
            {
                "org_id": org,
                "property_id": home if n % 4 else shop,
                "category": f"c{n}",
                "amount_cents": 100 + n,
                "currency": "INR" if n % 5 else "USD",
                "description": "d" * (n % 3),
                "expense_date": when,
                "payment_mode": "cash",
                "created_at": when + dt.timedelta(hours=1),
                "created_by": user,
            }
        )
    rows.append({**rows[0], "org_id": other_org, "property_id": theirs})
    await conn.execute(insert(storage.expenses), rows)
    return Principal(user, org, "a@example.com"), home, shop, theirs


Seeded = tuple[AsyncEngine, Principal, int, int, int]


@pytest.fixture
async def seeded(sqlite_url: str) -> AsyncIterator[Seeded]:
    """A migrated SQLite database with _seed's rows: (engine, who, home, shop, theirs)."""
    engine = storage.create_engine(sqlite_url)
    try:
        await storage.migrate(engine)
        async with engine.begin() as conn:
            who, home, shop, theirs = await _seed(conn)
        yield engine, who, home, shop, theirs
    finally:
        await engine.dispose()


async def _all_pages(read: Any, query: dict[str, Any], limit: int) -> list[Any]:
    pages, cursor = [], None
    for _ in range(60):  # 24 rows: a read whose cursor never ends fails here, not hangs
        items, cursor = await read(ListQuery(**query, cursor=cursor), limit)
        pages.append((items, cursor))
        if cursor is None:
            return pages
    raise AssertionError(f"no last page after 60: {pages[-1]}")


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"property_id": "home"},
        {"property_id": "shop"},
        {"from": (BASE + dt.timedelta(days=2)).isoformat()},
        {"to": (BASE + dt.timedelta(days=5, microseconds=250_000)).isoformat()},
        {
            "property_id": "home",
            "from": (BASE + dt.timedelta(days=1)).isoformat(),
            "to": (BASE + dt.timedelta(days=6)).isoformat(),
        },
    ],
)
async def test_every_page_and_cursor_match_the_sqlalchemy_read(
    seeded: Seeded, query: dict[str, Any]
) -> None:
    engine, who, home, shop, _ = seeded
    named = {"home": home, "shop": shop}
    query = {k: named.get(v, v) if k == "property_id" else v for k, v in query.items()}
    async with engine.connect() as conn:

        async def through_sqlalchemy(q: ListQuery, limit: int) -> Any:
            return await EXPENSES.page(conn, who, q, limit)

        async def in_one_job(q: ListQuery, limit: int) -> Any:
            first, page, last = await EXPENSES.page_on_sqlite(conn, who, q, limit, lambda _: False)
            expected = await versions.entries(conn, who.org_id, q.property_id)
            assert first == last == expected
            return page

        for limit in (1, 4, 50):
            expected = await _all_pages(through_sqlalchemy, query, limit)
            assert await _all_pages(in_one_job, query, limit) == expected
        assert sum(len(items) for items, _ in expected) > 0


async def test_another_orgs_property_and_an_unchanged_version_read_no_page(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, who, home, _, theirs = seeded
    pages: list[object] = []
    read_rows = EXPENSES.read_page_rows

    def counted(*args: Any) -> Any:
        pages.append(args)
        return read_rows(*args)

    monkeypatch.setattr(finance.EXPENSES, "read_page_rows", counted)
    async with engine.connect() as conn:
        seen: list[int] = []
        mine = ListQuery(property_id=home)
        version, page, again = await EXPENSES.page_on_sqlite(
            conn, who, mine, 5, lambda v: seen.append(v) or True
        )
        assert (page, again, pages) == (None, None, [])
        assert seen == [version] and version == await versions.entries(conn, who.org_id, home)
        absent = await EXPENSES.page_on_sqlite(
            conn, who, ListQuery(property_id=theirs), 5, lambda _: False
        )
        assert absent == (None, None, None) and pages == []


@pytest.mark.parametrize("readers", [1, 4])
async def test_page_reads_take_turns_on_sqlites_threads(
    seeded: Seeded, monkeypatch: pytest.MonkeyPatch, readers: int
) -> None:
    import threading

    monkeypatch.setattr(storage, "SQLITE_READERS", readers)  # before the engine's first read
    engine, who, home, _, _ = seeded
    lock, active, most = threading.Lock(), [0], [0]
    overlapped = threading.Event()
    read_rows = EXPENSES.read_page_rows

    def held(*args: Any) -> Any:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
            if active[0] > 1:
                overlapped.set()
        # Wait for a second read to run beside this one: with room for it, it comes (however
        # busy the machine); one at a time, it never does, and each waits a short while for it.
        overlapped.wait(10.0 if readers > 1 else 0.05)
        with lock:
            active[0] -= 1
        return read_rows(*args)

    monkeypatch.setattr(finance.EXPENSES, "read_page_rows", held)

    async def read() -> Any:
        async with engine.connect() as conn:
            q = ListQuery(property_id=home)
            return await EXPENSES.page_on_sqlite(conn, who, q, 5, lambda _: False)

    pages = await asyncio.gather(*(read() for _ in range(8)))
    assert all(len(page[1][0]) == 5 for page in pages)
    # One at a time as configured; with room for four, the held reads did overlap.
    assert most[0] == 1 if readers == 1 else most[0] > 1
