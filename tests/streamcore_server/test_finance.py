"""The finance API on SQLite and PostgreSQL: happy paths, org isolation, every bad input."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import re
from typing import Any

import orjson
import pytest
from app_support import SEED_EXPENSE, Api, Tenant, expense, revenue
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select

from streamcore_server.errors import InvalidCursor
from streamcore_server.events import Event
from streamcore_server.finance import CURSOR_PATTERN, decode_cursor, encode_cursor
from streamcore_server.logs import JsonFormatter


class RecordingBus:
    """The event bus's two methods, keeping what the writes published."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)

    def publish_many(self, events: Any) -> None:
        self.events.extend(events)


def post(api: Api, kind: str, tenant: Tenant, body: dict[str, Any]) -> Any:
    return api.client.post(f"/v1/finance/{kind}", json=body, headers=tenant.auth)


def fields(response: Any) -> dict[str, str]:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_failed"
    return {d["field"]: d["message"] for d in error["details"]}


def test_create_expense_returns_the_stored_record_and_publishes(api: Api) -> None:
    a = api.tenant("Acme")
    response = post(api, "expenses", a, expense(a, expenseDate="2025-12-13T15:30:00+05:30"))
    assert response.status_code == 201, response.text
    record = response.json()
    assert isinstance(record["id"], int)
    assert record["createdBy"] == a.user_id
    assert record["expenseDate"] == "2025-12-13T10:00:00Z"  # the same instant, in UTC
    assert record["createdAt"].endswith("Z")
    for key in ("propertyId", "category", "amountCents", "currency", "description", "paymentMode"):
        assert record[key] == expense(a)[key]

    created, totals = api.events
    assert (created.org_id, created.conflatable, created.key) == (a.org_id, False, None)
    assert orjson.loads(created.payload) == {
        "type": "expense.created",
        "orgId": a.org_id,
        "data": record,
    }
    assert totals.conflatable and totals.key == f"property:{a.property_id}:totals"
    body = orjson.loads(totals.payload)
    assert body["type"] == "property.totals"
    assert body["data"] == {
        "propertyId": a.property_id,
        "version": 1,
        "totals": [{"currency": "INR", "expensesCents": 50000, "revenuesCents": 0}],
    }
    assert totals.version == 1


def test_running_totals_follow_every_write_per_currency(api: Api) -> None:
    a = api.tenant("Acme")
    post(api, "expenses", a, expense(a, amountCents=100))
    post(api, "revenues", a, revenue(a, amountCents=700))
    post(api, "expenses", a, expense(a, amountCents=5, currency="USD"))
    post(api, "expenses", a, expense(a, amountCents=20))
    last = orjson.loads(api.events[-1].payload)["data"]["totals"]
    assert last == [
        {"currency": "INR", "expensesCents": 120, "revenuesCents": 700},
        {"currency": "USD", "expensesCents": 5, "revenuesCents": 0},
    ]
    kinds = [orjson.loads(e.payload)["type"] for e in api.events]
    assert kinds.count("expense.created") == 3 and kinds.count("revenue.created") == 1


def test_concurrent_writes_take_turns_and_their_versions_order_the_snapshots(
    database_url: str,
) -> None:
    """Each snapshot holds exactly the writes before it: version v of n writes of 7 is 7·v."""
    from streamcore_server import accounts, storage
    from streamcore_server.auth import Principal
    from streamcore_server.finance import EXPENSES, ExpenseIn

    bus = RecordingBus()
    published = bus.events

    async def run() -> int:
        engine = storage.create_engine(database_url)
        try:
            await storage.migrate(engine)
            async with engine.begin() as conn:
                org = await accounts.create_org(conn, "Acme")
                user = await accounts.create_user(conn, org, "a@example.com", "pw-long-enough")
                prop = await accounts.create_property(conn, org, "Main")
            who = Principal(user, org, "a@example.com")
            body = ExpenseIn.model_validate({**SEED_EXPENSE, "propertyId": prop, "amountCents": 7})
            await asyncio.gather(*(EXPENSES.create(engine, bus, who, body) for _ in range(20)))
            return prop
        finally:
            await engine.dispose()

    prop = asyncio.run(run())
    states = [e for e in published if e.conflatable]
    assert sorted(e.version for e in states) == list(range(1, 21))  # type: ignore[type-var]
    for e in states:
        data = orjson.loads(e.payload)["data"]
        assert data["propertyId"] == prop and data["version"] == e.version
        assert data["totals"][0]["expensesCents"] == 7 * data["version"]


