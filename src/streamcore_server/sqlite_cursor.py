"""SQLite through SQLAlchemy in one hop to the driver's thread per statement, not four.

SQLAlchemy's aiosqlite adapter makes an aiosqlite cursor (a hop to the connection's thread),
executes (a hop), fetches (a hop) and closes it (a hop). Each hop is a queue put, a thread
wake-up, a GIL hand-over and a self-pipe write to wake the loop: a page read of three
statements made ~16 of them and cost 2 ms of CPU with one client (strace counted 89 futex
calls a request). This cursor runs execute, fetch and close of a plain sqlite3 cursor as one
job on that thread, and answers description, rowcount and lastrowid from what the job saw.

What it leans on, pinned by tests/streamcore_server/test_sqlite_cursor.py: SQLAlchemy's
adapted connection picks its cursor class from `_cursor_cls` and serialises on
`_execute_mutex`; aiosqlite runs `_execute(fn, ...)` on the connection's thread with `_conn`
the sqlite3 connection (storage's sync jobs use the same two).
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
)
from sqlalchemy.util import EMPTY_DICT

_Outcome = tuple[Any, int, int | None, list[Any]]


def _execute(db: sqlite3.Connection, operation: str, parameters: Any) -> _Outcome:
    cursor = db.cursor()
    try:
        if parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


def _executemany(db: sqlite3.Connection, operation: str, seq_of_parameters: Any) -> _Outcome:
    cursor = db.cursor()
    try:
        cursor.executemany(operation, seq_of_parameters)
        return None, cursor.rowcount, cursor.lastrowid, []
    finally:
        cursor.close()


class OneHopCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose every statement is one job on the driver's thread."""

    __slots__ = ("_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: Any) -> None:
        # No aiosqlite cursor to make now (the base class's first hop): each statement makes
        # and closes its own sqlite3 cursor on the thread.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]  # none is ever open between statements
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> Any:
        return self._lastrowid

    @property
    def arraysize(self) -> int:
        return 1

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        """Every row is fetched with its statement: there is nothing to size."""

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        aio = self._connection
        async with self._adapt_connection._execute_mutex:
            outcome = await aio._execute(_execute, aio._conn, operation, parameters)
        self._description, self._rowcount, self._lastrowid, rows = outcome
        self._rows = collections.deque(rows)
        return self

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        aio = self._connection
        async with self._adapt_connection._execute_mutex:
            outcome = await aio._execute(_executemany, aio._conn, operation, seq_of_parameters)
        self._description, self._rowcount, self._lastrowid, _ = outcome
        self._rows = collections.deque()
        return self

    async def _async_soft_close(self) -> None:
        """Nothing is open on the thread between statements."""

    def close(self) -> None:
        self._rows.clear()

    def nextset(self) -> None:
        raise NotImplementedError("SQLite has one result set per statement")

    def setinputsizes(self, *inputsizes: Any) -> None:
        """sqlite3 has no input sizes."""


class OneHopConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneHopCursor


def adopt(dbapi_connection: Any) -> None:
    """Make an adapted aiosqlite connection hand out one-hop cursors (from the connect event)."""
    if type(dbapi_connection) is AsyncAdapt_aiosqlite_connection:
        dbapi_connection.__class__ = OneHopConnection
