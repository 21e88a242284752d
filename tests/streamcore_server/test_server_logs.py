"""What a real server writes to its log: no secret, one line per exchange saying what happened."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2
import orjson
import pytest
from app_support import SEED_EXPENSE
from processes import ServeProcess, server_env
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

pytestmark = pytest.mark.slow

WRONG_PASSWORD = "wrong-" + uuid.uuid4().hex
IDEMPOTENCY_KEY = "key-" + uuid.uuid4().hex


def _open(url: str, **kw: Any) -> ClientConnection:
    return connect(url, open_timeout=10, compression=None, **kw)


def _read_hello(ws: ClientConnection) -> None:
    ws.recv(timeout=10)  # the hello frame: the subscription is live


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run one server through every way a secret can reach it, then hand back its whole output."""
    workdir = tmp_path_factory.mktemp("logs")
    proc = ServeProcess(workdir, server_env(workdir, LOG_LEVEL="info"), "server")
    # The demo password is printed on stdout on purpose (the login hint), never logged.
    secrets: list[str] = [WRONG_PASSWORD, IDEMPOTENCY_KEY]
    try:
        with httpx2.Client(base_url=proc.http, timeout=10) as client:
            bad = client.post(
                "/auth/login", json={"email": "user@example.com", "password": WRONG_PASSWORD}
            )
            assert bad.status_code == 401
            token = proc.token()
            secrets.append(token)
            auth = {"Authorization": f"Bearer {token}"}
            created = client.post(
                "/v1/finance/expenses",
                json=SEED_EXPENSE,
                headers={**auth, "Idempotency-Key": IDEMPOTENCY_KEY},
            )
            assert created.status_code == 201, created.text
        # The three ways a token can arrive on the stream: header, subprotocol, query.
        with _open(proc.ws, additional_headers=auth) as ws:
            _read_hello(ws)
        with _open(proc.ws, subprotocols=["streamcore.v2", f"bearer.{token}"]) as ws:  # type: ignore[list-item]
            _read_hello(ws)
        with _open(f"{proc.ws}?codec=gzip&access_token={token}") as ws:
            _read_hello(ws)
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        secrets.append(forged)
        with pytest.raises(InvalidStatus) as refused_403:
            _open(f"{proc.ws}?access_token={forged}")
        assert refused_403.value.response.status_code == 403
        # The seed's cap test: ten connections of one user are served, the eleventh is refused.
        with ExitStack() as stack:
            for _ in range(10):
                _read_hello(stack.enter_context(_open(proc.ws, additional_headers=auth)))
            with pytest.raises(InvalidStatus) as refused_429:
                _open(proc.ws, additional_headers=auth)
            assert refused_429.value.response.status_code == 429
        # A mistyped path is the documented 404 JSON, not an empty 403.
        with pytest.raises(InvalidStatus) as missing:
            _open(f"ws://127.0.0.1:{proc.port}/v2/realtime/streams", additional_headers=auth)
        missing_response = missing.value.response
    finally:
        proc.stop()
    log = proc.log_path.read_text()
    yield {
        "output": log + proc.out_path.read_text(),
        "log": log,
        "secrets": secrets,
        "lines": [orjson.loads(line) for line in proc.log_path.read_text().splitlines()],
        "missing": missing_response,
    }


def test_no_token_password_or_idempotency_key_reaches_the_log(served: dict[str, Any]) -> None:
    output = served["output"]
    assert "/v2/realtime/stream" in output  # the handshakes were logged
    for secret in served["secrets"]:
        assert secret not in output, f"a secret reached the log: {secret[:12]}..."
    # Not even a signature fragment: the token's last segment alone lets no one in, but it is
    # the part a log scrubber that cut at a fixed length would leave behind.
    for secret in served["secrets"]:
        if secret.count(".") == 2:
            assert secret.rsplit(".", 1)[1] not in output
    assert "changeme" not in served["log"]


def _ws_lines(served: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        e
        for e in served["lines"]
        if e.get("logger") == "streamcore_server.access" and e.get("method") == "WS"
    ]


def test_each_websocket_is_logged_once_with_what_happened(served: dict[str, Any]) -> None:
    lines = _ws_lines(served)
    # 3 ways in + 1 forged + 10 held + 1 refused at the cap + 1 unknown path.
    assert len(lines) == 16, lines
    statuses = sorted(e["status"] for e in lines)
    assert statuses == [101] * 13 + [403, 404, 429], statuses
    for e in lines:
        assert e["level"] == "info", e
        if e["status"] == 101:
            assert e["closeCode"] == 1000, e  # every client closed normally
        else:
            assert "closeCode" not in e, e


def test_no_error_line_for_what_the_app_chose(served: dict[str, Any]) -> None:
    errors = [e for e in served["lines"] if e["level"] in ("error", "critical")]
    assert errors == []
    assert all(e.get("status") != 500 for e in served["lines"])
    # uvicorn's own handshake lines are replaced by the one structured line per connection.
    assert not any(str(e["msg"]).startswith(("127.0.0.1", "WebSocket")) for e in served["lines"])


def test_an_unknown_websocket_path_is_the_404_json(served: dict[str, Any]) -> None:
    r = served["missing"]
    assert r.status_code == 404
    body = orjson.loads(r.body)
    assert body["error"]["code"] == "not_found"


def test_the_log_lines_are_all_json(tmp_path: Path, served: dict[str, Any]) -> None:
    assert served["lines"], "the server logged nothing"
    assert all({"ts", "level", "logger", "msg"} <= set(e) for e in served["lines"])