def test_a_failing_write_among_concurrent_ones_fails_alone(database_url: str) -> None:
    """A write to another org's property answers 404 and leaves the writes beside it whole."""
    from sqlalchemy import select

    from streamcore_server import accounts, storage
    from streamcore_server.auth import Principal
    from streamcore_server.errors import NotFound
    from streamcore_server.finance import EXPENSES, REVENUES, ExpenseIn, RevenueIn

    bus = RecordingBus()
    published = bus.events

    async def run() -> tuple[list[Any], list[Any]]:
        engine = storage.create_engine(database_url)
        try:
            await storage.migrate(engine)
            async with engine.begin() as conn:
                org = await accounts.create_org(conn, "Acme")
                other = await accounts.create_org(conn, "Other")
                user = await accounts.create_user(conn, org, "a@example.com", "pw-long-enough")
                prop = await accounts.create_property(conn, org, "Main")
                foreign = await accounts.create_property(conn, other, "Theirs")
            who = Principal(user, org, "a@example.com")
            mine = {**SEED_EXPENSE, "propertyId": prop, "amountCents": 7}
            bodies = [dict(mine) for _ in range(12)]
            bodies[5] = {**mine, "propertyId": foreign}
            writes = [
                EXPENSES.create(engine, bus, who, ExpenseIn.model_validate(b)) for b in bodies
            ]
            revenue = {k: v for k, v in mine.items() if k != "expenseDate"}
            revenue |= {"currency": "USD", "revenueDate": mine["expenseDate"], "amountCents": 3}
            writes.append(REVENUES.create(engine, bus, who, RevenueIn.model_validate(revenue)))
            outcomes = await asyncio.gather(*writes, return_exceptions=True)
            async with engine.connect() as conn:
                stored = (
                    (await conn.execute(select(storage.expenses.c.property_id))).scalars().all()
                )
                totals = (await conn.execute(select(storage.property_totals))).all()
                snapshot = await conn.scalar(
                    select(storage.properties.c.totals).where(storage.properties.c.id == prop)
                )
            assert snapshot == {"INR": [77, 0], "USD": [0, 3]}  # the row's copy agrees
            return outcomes, [stored, totals, prop]
        finally:
            await engine.dispose()

    outcomes, (stored, totals, prop) = asyncio.run(run())
    assert isinstance(outcomes[5], NotFound)
    ok = [o for i, o in enumerate(outcomes) if i != 5]
    assert all(isinstance(o, tuple) for o in ok), ok
    assert sorted(o[1].version for o in ok) == list(range(1, 13))
    assert stored == [prop] * 11
    assert sorted((t.currency, t.expenses_cents, t.revenues_cents) for t in totals) == [
        ("INR", 77, 0),
        ("USD", 0, 3),
    ]
    states = [orjson.loads(e.payload)["data"] for e in published if e.conflatable]
    last = max(states, key=lambda d: d["version"])
    assert last["totals"] == [
        {"currency": "INR", "expensesCents": 77, "revenuesCents": 0},
        {"currency": "USD", "expensesCents": 0, "revenuesCents": 3},
    ]


@pytest.mark.postgres
def test_queued_writes_of_one_property_share_a_statement_and_keep_exact_snapshots(
    pg_database: str,
) -> None:
    """PostgreSQL: writers queued behind one in flight go as one statement; every version's
    snapshot is still exactly the writes before it, a currency first seen mid-batch included."""
    from streamcore_server import accounts, storage
    from streamcore_server.auth import Principal
    from streamcore_server.finance import EXPENSES, ExpenseIn, _combiner

    bus = RecordingBus()
    published = bus.events

    amounts = [(i % 3 + 1, "USD" if i % 4 == 3 else "INR") for i in range(40)]

    async def run() -> tuple[list[Any], int, int, Any]:
        engine = storage.create_engine(pg_database)
        try:
            await storage.migrate(engine)
            async with engine.begin() as conn:
                org = await accounts.create_org(conn, "Batch")
                user = await accounts.create_user(conn, org, "b@example.com", "pw-long-enough")
                prop = await accounts.create_property(conn, org, "Main")
            who = Principal(user, org, "b@example.com")
            bodies = [
                ExpenseIn.model_validate(
                    {**SEED_EXPENSE, "propertyId": prop, "amountCents": a, "currency": c}
                )
                for a, c in amounts
            ]
            results = await asyncio.gather(*(EXPENSES.create(engine, bus, who, b) for b in bodies))
            combiner = _combiner(engine)
            async with engine.connect() as conn:
                ids = (
                    (
                        await conn.execute(
                            select(storage.expenses.c.id).where(
                                storage.expenses.c.property_id == prop
                            )
                        )
                    )
                    .scalars()
                    .all()
                )
            return results, combiner.statements, combiner.writes, sorted(ids)
        finally:
            await engine.dispose()

    results, statements, writes, ids = asyncio.run(run())
    assert writes == 40 and statements < 40  # several writers per statement
    assert sorted(r[0]["id"] for r in results) == ids  # each got its own entry's id
    by_version = {r[1].version: i for i, r in enumerate(results)}
    assert sorted(by_version) == list(range(1, 41))
    states = {
        d["version"]: d["totals"]
        for d in (orjson.loads(e.payload)["data"] for e in published if e.conflatable)
    }
    running: dict[str, int] = {}
    for version in range(1, 41):  # replay the writes in version order: each snapshot is exact
        amount, currency = amounts[by_version[version]]
        running[currency] = running.get(currency, 0) + amount
        assert states[version] == [
            {"currency": c, "expensesCents": running[c], "revenuesCents": 0}
            for c in sorted(running)
        ], version


