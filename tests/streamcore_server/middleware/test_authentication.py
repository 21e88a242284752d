"""The authentication middleware's user check."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from sqlalchemy import event

from streamcore_server import accounts, storage
from streamcore_server.middleware.authentication import UserDirectory


async def test_concurrent_checks_of_one_user_share_one_query(sqlite_url: str) -> None:
    engine = storage.create_engine(sqlite_url)
    queries: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "FROM users" in statement:
            queries.append(statement)

    try:
        await storage.migrate(engine)
        async with engine.begin() as conn:
            org = await accounts.create_org(conn, "Acme")
            user = await accounts.create_user(conn, org, "a@example.com", "pw-long-enough")
        event.listen(engine.sync_engine, "before_cursor_execute", count)
        directory = UserDirectory()
        state = SimpleNamespace(db=engine)
        answers = await asyncio.gather(*(directory.org_of(state, user) for _ in range(20)))
        assert answers == [org] * 20
        assert len(queries) == 1
        assert await directory.org_of(state, user) == org  # cached: no query
        assert await directory.org_of(state, user + 1) is None  # unknown user: its own query
        assert len(queries) == 2
    finally:
        await engine.dispose()
