"""The real thing: `python -m streamcore_server serve` under uvicorn, spoken to over HTTP."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from app_support import SEED_EXPENSE
from processes import ServeProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """Start the server as `make serve` does, on a fresh machine (empty DATA_DIR)."""
    workdir = tmp_path_factory.mktemp("serve")
    env = {
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/var/streamcore.db",
        "DATA_DIR": str(workdir / "var"),
        "MAX_BODY_BYTES": "4096",
    }
    proc = ServeProcess(workdir, env, "server")
    try:
        yield proc
    finally:
        proc.stop()


def test_serve_seeds_the_demo_and_says_how_to_log_in(server: ServeProcess) -> None:
    first, second = server.out_path.read_text().splitlines()[:2]
    assert "user@example.com" in first
    assert f"http://localhost:{server.port}/auth/login" in second
    assert second.startswith("Log in: curl")
    assert (server.out_path.parent / "var" / "jwt_secret").exists()


def test_the_seed_guide_flow_over_http(server: ServeProcess) -> None:
    base = server.http
    with httpx2.Client(base_url=base, timeout=10) as client:
        login = client.post(
            "/auth/login", json={"email": "user@example.com", "password": "changeme"}
        )
        assert login.status_code == 200, login.text
        token = login.json()["accessToken"]
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "k-1"}
        created = client.post("/v1/finance/expenses", json=SEED_EXPENSE, headers=headers)
        assert created.status_code == 201, created.text
        assert created.headers["x-request-id"]
        listed = client.get("/v1/finance/expenses", params={"propertyId": 1}, headers=headers)
        assert created.json() in listed.json()["items"]
        summary = client.get("/v1/finance/summary", params={"propertyId": 1}, headers=headers)
        assert summary.json()["totals"][0]["currency"] == "INR"


def test_a_chunked_body_over_the_limit_is_413_over_http(server: ServeProcess) -> None:
    def body() -> Iterator[bytes]:
        yield b'{"email": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'", "password": "x"}'

    with httpx2.Client(base_url=server.http, timeout=10) as client:
        response = client.post(
            "/auth/login", content=body(), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"


def test_unknown_paths_and_methods_are_json_errors(server: ServeProcess) -> None:
    with httpx2.Client(base_url=server.http, timeout=10) as client:
        missing = client.get("/v1/nope")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        wrong = client.delete("/v1/finance/expenses")
        assert wrong.status_code == 405
        assert wrong.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_the_seed_curl_commands_work_as_written(server: ServeProcess) -> None:
    # The guide's first two commands, verbatim apart from the port.
    script = Path(__file__).with_name("seed_guide.sh").read_text()
    script = script.replace("localhost:4000", f"localhost:{server.port}")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert '"amountCents":50000' in result.stdout
    assert '"createdBy":1' in result.stdout


def test_concurrent_writes_all_land_and_add_up(server: ServeProcess) -> None:
    import asyncio

    async def run() -> tuple[list[int], dict[str, Any]]:
        async with httpx2.AsyncClient(base_url=server.http, timeout=30) as client:
            login = await client.post(
                "/auth/login", json={"email": "user@example.com", "password": "changeme"}
            )
            headers = {"Authorization": f"Bearer {login.json()['accessToken']}"}
            body = {**SEED_EXPENSE, "currency": "EUR", "amountCents": 7}
            responses = await asyncio.gather(
                *(
                    client.post("/v1/finance/expenses", json=body, headers=headers)
                    for _ in range(40)
                )
            )
            summary = await client.get(
                "/v1/finance/summary", params={"propertyId": 1}, headers=headers
            )
            return [r.status_code for r in responses], summary.json()

    statuses, summary = asyncio.run(run())
    assert statuses == [201] * 40
    eur = next(t for t in summary["totals"] if t["currency"] == "EUR")
    assert (eur["expensesCents"], eur["expenseCount"]) == (280, 40)


def test_a_405_names_every_method_the_path_serves(server: ServeProcess) -> None:
    with httpx2.Client(base_url=server.http, timeout=10) as client:
        for method in ("OPTIONS", "PUT", "DELETE", "PATCH"):
            r = client.request(method, "/v1/finance/expenses")
            assert r.status_code == 405, (method, r.text)
            assert r.headers["allow"] == "GET, HEAD, POST", method
            assert r.json()["error"]["code"] == "method_not_allowed"
        assert client.delete("/auth/login").headers["allow"] == "POST"


def _watch(server: ServeProcess, *args: str, **env: str) -> subprocess.Popen[str]:
    import os
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "streamcore_server", "watch", "--url", server.http, *args],
        stdin=subprocess.DEVNULL,  # no terminal: nothing may prompt
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


def test_watch_logs_in_as_the_demo_user_without_a_terminal(server: ServeProcess) -> None:
    import time

    proc = _watch(server)
    assert proc.stderr is not None
    deadline = time.monotonic() + 60
    lines: list[str] = []
    try:
        while not any(line.startswith("subscribed to") for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, lines
            lines.append(proc.stderr.readline())
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # reaps it and closes both pipes


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (("--email", "someone@example.com"), {}, "no password for someone@example.com"),
        ((), {"WATCH_PASSWORD": "not-the-password"}, "cannot log in to"),
    ],
)
def test_watch_says_plainly_why_it_cannot_log_in(
    server: ServeProcess, args: tuple[str, ...], env: dict[str, str], says: str
) -> None:
    proc = _watch(server, *args, **env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert says in err
    assert "Traceback" not in err


def test_a_stream_takes_no_large_message_from_its_client(server: ServeProcess) -> None:
    # Clients have nothing to say on the stream: a message over the bound is refused at its
    # header (1009) before its payload is buffered; a small one is ignored.
    import asyncio

    from realtime.support import hello, open_ws
    from websockets.exceptions import ConnectionClosed

    token = server.token()

    async def scenario() -> None:
        async with await open_ws(server.ws, token) as ws:
            await hello(ws)
            await ws.send(b"x" * 100)
            pong = await ws.ping()
            await asyncio.wait_for(pong, 10)  # answered: the small message did not end the stream
            await ws.send(b"x" * (64 * 1024 + 1))
            with pytest.raises(ConnectionClosed):
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            assert ws.close_code == 1009

    asyncio.run(scenario())