@pytest.mark.postgres
def test_keyed_and_plain_writes_of_one_property_share_a_statement(
    pg_database: str, tmp_path: Any
) -> None:
    """PostgreSQL: keyed writes queue with plain ones; a batch writes each won record with its
    entry, writes nothing for a key whose record stands, and the snapshots stay exact."""
    from streamcore_server import accounts, idempotency, storage
    from streamcore_server.auth import Principal
    from streamcore_server.finance import EXPENSES, ExpenseIn, _combiner
    from streamcore_server.settings import Settings

    records = storage.idempotency_records
    bus = RecordingBus()
    published = bus.events

    n = 30
    amounts = [(i % 3 + 1, "USD" if i % 4 == 3 else "INR") for i in range(n)]
    taken = {5, 17}  # keys whose record an earlier request stored: these must not write

    async def run() -> tuple[list[Any], int, int, list[Any], list[Any]]:
        engine = storage.create_engine(pg_database)
        try:
            await storage.migrate(engine)
            async with engine.begin() as conn:
                org = await accounts.create_org(conn, "Keyed batch")
                user = await accounts.create_user(conn, org, "k@example.com", "pw-long-enough")
                prop = await accounts.create_property(conn, org, "Main")
            who = Principal(user, org, "k@example.com")
            settings = Settings(database_url=pg_database, data_dir=str(tmp_path))
            store = idempotency.DatabaseStore(engine, settings, idempotency.Stats())
            route = "/v1/finance/expenses"

            def claim_for(i: int) -> idempotency.Claim:
                return store.new_claim(org, user, f"key-{i}", f"{i:064x}", "POST", route)

            body = ExpenseIn.model_validate({**SEED_EXPENSE, "propertyId": prop})
            for i in taken:  # stored before: a claim for it now finds the record
                first = claim_for(i)
                assert isinstance(await store.claim(first), idempotency.Claim)
                await EXPENSES.create(engine, bus, who, body, first)
            published.clear()
            claims: list[idempotency.Claim | None] = []
            for i in range(n):
                if i % 3 == 0:
                    claims.append(None)  # a plain write
                elif i in taken:
                    claims.append(claim_for(i))  # as after Redis lost the key: no claim row
                else:
                    c = claim_for(i)
                    assert isinstance(await store.claim(c), idempotency.Claim)
                    claims.append(c)
            bodies = [
                ExpenseIn.model_validate(
                    {**SEED_EXPENSE, "propertyId": prop, "amountCents": a, "currency": cur}
                )
                for a, cur in amounts
            ]
            combiner = _combiner(engine)
            before = (combiner.statements, combiner.writes)
            results = await asyncio.gather(
                *(
                    EXPENSES.create(engine, bus, who, b, c)
                    for b, c in zip(bodies, claims, strict=True)
                ),
                return_exceptions=True,
            )
            async with engine.connect() as conn:
                entries = (
                    await conn.execute(
                        select(storage.expenses.c.id, storage.expenses.c.amount_cents).where(
                            storage.expenses.c.property_id == prop
                        )
                    )
                ).all()
                stored = (
                    await conn.execute(
                        select(
                            records.c.key, records.c.state, records.c.claim_token, records.c.body
                        )
                    )
                ).all()
            statements = combiner.statements - before[0]
            writes = combiner.writes - before[1]
            return results, statements, writes, list(entries), list(stored)
        finally:
            await engine.dispose()

    results, statements, writes, entries, stored = asyncio.run(run())
    assert writes == n and statements < n  # keyed and plain writers shared statements
    lost = {i for i, r in enumerate(results) if isinstance(r, Exception)}
    assert lost == taken
    assert all(type(results[i]).__name__ == "RecordExists" for i in lost)
    won = [i for i in range(n) if i not in taken]
    assert len(entries) == len(taken) + len(won)  # the earlier writes and the won ones
    written = {r[0]["id"] for i, r in enumerate(results) if i not in lost}
    assert written <= {e.id for e in entries} and len(written) == len(won)
    by_key = {row.key: row for row in stored}
    for i in won:
        if i % 3 == 0:
            continue
        row = by_key[f"key-{i}"]
        assert row.state == "completed" and row.claim_token is None
        assert orjson.loads(row.body)["id"] == results[i][0]["id"]  # the entry's own id
    by_version = {results[i][1].version: i for i in won}
    first = len(taken) + 1
    assert sorted(by_version) == list(range(first, first + len(won)))
    states = {
        d["version"]: d["totals"]
        for d in (orjson.loads(e.payload)["data"] for e in published if e.conflatable)
    }
    running = {"INR": 50000 * len(taken)}
    for version in sorted(by_version):  # replay in version order: each snapshot is exact
        amount, currency = amounts[by_version[version]]
        running[currency] = running.get(currency, 0) + amount
        assert states[version] == [
            {"currency": c, "expensesCents": running[c], "revenuesCents": 0}
            for c in sorted(running)
        ], version


