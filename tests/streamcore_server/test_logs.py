"""The log formatter's last line of defence: credentials in free text never reach a line."""

from __future__ import annotations

import logging

import orjson
import pytest

from streamcore_server.logs import JsonFormatter, SecretFilter, redact

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLXZhbHVl"


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (
            f"/v2/realtime/stream?codec=gzip&access_token={JWT}",
            "codec=gzip&access_token=[redacted]",
        ),
        (f"Authorization: Bearer {JWT}", "Bearer [redacted]"),
        (f"token {JWT} here", "token [redacted] here"),
        ("/x?password=hunter2&y=1", "password=[redacted]&y=1"),
    ],
)
def test_redact_removes_credentials_from_text(text: str, kept: str) -> None:
    cleaned = redact(text)
    assert kept in cleaned
    assert JWT not in cleaned and "hunter2" not in cleaned


def test_redact_leaves_ordinary_text_alone() -> None:
    text = "request /v1/finance/expenses?propertyId=1&limit=5 took 3 ms"
    assert redact(text) == text


def _format(record: logging.LogRecord) -> dict[str, object]:
    assert SecretFilter().filter(record)
    return orjson.loads(JsonFormatter().format(record))  # type: ignore[no-any-return]


def test_a_record_with_a_token_in_its_arguments_is_scrubbed() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, "x", 1, "got %s", (JWT,), None)
    assert _format(record)["msg"] == "got [redacted]"


def test_uvicorns_handshake_lines_are_dropped() -> None:
    args = ("127.0.0.1:1", f"/v2/realtime/stream?access_token={JWT}")
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, "x", 1, '%s - "WebSocket %s" [accepted]', args, None
    )
    assert not SecretFilter().filter(record)


def test_each_line_carries_its_own_utc_instant_and_extra_fields_in_order() -> None:
    formatter = JsonFormatter()

    def line(created: float, **extra: object) -> dict[str, object]:
        record = logging.makeLogRecord({"msg": "request", "levelname": "INFO", "name": "t"})
        record.created, record.msecs = created, (created % 1) * 1000
        record.__dict__.update(extra)
        return dict(orjson.loads(formatter.format(record)))

    # 2026-12-04T10:00:59.250Z, then 59.999 in the same second, then the next second and back.
    at = 1796378459.25
    assert line(at)["ts"] == "2026-12-04T10:00:59.250Z"
    assert line(at + 0.749)["ts"] == "2026-12-04T10:00:59.999Z"
    assert line(at + 1.0)["ts"] == "2026-12-04T10:01:00.250Z"
    assert line(at - 3600)["ts"] == "2026-12-04T09:00:59.250Z"
    fields = line(at, path="/p", status=201, _private=1, accessToken="x")
    assert list(fields)[-3:] == ["path", "status", "accessToken"]
    assert fields["accessToken"] == "[redacted]" and "_private" not in fields
