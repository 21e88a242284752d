"""App fixtures: an app per test on SQLite (a tmp file) or PostgreSQL (a database of this run)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from app_support import Api
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from starlette.testclient import TestClient

from streamcore_server import storage
from streamcore_server.main import create_app
from streamcore_server.settings import Settings


@pytest.fixture(scope="session")
def pg_database(postgres_url: str) -> Iterator[str]:
    """A database of this test run's own on the shared server, dropped at the end."""
    name = f"streamcore_app_{uuid.uuid4().hex[:12]}"
    admin_url = make_url(postgres_url)

    async def admin(sql: str) -> None:
        engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
        async with engine.connect() as conn:
            await conn.exec_driver_sql(sql)
        await engine.dispose()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = admin_url.set(database=name).render_as_string(hide_password=False)

    async def migrate() -> None:
        engine = storage.create_engine(url)
        await storage.migrate(engine)
        await engine.dispose()

    asyncio.run(migrate())
    yield url
    asyncio.run(admin(f'DROP DATABASE "{name}" WITH (FORCE)'))


def _truncate(url: str) -> None:
    async def run() -> None:
        engine = create_async_engine(url)
        tables = ", ".join(t.name for t in storage.metadata.sorted_tables)
        async with engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        await engine.dispose()

    asyncio.run(run())


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test starts from an empty schema, on each dialect."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/app.db"
    url: str = request.getfixturevalue("pg_database")
    _truncate(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/app.db"


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    return Settings(database_url=database_url, data_dir=str(data_dir), **overrides)


@pytest.fixture
def api_factory(tmp_path: Path) -> Iterator[Any]:
    """Start apps with the settings a test needs; each is shut down at the end."""
    clients: list[TestClient] = []

    def start(database_url: str, **overrides: Any) -> Api:
        app = create_app(make_settings(database_url, tmp_path / "var", **overrides))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return Api(client)

    yield start
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def api(api_factory: Any, database_url: str) -> Api:
    return api_factory(database_url)  # type: ignore[no-any-return]


@pytest.fixture
def sqlite_api(api_factory: Any, sqlite_url: str) -> Api:
    return api_factory(sqlite_url)  # type: ignore[no-any-return]