def test_create_revenue(api: Api) -> None:
    a = api.tenant("Acme")
    response = post(api, "revenues", a, revenue(a, paymentMode="upi"))
    assert response.status_code == 201, response.text
    record = response.json()
    assert record["revenueDate"] == "2025-12-13T10:00:00Z"
    assert record["paymentMode"] == "upi"
    assert "expenseDate" not in record
    assert orjson.loads(api.events[0].payload)["type"] == "revenue.created"


@pytest.mark.parametrize("kind", ["expenses", "revenues"])
def test_another_orgs_property_is_indistinguishable_from_none(api: Api, kind: str) -> None:
    a, b = api.tenant("Acme"), api.tenant("Bravo")
    make = expense if kind == "expenses" else revenue
    assert post(api, kind, b, make(b)).status_code == 201  # B's property has entries
    api.events.clear()
    theirs = post(api, kind, a, make(a, propertyId=b.property_id))
    missing = post(api, kind, a, make(a, propertyId=999_999))
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()
    assert api.events == []  # nothing was written, so nothing was published
    listed = api.client.get(
        f"/v1/finance/{kind}", params={"propertyId": b.property_id}, headers=a.auth
    )
    assert listed.status_code == 404 and listed.json() == theirs.json()


def test_lists_only_show_the_callers_org(api: Api) -> None:
    a, b = api.tenant("Acme"), api.tenant("Bravo")
    post(api, "expenses", a, expense(a, description="mine"))
    post(api, "expenses", b, expense(b, description="theirs"))
    items = api.client.get("/v1/finance/expenses", headers=a.auth).json()["items"]
    assert [i["description"] for i in items] == ["mine"]


def test_summary_of_another_org_is_404(api: Api) -> None:
    a, b = api.tenant("Acme"), api.tenant("Bravo")
    response = api.client.get(
        "/v1/finance/summary", params={"propertyId": b.property_id}, headers=a.auth
    )
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("kind", ["expenses", "revenues"])
def test_pagination_walks_every_item_once_newest_first(api: Api, kind: str) -> None:
    a = api.tenant("Acme")
    make, date_key = (expense, "expenseDate") if kind == "expenses" else (revenue, "revenueDate")
    # Seven entries over four dates, three sharing one instant: the cursor must break ties by id.
    dates = ["2025-01-01T00:00:00Z", "2025-01-02T00:00:00Z"] + ["2025-01-03T00:00:00Z"] * 3
    dates += ["2025-01-04T00:00:00+05:30", "2025-01-05T00:00:00Z"]
    ids = [post(api, kind, a, make(a, **{date_key: d})).json()["id"] for d in dates]
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"propertyId": a.property_id, "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.client.get(f"/v1/finance/{kind}", params=params, headers=a.auth)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= 2
        seen += body["items"]
        pages += 1
        cursor = body["nextCursor"]
        if cursor is None:
            break
    assert pages == 4
    assert sorted(i["id"] for i in seen) == sorted(ids)
    order = [(i[date_key], i["id"]) for i in seen]
    assert order == sorted(order, reverse=True)


