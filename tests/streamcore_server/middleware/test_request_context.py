"""Request ids on responses and in structured log lines."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from streamcore_server.logs import JsonFormatter
from streamcore_server.main import create_app
from streamcore_server.settings import Settings


@pytest.fixture
def client(tmp_path: Any) -> Iterator[TestClient]:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/db", data_dir=str(tmp_path))
    with TestClient(create_app(settings)) as client:
        yield client


def test_each_response_gets_a_fresh_request_id(client: TestClient) -> None:
    first = client.get("/healthz").headers["x-request-id"]
    second = client.get("/nope").headers["x-request-id"]
    assert len(first) == 32 and first != second


def test_a_safe_incoming_id_is_kept_and_an_unsafe_one_replaced(client: TestClient) -> None:
    assert client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"] == (
        "abc-123"
    )
    forged = client.get("/healthz", headers={"X-Request-ID": 'x", "level": "fake'})
    assert forged.headers["x-request-id"] != 'x", "level": "fake'


def test_the_access_line_is_json_with_the_request_id(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="streamcore_server.access")
    client.get("/v1/finance/expenses?cursor=secret-ish", headers={"X-Request-ID": "rid-1"})
    record = next(r for r in caplog.records if r.name == "streamcore_server.access")
    line = orjson.loads(JsonFormatter().format(record))
    assert line["requestId"] == "rid-1"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/v1/finance/expenses", 401)
    assert "secret-ish" not in JsonFormatter().format(record)


def test_secret_named_fields_are_redacted() -> None:
    import logging

    record = logging.makeLogRecord({"msg": "x", "password": "hunter2", "accessToken": "t"})
    line = orjson.loads(JsonFormatter().format(record))
    assert line["password"] == line["accessToken"] == "[redacted]"
