"""Expenses, revenues and their summary, each scoped to the caller's org.

A property of another org answers exactly like a property that does not exist (404).
Money is integer minor units end to end; totals are grouped by currency in SQL.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
import weakref
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
)
from pydantic.alias_generators import to_camel
from sqlalchemy import BigInteger, Table, and_, bindparam, cast, func, or_, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

from . import accounts, idempotency, replicas, storage
from .auth import Principal, authenticate
from .cache import Write
from .currencies import ISO_4217
from .edge import Edge, tags, versions
from .errors import InvalidCursor, NotFound
from .events import Event, Publisher, fact, state
from .openapi import Operation
from .responses import OrjsonResponse
from .settings import MAX_AMOUNT_LIMIT, Settings
from .storage import expenses, revenues, utcnow
from .validation import (
    INSTANT_PATTERN,
    MAX_ID,
    NO_NUL,
    JsonId,
    iso_instant,
    no_nul,
    read_json,
    read_query,
    whole_number,
)

# A cursor is "<microseconds since 1899-12-31Z>.<id>" (1900-01-01 at +23:59 is later): 17 digits
# reach the year 5068, inside what datetime and both databases hold, so every match decodes.
CURSOR_EPOCH = dt.datetime(1899, 12, 31, tzinfo=dt.UTC)
CURSOR_PATTERN = r"^([0-9]{1,17})\.([0-9]{1,19})$"
_CURSOR = re.compile(CURSOR_PATTERN)
PaymentMode = Literal["cash", "upi", "card", "bank_transfer", "cheque", "other"]


def _currency(value: str) -> str:
    if value not in ISO_4217:
        raise ValueError("must be an active ISO 4217 currency code in upper case, e.g. INR")
    return value


Currency = Annotated[
    str,
    AfterValidator(_currency),
    WithJsonSchema({"type": "string", "enum": sorted(ISO_4217)}),
]


def _query_offset(value: Any) -> Any:
    # An unencoded '+05:30' in a query string arrives as ' 05:30'; restore the sign.
    if isinstance(value, str):
        value = re.sub(r" (\d\d:?\d\d)$", r"+\1", value)
    return iso_instant(value)


def _plausible(value: dt.datetime) -> dt.datetime:
    # Also keeps astimezone(UTC) from overflowing at year 1 or 9999 into a 500.
    if not 1900 <= value.year <= 2999:
        raise ValueError("must be between the years 1900 and 2999")
    return value.astimezone(dt.UTC)


_INSTANT_SCHEMA = {"type": "string", "format": "date-time", "pattern": INSTANT_PATTERN}
Instant = Annotated[
    AwareDatetime,
    BeforeValidator(iso_instant),
    AfterValidator(_plausible),
    WithJsonSchema(_INSTANT_SCHEMA),
]
QueryInstant = Annotated[
    AwareDatetime,
    BeforeValidator(_query_offset),
    AfterValidator(_plausible),
    WithJsonSchema(_INSTANT_SCHEMA),
]
Id = JsonId


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# Lengths count the text as sent and a category must not be blank, so the document can state
# both (JSON Schema cannot say "after trimming"); the blanks around it are dropped when stored.
# An explicit set: Python's str.strip, pydantic's \s and JSON Schema's \s differ at the edges.
BLANKS = " \t\n\r\f\v"
NOT_BLANK = r"^[^\x00]*[^ \t\n\r\f\v\x00][^\x00]*$"  # and no U+0000 (see validation.NO_NUL)


class _EntryIn(_Camel):
    property_id: Id
    category: str = Field(
        min_length=1,
        max_length=64,
        description="Not blank; blanks around it are dropped.",
        json_schema_extra={"pattern": NOT_BLANK},
    )
    amount_cents: StrictInt = Field(
        gt=0,
        le=MAX_AMOUNT_LIMIT,  # the hard ceiling; the deployment's setting is checked below
        description="Amount in the currency's minor unit (paise, cents).",
        json_schema_extra={"x-maximum-setting": "max_amount_cents"},
    )
    currency: Currency
    description: str = Field(default="", max_length=1000, json_schema_extra={"pattern": NO_NUL})
    payment_mode: PaymentMode

    @field_validator("category")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        value = no_nul(value).strip(BLANKS)
        if not value:
            raise ValueError("must not be blank")
        return value

    @field_validator("description")
    @classmethod
    def _trimmed(cls, value: str) -> str:
        return no_nul(value).strip(BLANKS)

    @field_validator("amount_cents", mode="before")
    @classmethod
    def _whole(cls, value: Any, info: ValidationInfo) -> Any:
        # 1e23 or 1.5 would otherwise read "Input should be a valid integer": name the bounds.
        limit = (info.context or {}).get("max_amount_cents", MAX_AMOUNT_LIMIT)
        return whole_number(1, limit)(value)

    @field_validator("amount_cents")
    @classmethod
    def _bounded(cls, value: int, info: ValidationInfo) -> int:
        limit = (info.context or {}).get("max_amount_cents")
        if limit is not None and value > limit:
            raise ValueError(f"must be at most {limit}")
        return value


class ExpenseIn(_EntryIn):
    """A new expense."""

    expense_date: Instant


class RevenueIn(_EntryIn):
    """A new revenue."""

    revenue_date: Instant


class _EntryOut(_Camel):
    id: int
    property_id: int
    category: str
    amount_cents: int
    currency: str
    description: str
    payment_mode: PaymentMode
    created_at: dt.datetime
    created_by: int = Field(description="Id of the user who recorded it.")


class Expense(_EntryOut):
    """The stored expense."""

    expense_date: dt.datetime


class Revenue(_EntryOut):
    """The stored revenue."""

    revenue_date: dt.datetime


class ExpensePage(_Camel):
    """A page of expenses, newest first."""

    items: list[Expense]
    next_cursor: str | None = Field(
        description="Pass as cursor for the next page; null at the end."
    )


class RevenuePage(_Camel):
    """A page of revenues, newest first."""

    items: list[Revenue]
    next_cursor: str | None = Field(
        description="Pass as cursor for the next page; null at the end."
    )


class _Period(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    from_: QueryInstant | None = Field(
        default=None, alias="from", description="Inclusive start (ISO 8601 with offset)."
    )
    # No cross-field rule, so the document states every rule: [from, to) with to at or before
    # from is an empty period (no items, zero totals), as the half-open interval says.
    to: QueryInstant | None = Field(
        default=None, description="Exclusive end; at or before from, the period is empty."
    )


class ListQuery(_Period):
    property_id: Annotated[int, Field(gt=0, le=MAX_ID)] | None = None
    cursor: str | None = Field(
        default=None,
        description="nextCursor of the previous page (same filters); opaque to clients.",
        # Documented here, checked by decode_cursor: one outside it is 400 invalid_cursor.
        json_schema_extra={"pattern": CURSOR_PATTERN},
    )
    limit: int | None = Field(
        default=None,
        ge=1,
        json_schema_extra={
            "x-maximum-setting": "page_size_max",
            "x-default-setting": "page_size_default",
        },
    )

    @field_validator("limit")
    @classmethod
    def _bounded(cls, value: int | None, info: ValidationInfo) -> int | None:
        limit = (info.context or {}).get("page_size_max")
        if value is not None and limit is not None and value > limit:
            raise ValueError(f"must be at most {limit}")
        return value


class SummaryQuery(_Period):
    property_id: Annotated[int, Field(gt=0, le=MAX_ID)]


class CurrencyTotals(_Camel):
    currency: str
    expenses_cents: int
    revenues_cents: int
    net_cents: int = Field(description="revenuesCents - expensesCents")
    expense_count: int
    revenue_count: int


class Summary(_Camel):
    """Totals per currency for a property and period; never summed across currencies."""

    property_id: int
    from_: dt.datetime | None = Field(alias="from")
    to: dt.datetime | None
    totals: list[CurrencyTotals]


class Ledger:
    """One kind of entry (expenses or revenues): its table, names and queries."""

    def __init__(self, table: Table, kind: str, date_field: str) -> None:
        self.table = table
        self.kind = kind  # "expense" | "revenue"
        self.date_field = date_field  # camelCase, as the API names it
        self.date = table.c[f"{kind}_date"]
        self._sqlite_insert = (
            f"INSERT INTO {table.name} (org_id, property_id, category, amount_cents, currency, "
            f"description, {self.date.name}, payment_mode, created_at, created_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id"
        )
        self._pg_write = _postgres_write(table.name, self.date.name)
        self._pg_keyed_write = _postgres_keyed_write(table.name, self.date.name)
        self._pg_write_many = _postgres_write_many(table.name, self.date.name)
        self._pg_keyed_write_many = _postgres_keyed_write_many(table.name, self.date.name)
        self._pages: dict[frozenset[str], Any] = {}  # the page's SELECT, by the filters it has
        self._sqlite_pages: dict[frozenset[str], Any] = {}  # the same compiled for SQLite
        # What SQLAlchemy would make of each column's stored value on SQLite (None: as stored).
        self._sqlite_row_procs = tuple(
            c.type.dialect_impl(_SQLITE_DIALECT).result_processor(_SQLITE_DIALECT, None)
            for c in table.c
        )
        at = {c.name: i for i, c in enumerate(table.c)}
        self._date_at, self._id_at = at[self.date.name], at["id"]
        # A record's fields by their place in a row of select(table): a Row's lookup by name
        # cost more than the rest of building a page of 50 (profiled).
        self._fields = tuple(
            (field, at[column])
            for field, column in (
                ("id", "id"),
                ("propertyId", "property_id"),
                ("category", "category"),
                ("amountCents", "amount_cents"),
                ("currency", "currency"),
                ("description", "description"),
                (date_field, self.date.name),
                ("paymentMode", "payment_mode"),
                ("createdAt", "created_at"),
                ("createdBy", "created_by"),
            )
        )

    def record(self, row: Any) -> dict[str, Any]:
        """The API's form of a row of select(self.table)."""
        return {field: row[at] for field, at in self._fields}

    async def create(
        self,
        engine: AsyncEngine,
        bus: Publisher,
        who: Principal,
        body: _EntryIn,
        claim: idempotency.Claim | None = None,
    ) -> tuple[dict[str, Any], Write]:
        """Store an entry, bump the property's running totals, publish after commit."""
        date = getattr(body, self.date.name)
        record = {
            "id": 0,  # the database's, filled in below
            "propertyId": body.property_id,
            "category": body.category,
            "amountCents": body.amount_cents,
            "currency": body.currency,
            "description": body.description,
            self.date_field: date,
            "paymentMode": body.payment_mode,
            "createdAt": utcnow(),
            "createdBy": who.user_id,
        }
        if engine.dialect.name == "postgresql":
            version, totals = await self._store_postgres(engine, who.org_id, record, claim)
        else:
            version, totals = await self._store_sqlite(engine, who.org_id, record, claim)
        bus.publish_many(self.events(who.org_id, record, version, totals))
        return record, Write(version, self.kind, body.currency, body.amount_cents, date)

    def _args(self, org_id: int, r: dict[str, Any]) -> tuple[Any, ...]:
        expense = r["amountCents"] if self.kind == "expense" else 0
        revenue = r["amountCents"] if self.kind == "revenue" else 0
        return (
            r["propertyId"],
            org_id,
            r["category"],
            r["amountCents"],
            r["currency"],
            r["description"],
            r[self.date_field],
            r["paymentMode"],
            r["createdAt"],
            r["createdBy"],
            expense,
            revenue,
        )

    async def _store_postgres(
        self,
        engine: AsyncEngine,
        org_id: int,
        record: dict[str, Any],
        claim: idempotency.Claim | None,
    ) -> tuple[int, list[dict[str, Any]]]:
        """One statement checks, inserts and moves the totals; a claim adds its own upsert.

        Writers of one property arriving while one is in flight share the next statement
        (storage.Combiner), keyed or not; a keyed one's record goes in the same statement.
        """
        args = self._args(org_id, record)
        key = (self.kind, org_id, record["propertyId"])
        if claim is None:
            # Writers of one property queue behind the one in flight and go as one statement.
            version, totals, id_ = await _combiner(engine).write(
                key, (args, None), self._run_batch(engine)
            )
            record["id"] = id_
            return version, totals
        # The key's record is written by the same statement as the entry, so it commits with
        # it: a retry can never write it twice. Its body is the response's, whose id (first in
        # the record) is the one the statement draws for the entry. Keyed writes queue with the
        # plain ones: a batch writes each record and only the entries whose record was won.
        response = OrjsonResponse(record, status_code=201)
        body = bytes(response.body)
        assert body.startswith(_ID_PLACEHOLDER)
        stored = idempotency.Stored.of(201, response.raw_headers, body)
        keyed = (*claim.completed_args(stored), body[len(_ID_PLACEHOLDER) :])
        outcome = await _combiner(engine).write(key, (args, keyed), self._run_batch(engine))
        if outcome is _LOST:
            claim.completed_in_statement(stored, False)  # raises RecordExists
        version, totals, id_ = outcome
        record["id"] = id_
        body = b'{"id":%d%s' % (id_, body[len(_ID_PLACEHOLDER) :])
        claim.completed_in_statement(idempotency.Stored(201, stored.headers, body), True)
        return version, totals

    def _run_batch(self, engine: AsyncEngine) -> Callable[[list[Any]], Any]:
        async def run(batch: list[tuple[tuple[Any, ...], Any]]) -> list[Any]:
            """Write a batch of one property's entries; NotFound if it is not the org's."""
            out = await write(batch)
            if out is None:  # nothing was written: not a property of this org
                raise NotFound("Property not found.")
            return out

        async def write(batch: list[tuple[tuple[Any, ...], Any]]) -> list[Any] | None:
            if all(keyed is None for _, keyed in batch):
                if len(batch) == 1:
                    # One statement is its own transaction: no BEGIN or COMMIT round trips, and
                    # the property's row is locked only while PostgreSQL runs it. asyncpg runs
                    # it, prepared once per connection, bypassing SQLAlchemy's execution layer.
                    async with storage.single_statement(engine) as db:
                        row = await db.fetchrow(self._pg_write, *batch[0][0])
                    if row is None:
                        return None
                    return [(row["version"], _totals(row["totals"]), row["id"])]
                return await self._write_many(engine, [args for args, _ in batch])
            # One record per (user, key) per statement (ON CONFLICT touches a row once): a
            # repeated key, which only a lapsed lease lets through, waits for the next statement,
            # so this one stays a single atomic statement.
            first: list[int] = []
            seen: set[tuple[Any, Any]] = set()
            out: list[Any] = [storage.Combiner.AGAIN] * len(batch)
            for i, (_, keyed) in enumerate(batch):
                name = None if keyed is None else (keyed[0], keyed[1])
                if name not in seen:
                    first.append(i)
                if name is not None:
                    seen.add(name)
            results = await self._write_keyed(engine, [batch[i] for i in first])
            if results is None:
                return None
            for i, result in zip(first, results, strict=True):
                out[i] = result
            return out

        return run

    async def _write_keyed(
        self, engine: AsyncEngine, batch: list[tuple[tuple[Any, ...], Any]]
    ) -> list[Any] | None:
        """Entries with or without a key's record in one statement; _LOST where it was taken."""
        if len(batch) == 1:
            args, keyed = batch[0]
            async with storage.single_statement(engine) as db:
                row = await db.fetchrow(self._pg_keyed_write, *args, *keyed)
            if not row["owned"]:
                return None
            if not row["claimed"]:
                return [_LOST]
            return [(row["version"], _totals(row["totals"]), row["id"])]
        none = (None,) * _KEYED_ARGS
        entries = list(zip(*(args for args, _ in batch), strict=True))
        records = list(zip(*(keyed or none for _, keyed in batch), strict=True))
        async with storage.single_statement(engine) as db:
            row = await db.fetchrow(
                self._pg_keyed_write_many,
                batch[0][0][0],
                batch[0][0][1],
                *(list(entries[i]) for i in range(2, 12)),
                *(list(column) for column in records),
            )
        if not row["owned"]:
            return None
        out: list[Any] = [_LOST] * len(batch)
        if row["version"] is None:  # every record was taken: nothing moved
            return out
        won = [ord_ - 1 for ord_ in row["ords"]]
        replayed = _replay([batch[i][0] for i in won], row["version"], row["totals"], row["ids"])
        for i, result in zip(won, replayed, strict=True):
            out[i] = result
        return out

    async def _write_many(
        self, engine: AsyncEngine, batch: list[tuple[Any, ...]]
    ) -> list[tuple[int, Any, int]] | None:
        """Several entries of one property in one statement: one lock hold, one WAL flush.

        The version moves by len(batch) and the snapshot by the batch's sums per currency; each
        entry's own version and totals are then replayed here from the state before it, in the
        order the writers arrived, as if each had run alone.
        """
        sums = _sums(batch)
        cur = list(sums)
        cols = list(zip(*batch, strict=True))
        async with storage.single_statement(engine) as db:
            row = await db.fetchrow(
                self._pg_write_many,
                batch[0][0],
                batch[0][1],
                len(batch),
                cur,
                [sums[c][0] for c in cur],
                [sums[c][1] for c in cur],
                *(list(cols[i]) for i in (2, 3, 4, 5, 6, 7, 8, 9)),
            )
        if row is None:
            return None
        return _replay(batch, row["version"], row["totals"], sorted(row["ids"]))

    async def _store_sqlite(
        self,
        engine: AsyncEngine,
        org_id: int,
        record: dict[str, Any],
        claim: idempotency.Claim | None,
    ) -> tuple[int, list[dict[str, Any]]]:
        """The write as one job of a group commit, run on SQLite's thread in one hop."""
        pid = record["propertyId"]
        amount = record["amountCents"]
        expense, revenue = (amount, 0) if self.kind == "expense" else (0, amount)
        path = f'$."{record["currency"]}"'  # an ISO 4217 code: three capital letters
        bump = (path, path, expense, path, revenue, pid, org_id)
        entry = (
            org_id,
            pid,
            record["category"],
            amount,
            record["currency"],
            record["description"],
            _SQLITE_INSTANT(record[self.date_field]),
            record["paymentMode"],
            _SQLITE_INSTANT(record["createdAt"]),
            record["createdBy"],
        )
        moved = (pid, record["currency"], expense, revenue)
        stored: idempotency.Stored | None = None
        keyed = claim
        if claim is not None:
            response = OrjsonResponse(record, status_code=201)
            body = bytes(response.body)
            assert body.startswith(_ID_PLACEHOLDER)
            stored = idempotency.Stored.of(201, response.raw_headers, body)

        def job(db: sqlite3.Connection) -> tuple[int, str, idempotency.Stored | None]:
            bumped = db.execute(_SQLITE_BUMP, bump).fetchall()
            if not bumped:  # nothing was written: not a property of this org
                raise NotFound("Property not found.")
            ((id_,),) = db.execute(self._sqlite_insert, entry).fetchall()
            db.execute(_SQLITE_MOVE_TOTALS, moved)
            record["id"] = id_
            if stored is None or keyed is None:
                return bumped[0][0], bumped[0][1], None
            # The key's record commits with the entry: a retry can never write it twice.
            body = b'{"id":%d%s' % (id_, stored.body[len(_ID_PLACEHOLDER) :])
            mine = idempotency.Stored(201, stored.headers, body)
            if not keyed.complete_on_sqlite(db, mine):
                raise idempotency.RecordExists(keyed.key)  # rolls this job back alone
            return bumped[0][0], bumped[0][1], mine

        try:
            version, totals, saved = await storage.group_commit(engine).run_sync(job)
        except idempotency.RecordExists:
            assert claim is not None and stored is not None
            claim.completed_in_statement(stored, False)
            raise
        if claim is not None:
            assert saved is not None
            claim.completed_in_statement(saved, True)
        return int(version), _totals(totals)

    def events(
        self, org_id: int, record: dict[str, Any], version: int, totals: list[dict[str, Any]]
    ) -> list[Event]:
        pid = record["propertyId"]
        return [
            fact(org_id, f"{self.kind}.created", record),
            state(
                org_id,
                "property.totals",
                f"property:{pid}:totals",
                {"propertyId": pid, "version": version, "totals": totals},
                version=version,
            ),
        ]

    async def page(
        self, conn: AsyncConnection, who: Principal, query: ListQuery, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page, newest first, keyset-paginated over (date, id), read on conn."""
        params = self._page_params(who, query, limit)
        rows = (await conn.execute(self._page_statement(frozenset(params)), params)).all()
        # Rows are filtered by org, so any row proves the property is the caller's; only an
        # empty page needs the check that tells "none yet" from "not yours" (404).
        if (
            not rows
            and query.property_id is not None
            and not await accounts.property_in_org(conn, query.property_id, who.org_id)
        ):
            raise NotFound("Property not found.")
        return self._page_of(rows, limit)

    def _page_of(self, rows: Sequence[Any], limit: int) -> tuple[list[dict[str, Any]], str | None]:
        """Records of the first `limit` rows (of limit + 1 read), and the next page's cursor."""
        records = [self.record(r) for r in rows[:limit]]
        if len(rows) <= limit:
            return records, None
        last = rows[limit - 1]
        return records, encode_cursor(last[self._date_at], last[self._id_at])

    @staticmethod
    def _page_params(who: Principal, query: ListQuery, limit: int) -> dict[str, Any]:
        params: dict[str, Any] = {"org_id": who.org_id, "limit": limit + 1}
        if query.property_id is not None:
            params["property_id"] = query.property_id
        if query.from_:
            params["from_"] = query.from_
        if query.to:
            params["to"] = query.to
        if query.cursor is not None:  # an empty one is outside the pattern too: a 400
            params["after_date"], params["after_id"] = decode_cursor(query.cursor)
        return params

    async def page_on_sqlite(
        self,
        conn: AsyncConnection,
        who: Principal,
        query: ListQuery,
        limit: int,
        unchanged: Callable[[int], bool],
    ) -> tuple[int | None, tuple[list[dict[str, Any]], str | None] | None, int | None]:
        """The entries' version, the page, the version again: one job on SQLite's thread.

        Through SQLAlchemy the three statements cost the loop about 100 µs each (execution
        context, result, greenlet), more than the page's own work. The SQL is the page's SELECT
        as SQLAlchemy compiles it for SQLite, once per set of filters; values and rows go
        through the columns' own processors. A version of None: not a property of the org; a
        page of None: `unchanged(version)` said the caller has it (no page query is run).
        """
        params = self._page_params(who, query, limit)
        filters = frozenset(params)
        compiled = self._sqlite_pages.get(filters)
        if compiled is None:
            compiled = self._sqlite_pages[filters] = self._page_statement(filters).compile(
                dialect=_SQLITE_DIALECT
            )
        page = _sqlite_statement(compiled, params)
        if query.property_id is None:
            version = _sqlite_statement(_SQLITE_ORG_VERSION, {"org_id": who.org_id})
        else:
            keys = {"property_id": query.property_id, "org_id": who.org_id}
            version = _sqlite_statement(_SQLITE_PROPERTY_VERSION, keys)

        def job(db: sqlite3.Connection) -> tuple[Any, list[Any] | None, Any]:
            before = db.execute(*version).fetchone()
            if before is None or unchanged(int(before[0])):
                return None if before is None else before[0], None, None
            rows = self.read_page_rows(db, *page)
            return before[0], rows, db.execute(*version).fetchone()[0]

        before, raw, after = await storage.read_on_sqlite_thread(conn, job)
        if before is None or raw is None:
            return before, None, None
        procs = self._sqlite_row_procs
        rows = [tuple(v if p is None else p(v) for p, v in zip(procs, r, strict=True)) for r in raw]
        return int(before), self._page_of(rows, limit), int(after)

    @staticmethod
    def read_page_rows(db: sqlite3.Connection, sql: str, args: list[Any]) -> list[Any]:
        """The page query itself, on SQLite's thread (a seam the tests count)."""
        return db.execute(sql, args).fetchall()

    def _page_statement(self, filters: frozenset[str]) -> Any:
        """The page's SELECT for this set of filters, built once: building it per request cost
        more than running it (136 against 105 µs on SQLite, measured)."""
        stmt = self._pages.get(filters)
        if stmt is None:
            t = self.table
            where = [t.c.org_id == bindparam("org_id")]
            if "property_id" in filters:
                where.append(t.c.property_id == bindparam("property_id"))
            if "from_" in filters:
                where.append(self.date >= bindparam("from_"))
            if "to" in filters:
                where.append(self.date < bindparam("to"))
            if "after_date" in filters:
                after: Any = bindparam("after_date")
                where.append(
                    or_(self.date < after, and_(self.date == after, t.c.id < bindparam("after_id")))
                )
            stmt = self._pages[filters] = (
                select(t)
                .where(*where)
                .order_by(self.date.desc(), t.c.id.desc())
                .limit(bindparam("limit"))
            )
        return stmt

    def totals_query(self, org_id: int, property_id: int, period: _Period) -> Any:
        t = self.table
        # The org too: the (property, org, date) index then bounds the period's range.
        where = [t.c.property_id == property_id, t.c.org_id == org_id]
        if period.from_:
            where.append(self.date >= period.from_)
        if period.to:
            where.append(self.date < period.to)
        # PostgreSQL's SUM(bigint) is numeric; cast back so the driver hands over an int.
        total = cast(func.sum(t.c.amount_cents), BigInteger)
        return (
            select(t.c.currency, total.label("total"), func.count().label("n"))
            .where(*where)
            .group_by(t.c.currency)
        )


_SQLITE_MOVE_TOTALS = """
INSERT INTO property_totals (property_id, currency, expenses_cents, revenues_cents)
VALUES (?, ?, ?, ?)
ON CONFLICT (property_id, currency) DO UPDATE
SET expenses_cents = expenses_cents + excluded.expenses_cents,
    revenues_cents = revenues_cents + excluded.revenues_cents
"""
# An aware instant as SQLAlchemy stores it on SQLite (naive UTC text, microseconds included),
# so rows written on the driver's thread read back like every other.
_SQLITE_DIALECT = sqlite.dialect()
_INSTANT_PARAMS = frozenset({"from_", "to", "after_date"})  # the page's bound instants
# The versions edge.versions.entries reads, compiled for a job on SQLite's thread.
_SQLITE_PROPERTY_VERSION = accounts.TOTALS_VERSION.compile(dialect=_SQLITE_DIALECT)
_SQLITE_ORG_VERSION = versions.ORG_VERSION.compile(dialect=_SQLITE_DIALECT)


def _sqlite_args(compiled: Any, params: dict[str, Any]) -> list[Any]:
    """A statement's values in its SQLite placeholders' order, instants as SQLite stores them."""
    bound = compiled.construct_params(params)
    return [
        _SQLITE_INSTANT(bound[name]) if name in _INSTANT_PARAMS else bound[name]
        for name in compiled.positiontup or ()
    ]


def _sqlite_statement(compiled: Any, params: dict[str, Any]) -> tuple[str, list[Any]]:
    return compiled.string, _sqlite_args(compiled, params)


_SQLITE_INSTANT: Callable[[Any], Any] = storage.expenses.c.created_at.type._cached_bind_processor(
    sqlite.dialect()
)  # type: ignore[assignment]
# The version bump also moves the row's totals snapshot and returns both (SQLite's JSON1).
_SQLITE_BUMP = """
UPDATE properties SET totals_version = totals_version + 1,
    totals = json_set(totals, ?, json_array(
        coalesce(json_extract(totals, ? || '[0]'), 0) + ?,
        coalesce(json_extract(totals, ? || '[1]'), 0) + ?))
WHERE id = ? AND org_id = ?
RETURNING totals_version, totals
"""


def _postgres_write(table: str, date_column: str) -> str:
    """The whole write on PostgreSQL, one statement: $1 property, $2 org, $11/$12 the amounts.

    `bump` locks the property's row, checks it is the org's (no row: nothing is written) and
    moves its version and totals snapshot. A writer that waited for another one's lock is
    re-evaluated on the row that one committed, so the totals it returns are exactly its own
    version's; writers to one property take turns for as long as PostgreSQL runs the statement.
    """
    return f"""
WITH bump AS (
    UPDATE properties SET totals_version = totals_version + 1,
        totals = jsonb_set(totals, ARRAY[$5::text], jsonb_build_array(
            COALESCE((totals -> $5::text ->> 0)::bigint, 0) + $11::bigint,
            COALESCE((totals -> $5::text ->> 1)::bigint, 0) + $12::bigint))
    WHERE id = $1::bigint AND org_id = $2::bigint
    RETURNING id, totals_version, totals
), entry AS (
    INSERT INTO {table} (org_id, property_id, category, amount_cents, currency, description,
                         {date_column}, payment_mode, created_at, created_by)
    SELECT $2::bigint, id, $3::text, $4::bigint, $5::text, $6::text, $7::timestamptz,
           $8::text, $9::timestamptz, $10::bigint
    FROM bump
    RETURNING id
), moved AS (
    INSERT INTO property_totals AS t (property_id, currency, expenses_cents, revenues_cents)
    SELECT id, $5::text, $11::bigint, $12::bigint FROM bump
    ON CONFLICT (property_id, currency) DO UPDATE
    SET expenses_cents = t.expenses_cents + excluded.expenses_cents,
        revenues_cents = t.revenues_cents + excluded.revenues_cents
)
SELECT entry.id, bump.totals_version AS version, bump.totals::text AS totals FROM entry, bump
"""


def _postgres_write_many(table: str, date_column: str) -> str:
    """_postgres_write for a batch of one property's entries: $1 property, $2 org, $3 count,
    $4-$6 the batch's sums per currency, $7-$14 the entries' columns as arrays, in order."""
    return f"""
WITH bump AS (
    UPDATE properties SET totals_version = totals_version + $3::bigint,
        totals = totals || (
            SELECT jsonb_object_agg(s.currency, jsonb_build_array(
                COALESCE((properties.totals -> s.currency ->> 0)::bigint, 0) + s.e,
                COALESCE((properties.totals -> s.currency ->> 1)::bigint, 0) + s.r))
            FROM unnest($4::text[], $5::bigint[], $6::bigint[]) AS s(currency, e, r))
    WHERE id = $1::bigint AND org_id = $2::bigint
    RETURNING id, totals_version, totals
), entry AS (
    INSERT INTO {table} (org_id, property_id, category, amount_cents, currency, description,
                         {date_column}, payment_mode, created_at, created_by)
    SELECT $2::bigint, bump.id, e.category, e.amount, e.currency, e.description, e.day,
           e.mode, e.created, e.author
    FROM bump, unnest($7::text[], $8::bigint[], $9::text[], $10::text[], $11::timestamptz[],
                      $12::text[], $13::timestamptz[], $14::bigint[])
        WITH ORDINALITY AS e(category, amount, currency, description, day, mode, created,
                             author, ord)
    ORDER BY e.ord
    RETURNING id
), moved AS (
    INSERT INTO property_totals AS t (property_id, currency, expenses_cents, revenues_cents)
    SELECT bump.id, s.currency, s.e, s.r
    FROM bump, unnest($4::text[], $5::bigint[], $6::bigint[]) AS s(currency, e, r)
    ON CONFLICT (property_id, currency) DO UPDATE
    SET expenses_cents = t.expenses_cents + excluded.expenses_cents,
        revenues_cents = t.revenues_cents + excluded.revenues_cents
)
SELECT bump.totals_version AS version, bump.totals::text AS totals,
       (SELECT array_agg(id) FROM entry) AS ids
FROM bump
"""


def _sums(batch: list[tuple[Any, ...]]) -> dict[str, list[int]]:
    """[expenses, revenues] per currency over a batch of _args tuples, in first-seen order."""
    sums: dict[str, list[int]] = {}
    for a in batch:
        acc = sums.setdefault(a[4], [0, 0])
        acc[0] += a[10]
        acc[1] += a[11]
    return sums


def _replay(
    batch: list[tuple[Any, ...]], version: int, totals: str, ids: list[int]
) -> list[tuple[int, list[dict[str, Any]], int]]:
    """Each entry's own version and totals, replayed from the state before the batch.

    The version moved by len(batch) and the snapshot by the batch's sums per currency; each
    entry's are replayed from the state before it, in the order the writers arrived, as if each
    had run alone. ids are the entries' ids in that order.
    """
    sums = _sums(batch)
    final: dict[str, list[int]] = orjson.loads(totals)
    state = {c: list(v) for c, v in final.items()}
    for c, (e, r) in sums.items():
        state[c] = [state[c][0] - e, state[c][1] - r]
        if state[c] == [0, 0]:  # amounts are > 0: a key at zero is one the batch created
            del state[c]
    first = version - len(batch) + 1
    out = []
    for i, a in enumerate(batch):
        step = state.setdefault(a[4], [0, 0])
        step[0] += a[10]
        step[1] += a[11]
        out.append((first + i, _totals({c: list(v) for c, v in state.items()}), ids[i]))
    return out


_combiners: weakref.WeakKeyDictionary[AsyncEngine, storage.Combiner] = weakref.WeakKeyDictionary()


def _combiner(engine: AsyncEngine) -> storage.Combiner:
    found = _combiners.get(engine)
    if found is None:
        # Refused by PostgreSQL (bad data, a constraint) or by us (not the org's property):
        # nothing committed, so each write of the batch may be tried alone.
        found = _combiners[engine] = storage.Combiner(
            refused=(*storage.refused_whole(engine), NotFound)
        )
    return found


_ID_PLACEHOLDER = b'{"id":0'
_LOST = object()  # a keyed entry whose record another request holds: not written
_KEYED_ARGS = 11  # Claim.completed_args and the body after the id


def _postgres_keyed_write(table: str, date_column: str) -> str:
    """The write of _postgres_write and the Idempotency-Key's completed record, one statement.

    $1-$12 as there; $13-$22 Claim.completed_args; $23 the response body after its id. `owner`
    locks the property first (FOR UPDATE: no row, nothing is written); the record is then
    upserted with the entry's id drawn from its sequence, and the entry, the totals and the
    version move only if the record was won. Every such statement locks one property, then one
    key, in that order, so two cannot deadlock. owned and claimed say why nothing was written.
    """
    record = idempotency.completed_pg(
        "$2::bigint", 13, "ids", "convert_to('{\"id\":' || ids.id::text, 'UTF8') || $23::bytea"
    )
    return f"""
WITH owner AS (
    SELECT id FROM properties WHERE id = $1::bigint AND org_id = $2::bigint FOR UPDATE
), ids AS (
    SELECT nextval(pg_get_serial_sequence('{table}', 'id')) AS id FROM owner
), rec AS ({record}
), bump AS (
    UPDATE properties SET totals_version = totals_version + 1,
        totals = jsonb_set(totals, ARRAY[$5::text], jsonb_build_array(
            COALESCE((totals -> $5::text ->> 0)::bigint, 0) + $11::bigint,
            COALESCE((totals -> $5::text ->> 1)::bigint, 0) + $12::bigint))
    WHERE id = $1::bigint AND org_id = $2::bigint AND EXISTS (SELECT 1 FROM rec)
    RETURNING id, totals_version, totals
), entry AS (
    INSERT INTO {table} (id, org_id, property_id, category, amount_cents, currency, description,
                         {date_column}, payment_mode, created_at, created_by)
    SELECT ids.id, $2::bigint, bump.id, $3::text, $4::bigint, $5::text, $6::text,
           $7::timestamptz, $8::text, $9::timestamptz, $10::bigint
    FROM bump, ids
    RETURNING id
), moved AS (
    INSERT INTO property_totals AS t (property_id, currency, expenses_cents, revenues_cents)
    SELECT id, $5::text, $11::bigint, $12::bigint FROM bump
    ON CONFLICT (property_id, currency) DO UPDATE
    SET expenses_cents = t.expenses_cents + excluded.expenses_cents,
        revenues_cents = t.revenues_cents + excluded.revenues_cents
)
SELECT (SELECT count(*) FROM owner) AS owned, (SELECT count(*) FROM rec) AS claimed,
       entry.id, bump.totals_version AS version, bump.totals::text AS totals
FROM (SELECT 1) AS one LEFT JOIN entry ON true LEFT JOIN bump ON true
"""


def _postgres_keyed_write_many(table: str, date_column: str) -> str:
    """_postgres_keyed_write for a batch of one property's entries, some with a key's record.

    $1 property, $2 org; $3-$12 the entries' columns as arrays (_args from category on); $13-$23
    Claim.completed_args and the body after the id as arrays, NULL for an entry without a key.
    Records are upserted in key order (two batches cannot deadlock on them) with
    _postgres_keyed_write's takeover rule; only entries whose record was won, and those without
    a key, are written, and the version and totals move by them alone. ords and ids are theirs.
    """
    return f"""
WITH owner AS (
    SELECT id FROM properties WHERE id = $1::bigint AND org_id = $2::bigint FOR UPDATE
), ids AS (
    SELECT e.*, nextval(pg_get_serial_sequence('{table}', 'id')) AS id
    FROM owner, unnest($3::text[], $4::bigint[], $5::text[], $6::text[], $7::timestamptz[],
        $8::text[], $9::timestamptz[], $10::bigint[], $11::bigint[], $12::bigint[],
        $13::bigint[], $14::varchar[], $15::varchar[], $16::varchar[], $17::varchar[],
        $18::integer[], $19::bytea[], $20::bigint[], $21::bigint[], $22::varchar[], $23::bytea[])
        WITH ORDINALITY AS e(category, amount, currency, description, day, mode, created,
            author, expense, revenue, user_id, key, fingerprint, method, route, status, headers,
            now_ms, expires_ms, token, rest, ord)
), rec AS (
    INSERT INTO idempotency_records AS r (org_id, user_id, key, fingerprint, method, route,
        state, claim_token, claimed_until_ms, status, headers, body, created_ms, expires_ms)
    SELECT $2::bigint, user_id, key, fingerprint, method, route, '{idempotency.COMPLETED}',
        NULL, NULL, status, headers, convert_to('{{"id":' || id::text, 'UTF8') || rest,
        now_ms, expires_ms
    FROM ids WHERE key IS NOT NULL ORDER BY user_id, key
    ON CONFLICT (org_id, user_id, key) DO UPDATE SET fingerprint = excluded.fingerprint,
        method = excluded.method, route = excluded.route, state = excluded.state,
        claim_token = NULL, claimed_until_ms = NULL, status = excluded.status,
        headers = excluded.headers, body = excluded.body, created_ms = excluded.created_ms,
        expires_ms = excluded.expires_ms
    WHERE r.expires_ms <= excluded.created_ms OR (r.state = '{idempotency.IN_FLIGHT}'
        AND (r.claimed_until_ms <= excluded.created_ms OR r.claim_token = (
            SELECT token FROM ids WHERE ids.user_id = excluded.user_id AND ids.key = excluded.key)))
    RETURNING user_id, key
), won AS (
    SELECT * FROM ids WHERE key IS NULL
        OR EXISTS (SELECT 1 FROM rec WHERE rec.user_id = ids.user_id AND rec.key = ids.key)
), sums AS (
    SELECT currency, sum(expense)::bigint AS e, sum(revenue)::bigint AS r FROM won
    GROUP BY currency
), bump AS (
    UPDATE properties SET totals_version = totals_version + (SELECT count(*) FROM won),
        totals = totals || (
            SELECT jsonb_object_agg(s.currency, jsonb_build_array(
                COALESCE((properties.totals -> s.currency ->> 0)::bigint, 0) + s.e,
                COALESCE((properties.totals -> s.currency ->> 1)::bigint, 0) + s.r))
            FROM sums AS s)
    WHERE id = $1::bigint AND org_id = $2::bigint AND EXISTS (SELECT 1 FROM won)
    RETURNING id, totals_version, totals
), entry AS (
    INSERT INTO {table} (id, org_id, property_id, category, amount_cents, currency, description,
                         {date_column}, payment_mode, created_at, created_by)
    SELECT won.id, $2::bigint, bump.id, won.category, won.amount, won.currency,
           won.description, won.day, won.mode, won.created, won.author
    FROM bump, won ORDER BY won.ord
), moved AS (
    INSERT INTO property_totals AS t (property_id, currency, expenses_cents, revenues_cents)
    SELECT bump.id, s.currency, s.e, s.r FROM bump, sums AS s
    ON CONFLICT (property_id, currency) DO UPDATE
    SET expenses_cents = t.expenses_cents + excluded.expenses_cents,
        revenues_cents = t.revenues_cents + excluded.revenues_cents
)
SELECT (SELECT count(*) FROM owner) AS owned, bump.totals_version AS version,
       bump.totals::text AS totals, (SELECT array_agg(ord ORDER BY ord) FROM won) AS ords,
       (SELECT array_agg(id ORDER BY ord) FROM won) AS ids
FROM (SELECT 1) AS one LEFT JOIN bump ON true
"""


def _totals(snapshot: str | dict[str, list[int]]) -> list[dict[str, Any]]:
    """A property's totals snapshot, {"INR": [expenses, revenues]}, as the event lists them."""
    by_currency = orjson.loads(snapshot) if isinstance(snapshot, str) else snapshot
    return [
        {"currency": c, "expensesCents": e, "revenuesCents": r}
        for c, (e, r) in sorted(by_currency.items())
    ]


EXPENSES = Ledger(expenses, "expense", "expenseDate")
REVENUES = Ledger(revenues, "revenue", "revenueDate")


def encode_cursor(date: dt.datetime, id_: int) -> str:
    """The position after (date, id): microseconds since CURSOR_EPOCH, a dot, the id."""
    micros = (date - CURSOR_EPOCH) // dt.timedelta(microseconds=1)
    return f"{micros}.{id_}"


def decode_cursor(cursor: str) -> tuple[dt.datetime, int]:
    """Read a cursor back; one that does not match CURSOR_PATTERN is a 400 invalid_cursor.

    Every string the pattern admits is a position (the document promises no more), so a
    schema-valid cursor is never refused: an id past MAX_ID means "every id at that instant".
    """
    match = _CURSOR.fullmatch(cursor)
    if match is None:
        raise InvalidCursor("The cursor is not one this API issued.")
    micros, id_ = int(match[1]), int(match[2])
    return CURSOR_EPOCH + dt.timedelta(microseconds=micros), min(id_, MAX_ID)


async def summarise(
    conn: AsyncConnection, who: Principal, query: SummaryQuery
) -> tuple[int | None, dict[str, Any]]:
    """Totals per currency of one property's expenses and revenues over a period, read on conn.

    Also the property's totals version they were computed at: read before and after the
    queries, and None if a write committed in between (the summary is right, but of no version).
    """
    by_currency: dict[str, dict[str, Any]] = {}
    before = await accounts.totals_version(conn, query.property_id, who.org_id)
    if before is None:
        raise NotFound("Property not found.")
    for ledger in (EXPENSES, REVENUES):
        for row in await conn.execute(ledger.totals_query(who.org_id, query.property_id, query)):
            entry = by_currency.get(row.currency)
            if entry is None:
                entry = by_currency[row.currency] = _currency_totals(row.currency)
            entry[f"{ledger.kind}sCents"] = int(row.total)
            entry[f"{ledger.kind}Count"] = int(row.n)
    after = await accounts.totals_version(conn, query.property_id, who.org_id)
    totals = []
    for currency in sorted(by_currency):
        entry = by_currency[currency]
        entry["netCents"] = entry["revenuesCents"] - entry["expensesCents"]
        totals.append(entry)
    body = {"propertyId": query.property_id, "from": query.from_, "to": query.to, "totals": totals}
    return (before if before == after else None), body


def _currency_totals(currency: str) -> dict[str, Any]:
    return {
        "currency": currency,
        "expensesCents": 0,
        "revenuesCents": 0,
        "expenseCount": 0,
        "revenueCount": 0,
        "netCents": 0,
    }


def apply_write(body: bytes, write: Write) -> bytes:
    """A cached summary with one more entry: added if its date is in the summary's period."""
    summary = orjson.loads(body)
    start, end = summary["from"], summary["to"]
    if (start is not None and write.date < dt.datetime.fromisoformat(start)) or (
        end is not None and write.date >= dt.datetime.fromisoformat(end)
    ):
        return body
    totals = summary["totals"]
    entry = next((t for t in totals if t["currency"] == write.currency), None)
    if entry is None:
        entry = _currency_totals(write.currency)
        totals.append(entry)
        totals.sort(key=lambda t: t["currency"])
    entry[f"{write.kind}sCents"] += write.amount_cents
    entry[f"{write.kind}Count"] += 1
    entry["netCents"] = entry["revenuesCents"] - entry["expensesCents"]
    return orjson.dumps(summary, option=orjson.OPT_UTC_Z)


def _limits(settings: Settings) -> dict[str, int]:
    return {"max_amount_cents": settings.max_amount_cents, "page_size_max": settings.page_size_max}


def _create(ledger: Ledger, model: type[_EntryIn]) -> Any:
    async def endpoint(request: Request) -> Response:
        who = authenticate(request)
        body = await read_json(request, model, context=_limits(request.app.state.settings))
        record, write = await ledger.create(
            request.app.state.db,
            request.app.state.events,
            who,
            body,
            idempotency.claim_of(request),
        )
        cache = getattr(request.app.state, "summary_cache", None)
        if cache is not None:  # committed: move this property's cached summaries on to it
            await cache.apply(body.property_id, write)
        request.app.state.edge.written(who.org_id, ledger.kind, body.property_id)
        return OrjsonResponse(record, status_code=201)

    endpoint.__name__ = f"create_{ledger.kind}"
    endpoint.__doc__ = f"Record a {ledger.kind} for a property of the caller's org."
    return endpoint


def _list(ledger: Ledger) -> Any:
    async def endpoint(request: Request) -> Response:
        who = authenticate(request)
        settings: Settings = request.app.state.settings
        query = read_query(request, ListQuery, context=_limits(settings))
        limit = query.limit or settings.page_size_default
        edge: Edge = request.app.state.edge
        resource = f"{ledger.kind}s"
        tag_list = tags.list_tags(who.org_id, resource, query.property_id)
        shown = (query.property_id, query.from_, query.to, query.cursor, limit)

        async def page(conn: AsyncConnection) -> tuple[str | None, Any]:
            # Read the version before and after the page on the same connection (a replica may
            # serve it, never older than the caller's own writes: streamcore_server/replicas.py):
            # equal, and
            # the page is that version's; else a write landed in between and it gets no ETag.
            if conn.dialect.name == "sqlite":
                held = request.headers.get("if-none-match")  # parsed here, read there

                def unchanged(version: int) -> bool:  # on SQLite's thread: pure, no await
                    etag = edge.etag(resource, who.org_id, *shown, version)
                    return held is not None and edge.not_modified(request, etag)

                first, result, last = await ledger.page_on_sqlite(
                    conn, who, query, limit, unchanged
                )
                if first is None:
                    raise NotFound("Property not found.")
                etag = edge.etag(resource, who.org_id, *shown, first)
                return (etag if result is None or last == first else None), result
            before = await versions.entries(conn, who.org_id, query.property_id)
            if before is None:
                raise NotFound("Property not found.")
            etag = edge.etag(resource, who.org_id, *shown, before)
            if edge.not_modified(request, etag):
                return etag, None
            result = await ledger.page(conn, who, query, limit)
            after = await versions.entries(conn, who.org_id, query.property_id)
            return (etag if after == before else None), result

        etag, result = await replicas.read(request, who, page)
        if result is None:
            assert etag is not None
            return edge.unchanged(etag, tag_list)
        items, next_cursor = result
        return OrjsonResponse(
            {"items": items, "nextCursor": next_cursor}, headers=edge.headers(etag, tag_list)
        )

    endpoint.__name__ = f"list_{ledger.kind}s"
    endpoint.__doc__ = (
        f"List the org's {ledger.kind}s newest first, optionally for one property and a period."
    )
    return endpoint


async def summary(request: Request) -> Response:
    """Totals per currency for one property over a period (from inclusive, to exclusive)."""
    who = authenticate(request)
    query = read_query(request, SummaryQuery)
    edge: Edge = request.app.state.edge
    period = f"{query.from_}/{query.to}"
    tag_list = tags.summary_tags(who.org_id, query.property_id)
    if "if-none-match" in request.headers:
        # A revalidation costs the version read alone, never the totals queries; on the primary,
        # so a 304 never confirms a state older than the caller's own writes.
        async with request.app.state.db.connect() as conn:
            current = await versions.summary(conn, who.org_id, query.property_id)
        if current is None:
            raise NotFound("Property not found.")
        etag = edge.etag("summary", who.org_id, query.property_id, period, current)
        if edge.not_modified(request, etag):
            return edge.unchanged(etag, tag_list)

    def run(conn: AsyncConnection) -> Any:
        return summarise(conn, who, query)

    async def compute() -> tuple[int | None, bytes]:
        # On a miss a replica may answer: a version older than one known is just not cached.
        version, body = await replicas.read(request, who, run)
        return version, bytes(OrjsonResponse(body).body)

    cache = getattr(request.app.state, "summary_cache", None)
    if cache is None:
        version, body = await compute()
    else:  # read through streamcore_server.cache (L1/L2/L3)
        version, body = await cache.get_versioned(who.org_id, query.property_id, period, compute)
    tag = (
        None
        if version is None
        else edge.etag("summary", who.org_id, query.property_id, period, version)
    )
    return Response(body, media_type="application/json", headers=edge.headers(tag, tag_list))


_WRITE_ERRORS = (400, 401, 404, 413, 415, 422)
_READ_ERRORS = (400, 401, 404, 422)

operations = [
    Operation(
        "POST",
        "/v1/finance/expenses",
        _create(EXPENSES, ExpenseIn),
        "Record an expense",
        "finance",
        body=ExpenseIn,
        responses={201: Expense},
        errors=_WRITE_ERRORS,
        idempotent=True,
        consistency="write",
    ),
    Operation(
        "GET",
        "/v1/finance/expenses",
        _list(EXPENSES),
        "List expenses",
        "finance",
        query=ListQuery,
        responses={200: ExpensePage},
        errors=_READ_ERRORS,
        consistency="read",
    ),
    Operation(
        "POST",
        "/v1/finance/revenues",
        _create(REVENUES, RevenueIn),
        "Record a revenue",
        "finance",
        body=RevenueIn,
        responses={201: Revenue},
        errors=_WRITE_ERRORS,
        idempotent=True,
        consistency="write",
    ),
    Operation(
        "GET",
        "/v1/finance/revenues",
        _list(REVENUES),
        "List revenues",
        "finance",
        query=ListQuery,
        responses={200: RevenuePage},
        errors=_READ_ERRORS,
        consistency="read",
    ),
    Operation(
        "GET",
        "/v1/finance/summary",
        summary,
        "Totals per currency",
        "finance",
        query=SummaryQuery,
        responses={200: Summary},
        errors=(401, 404, 422),  # no cursor, so no 400
        consistency="read",
    ),
]