def test_date_range_is_from_inclusive_to_exclusive(api: Api) -> None:
    a = api.tenant("Acme")
    for day in (1, 2, 3):
        post(api, "expenses", a, expense(a, expenseDate=f"2025-03-0{day}T00:00:00Z"))
    params = {"from": "2025-03-02T00:00:00Z", "to": "2025-03-03T00:00:00Z"}
    items = api.client.get("/v1/finance/expenses", params=params, headers=a.auth).json()["items"]
    assert [i["expenseDate"] for i in items] == ["2025-03-02T00:00:00Z"]
    # An offset is honoured: 05:30 in India is midnight UTC, so the 2nd is included.
    params = {"from": "2025-03-02T05:30:00+05:30"}
    items = api.client.get("/v1/finance/expenses", params=params, headers=a.auth).json()["items"]
    assert len(items) == 2


@pytest.mark.parametrize(
    "period",
    [
        {"from": "2025-03-03T00:00:00Z", "to": "2025-03-01T00:00:00Z"},
        {"from": "2025-03-02T00:00:00Z", "to": "2025-03-02T01:00:00+01:00"},  # the same instant
    ],
)
def test_a_period_that_ends_before_it_starts_is_empty(api: Api, period: dict[str, str]) -> None:
    # No cross-field rule the document cannot state: [from, to) is simply empty.
    a = api.tenant("Acme")
    post(api, "expenses", a, expense(a, expenseDate="2025-03-02T00:00:00Z"))
    listed = api.client.get("/v1/finance/expenses", params=period, headers=a.auth)
    assert listed.status_code == 200, listed.text
    assert listed.json() == {"items": [], "nextCursor": None}
    params = {**period, "propertyId": a.property_id}
    summary = api.client.get("/v1/finance/summary", params=params, headers=a.auth)
    assert summary.status_code == 200, summary.text
    assert summary.json()["totals"] == []


def test_an_unencoded_plus_in_the_query_still_means_an_offset(api: Api) -> None:
    a = api.tenant("Acme")
    post(api, "expenses", a, expense(a, expenseDate="2025-03-02T00:00:00Z"))
    # A client that forgot to percent-encode '+' sends a space.
    url = "/v1/finance/expenses?from=2025-03-02T05:30:00+05:30"
    response = api.client.get(url, headers=a.auth)
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == 1


def test_summary_totals_per_currency_in_integers(api_factory: Any, database_url: str) -> None:
    api = api_factory(database_url, max_amount_cents=10**15)
    a = api.tenant("Acme")
    other = api.add_property(a, "Annex")
    post(api, "expenses", a, expense(a, amountCents=1001))
    post(api, "expenses", a, expense(a, amountCents=2002))
    # Ten of the largest amounts sum past 2**53, where a float would lose the last digits.
    for _ in range(10):
        post(api, "revenues", a, revenue(a, amountCents=10**15 - 1))
    post(api, "expenses", a, expense(a, amountCents=7, currency="USD"))
    post(api, "expenses", a, expense(a, amountCents=5, expenseDate="2024-01-01T00:00:00Z"))
    post(api, "expenses", a, expense(a, propertyId=other, amountCents=999))
    response = api.client.get(
        "/v1/finance/summary",
        params={
            "propertyId": a.property_id,
            "from": "2025-01-01T00:00:00Z",
            "to": "2026-01-01T00:00:00Z",
        },
        headers=a.auth,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["propertyId"] == a.property_id
    assert body["from"] == "2025-01-01T00:00:00Z" and body["to"] == "2026-01-01T00:00:00Z"
    assert body["totals"] == [
        {
            "currency": "INR",
            "expensesCents": 3003,
            "revenuesCents": 9_999_999_999_999_990,
            "netCents": 9_999_999_999_999_990 - 3003,
            "expenseCount": 2,
            "revenueCount": 10,
        },
        {
            "currency": "USD",
            "expensesCents": 7,
            "revenuesCents": 0,
            "netCents": -7,
            "expenseCount": 1,
            "revenueCount": 0,
        },
    ]
    assert b'"revenuesCents":9999999999999990' in response.content  # an integer on the wire


@pytest.mark.parametrize("kind", ["expenses", "revenues"])
def test_a_json_integer_may_be_written_with_a_zero_fraction(api: Api, kind: str) -> None:
    # JSON Schema's "integer" is 500 and 500.0 alike; the document says integer, so both are.
    a = api.tenant("Acme")
    make = expense if kind == "expenses" else revenue
    body = make(a, amountCents=500.0, propertyId=float(a.property_id))
    response = post(api, kind, a, body)
    assert response.status_code == 201, response.text
    assert response.json()["amountCents"] == 500
    assert response.json()["propertyId"] == a.property_id


def test_summary_of_an_empty_period(api: Api) -> None:
    a = api.tenant("Acme")
    response = api.client.get(
        "/v1/finance/summary", params={"propertyId": a.property_id}, headers=a.auth
    )
    assert response.status_code == 200
    assert response.json()["totals"] == []


# --- bad input -------------------------------------------------------------------------------


def test_every_bad_field_is_listed_at_once(api: Api) -> None:
    a = api.tenant("Acme")
    body = {
        "propertyId": "1",
        "amountCents": 1.5,
        "currency": "inr",
        "expenseDate": "2025-12-13T10:00:00",
        "paymentMode": "gold",
        "description": "x" * 1001,
        "amount": 5,
    }
    assert set(fields(post(api, "expenses", a, body))) == {
        "propertyId",
        "category",
        "amountCents",
        "currency",
        "expenseDate",
        "paymentMode",
        "description",
        "amount",
    }


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("amountCents", 0),
        ("amountCents", -5),
        ("amountCents", 100_000_000_001),
        ("amountCents", "50000"),
        ("amountCents", 500.5),
        ("amountCents", True),
        ("amountCents", None),
        ("currency", "XXX"),
        ("currency", "EURO"),
        ("currency", "HRK"),
        ("expenseDate", "2025-12-13"),
        ("expenseDate", "13/12/2025 10:00+01:00"),
        ("expenseDate", 1765620000),
        ("expenseDate", "0001-01-01T00:00:00+05:00"),
        ("expenseDate", "9999-12-31T23:59:59-10:00"),
        ("paymentMode", "CASH"),
        ("category", ""),
        ("category", "   "),
        ("category", "c" * 65),
        ("category", "re\x00nt"),  # PostgreSQL's text cannot hold it: refused on both
        ("description", "a\x00"),
        ("propertyId", 0),
        ("propertyId", 2**63),
    ],
)
def test_each_bad_value_is_a_422_naming_its_field(api: Api, field: str, value: Any) -> None:
    a = api.tenant("Acme")
    assert list(fields(post(api, "expenses", a, expense(a, **{field: value})))) == [field]
    assert api.events == []


def test_the_amount_bound_is_a_setting(api_factory: Any, sqlite_url: str) -> None:
    api = api_factory(sqlite_url, max_amount_cents=1000)
    a = api.tenant("Acme")
    assert post(api, "expenses", a, expense(a, amountCents=1000)).status_code == 201
    assert fields(post(api, "expenses", a, expense(a, amountCents=1001))) == {
        "amountCents": "must be at most 1000"
    }


def test_revenue_names_its_date_field(api: Api) -> None:
    a = api.tenant("Acme")
    assert set(fields(post(api, "revenues", a, expense(a)))) == {"revenueDate", "expenseDate"}


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
def test_a_body_that_is_not_json_is_415(api: Api, content_type: str | None) -> None:
    a = api.tenant("Acme")
    headers = {**a.auth}
    if content_type:
        headers["Content-Type"] = content_type
    response = api.client.post(
        "/v1/finance/expenses", content=orjson.dumps(expense(a)), headers=headers
    )
    assert response.status_code == 415
    assert response.json()["error"]["code"] == "unsupported_media_type"


def test_json_with_a_charset_is_accepted(api: Api) -> None:
    a = api.tenant("Acme")
    headers = {**a.auth, "Content-Type": "application/json; charset=utf-8"}
    response = api.client.post(
        "/v1/finance/expenses", content=orjson.dumps(expense(a)), headers=headers
    )
    assert response.status_code == 201


@pytest.mark.parametrize("raw", [b"", b"{", b'{"propertyId": 1,}', b"\xff\xfe", b"NaN"])
def test_malformed_json_is_400(api: Api, raw: bytes) -> None:
    a = api.tenant("Acme")
    headers = {**a.auth, "Content-Type": "application/json"}
    response = api.client.post("/v1/finance/expenses", content=raw, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "malformed_json"
    assert "Traceback" not in response.text


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"text"', b"null"])
def test_json_that_is_not_an_object_is_422(api: Api, raw: bytes) -> None:
    a = api.tenant("Acme")
    headers = {**a.auth, "Content-Type": "application/json"}
    response = api.client.post("/v1/finance/expenses", content=raw, headers=headers)
    assert list(fields(response)) == ["body"]


@pytest.mark.parametrize("path", ["/v1/finance/expenses", "/v1/finance/revenues"])
def test_writes_need_a_token(api: Api, path: str) -> None:
    response = api.client.post(path, json=SEED_EXPENSE)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "path", ["/v1/finance/expenses", "/v1/finance/revenues", "/v1/finance/summary?propertyId=1"]
)
def test_reads_need_a_token(api: Api, path: str) -> None:
    response = api.client.get(path, headers={"Authorization": "Bearer not.a.jwt"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_token"


@pytest.mark.parametrize(
    "cursor", ["", "garbage!", "bm90LWpzb24", "1.", ".1", "-5.1", "1.2.3", "1" * 18 + ".1", "1.1 "]
)
def test_a_cursor_the_api_did_not_issue_is_400(api: Api, cursor: str) -> None:
    # Anything outside the documented pattern; every string inside it is a position.
    a = api.tenant("Acme")
    response = api.client.get("/v1/finance/expenses", params={"cursor": cursor}, headers=a.auth)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_cursor"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"propertyId": "abc"}, "propertyId"),
        ({"from": "yesterday"}, "from"),
        ({"to": "2025-01-01T00:00:00"}, "to"),
        ({"to": "0001-01-01T00:00:00+01:00"}, "to"),
    ],
)
def test_bad_list_queries_are_422(api: Api, params: dict[str, str], field: str) -> None:
    a = api.tenant("Acme")
    response = api.client.get("/v1/finance/expenses", params=params, headers=a.auth)
    assert list(fields(response)) == [field]


def test_summary_needs_a_property(api: Api) -> None:
    a = api.tenant("Acme")
    response = api.client.get("/v1/finance/summary", headers=a.auth)
    assert list(fields(response)) == ["propertyId"]


def test_page_size_defaults_and_bounds_are_settings(api_factory: Any, sqlite_url: str) -> None:
    api = api_factory(sqlite_url, page_size_default=2, page_size_max=3)
    a = api.tenant("Acme")
    for _ in range(4):
        post(api, "expenses", a, expense(a))
    page = api.client.get("/v1/finance/expenses", headers=a.auth).json()
    assert len(page["items"]) == 2 and page["nextCursor"]
    assert len(api.client.get("/v1/finance/expenses?limit=3", headers=a.auth).json()["items"]) == 3
    assert list(fields(api.client.get("/v1/finance/expenses?limit=4", headers=a.auth))) == ["limit"]


def test_a_database_failure_is_a_json_500_without_a_trace(
    sqlite_api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    from sqlalchemy import text

    a = sqlite_api.tenant("Acme")

    async def break_the_ledger() -> None:
        async with sqlite_api.app.state.db.begin() as conn:
            await conn.execute(text("DROP TABLE expenses"))

    sqlite_api.run(break_the_ledger)
    with caplog.at_level(logging.ERROR):
        response = post(sqlite_api, "expenses", a, expense(a))
    assert response.status_code == 500
    # The client can quote the id; the log line with the traceback carries the same one.
    record = next(r for r in caplog.records if r.getMessage() == "unhandled error")
    line = orjson.loads(JsonFormatter().format(record))
    assert line["requestId"] == response.headers["x-request-id"]
    assert "no such table" in line["exc"]
    assert response.json() == {
        "error": {
            "code": "internal_error",
            "message": "The server failed to handle this request.",
            "details": None,
        }
    }
    assert "expenses" not in response.text and "Traceback" not in response.text
    assert sqlite_api.events == []


@given(
    st.text(max_size=80)
    | st.binary(max_size=60).map(lambda b: base64.urlsafe_b64encode(b).decode())
)
def test_decode_cursor_refuses_anything_else_as_invalid_cursor(raw: str) -> None:
    # Arbitrary text and base64 of arbitrary bytes: a 400 or a sane cursor, never another error.
    try:
        date, id_ = decode_cursor(raw)
    except InvalidCursor:
        assert not re.match(CURSOR_PATTERN, raw)
        return
    assert date.tzinfo is not None and 0 <= id_ < 2**63
    assert decode_cursor(encode_cursor(date, id_)) == (date, id_)


@given(st.from_regex(CURSOR_PATTERN, fullmatch=True))
def test_every_cursor_the_document_admits_is_a_position(raw: str) -> None:
    # The document publishes the pattern, so schema-valid must never mean a 400.
    date, id_ = decode_cursor(raw)
    assert date.tzinfo is not None and 0 <= id_ < 2**63


# Fixed offsets, as API dates carry: a zone's DST gap has instants no wall time names twice.
OFFSETS = st.integers(-14 * 60, 14 * 60).map(lambda m: dt.timezone(dt.timedelta(minutes=m)))


@given(
    st.datetimes(
        min_value=dt.datetime(1900, 1, 2),
        max_value=dt.datetime(2999, 12, 30),
        timezones=OFFSETS,
    ),
    st.integers(1, 2**63 - 1),
)
def test_cursors_round_trip(date: dt.datetime, id_: int) -> None:
    assert decode_cursor(encode_cursor(date, id_)) == (date, id_)


async def test_concurrent_writes_keep_the_running_totals_exact(
    database_url: str, tmp_path: Any
) -> None:
    import asyncio

    import httpx2
    from sqlalchemy import select

    from streamcore_server import accounts
    from streamcore_server.auth import Principal
    from streamcore_server.main import create_app
    from streamcore_server.settings import Settings
    from streamcore_server.storage import property_totals

    app = create_app(Settings(database_url=database_url, data_dir=str(tmp_path)))
    async with app.router.lifespan_context(app):
        async with app.state.db.begin() as conn:
            org = await accounts.create_org(conn, "Acme")
            user = await accounts.create_user(conn, org, "a@acme.test", "password-1")
            prop = await accounts.create_property(conn, org, "House")
        token = app.state.tokens.issue(Principal(user, org, "a@acme.test"))
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://app") as client:
            headers = {"Authorization": f"Bearer {token}"}
            kinds = ["expenses", "revenues"] * 15
            responses = await asyncio.gather(
                *(
                    client.post(
                        f"/v1/finance/{kind}",
                        json=(expense if kind == "expenses" else revenue)(
                            Tenant(org, user, "", prop, token), amountCents=n + 1
                        ),
                        headers=headers,
                    )
                    for n, kind in enumerate(kinds)
                )
            )
        assert [r.status_code for r in responses] == [201] * 30
        async with app.state.db.connect() as conn:
            row = (await conn.execute(select(property_totals))).one()
    # Expenses were amounts 1, 3, ..., 29 and revenues 2, 4, ..., 30.
    assert (row.expenses_cents, row.revenues_cents) == (225, 240)


@pytest.mark.parametrize(
    "value",
    [
        "100",
        "1700000000",
        "2025-12-13",
        "2025-12-13T10:00:00",
        "13/12/2025 10:00Z",
        "0999-01-01T00:00:00Z",
    ],
)
def test_dates_are_only_the_documented_iso_8601_form(sqlite_api: Any, value: str) -> None:
    t = sqlite_api.tenant(f"Dates{abs(hash(value)) % 10**6}")
    r = sqlite_api.client.post(
        "/v1/finance/expenses", json=expense(t, expenseDate=value), headers=t.auth
    )
    assert r.status_code == 422, r.text
    (detail,) = r.json()["error"]["details"]
    assert detail["field"] == "expenseDate"
    assert "ISO 8601" in detail["message"]
    listed = sqlite_api.client.get("/v1/finance/expenses", params={"from": value}, headers=t.auth)
    assert listed.status_code == 422


@pytest.mark.parametrize("amount", [1e23, 1.5, 10**16])
def test_an_amount_out_of_range_names_the_bounds(sqlite_api: Any, amount: float) -> None:
    t = sqlite_api.tenant(f"Amount{abs(hash(amount)) % 10**6}")
    r = sqlite_api.client.post(
        "/v1/finance/expenses", json=expense(t, amountCents=amount), headers=t.auth
    )
    assert r.status_code == 422, r.text
    (detail,) = r.json()["error"]["details"]
    limit = sqlite_api.app.state.settings.max_amount_cents
    if isinstance(amount, int):
        assert detail == {"field": "amountCents", "message": f"must be at most {limit}"}
        return
    assert detail == {
        "field": "amountCents",
        "message": f"must be a whole number from 1 to {limit}",
    }


@pytest.mark.parametrize(
    ("category", "status", "stored"),
    [
        ("  rent \n", 201, "rent"),
        ("\t", 422, None),
        ("\x0b\x0c", 422, None),
        ("c" * 63 + " ", 201, "c" * 63),
        (" " + "c" * 64, 422, None),  # 65 as sent: lengths count what the client sent
        ("\x00", 422, None),
        ("a\x00", 422, None),
    ],
)
def test_categories_are_measured_as_sent_and_stored_trimmed(
    sqlite_api: Api, category: str, status: int, stored: str | None
) -> None:
    a = sqlite_api.tenant("Acme")
    r = post(sqlite_api, "expenses", a, expense(a, category=category))
    assert r.status_code == status, r.text
    if stored is not None:
        assert r.json()["category"] == stored
    # The document says the same of each (pattern and lengths on the raw text).
    schema = sqlite_api.client.get("/openapi.json").json()["components"]["schemas"]["ExpenseIn"]
    rule = schema["properties"]["category"]
    valid = bool(re.search(rule["pattern"], category)) and (
        rule["minLength"] <= len(category) <= rule["maxLength"]
    )
    assert valid == (status == 201)
