"""A real varnishd with deploy/varnish/streamcore.vcl in front of a real server.

The proofs of docs/EDGE.md: a repeated read is the edge's (the app computes the summary once),
a write shows in the next edge reads within 1 s, no other org and no unverifiable token ever gets
a cached answer, and a purge the edge cannot take is retried while the write still answers 201.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import jwt
import pytest
from edge_support import TcpGate, VarnishProcess, require_varnish
from processes import ServeProcess, free_port, server_env
from websockets.asyncio.client import connect

pytestmark = pytest.mark.slow

AGG = "/v1/system/metrics/aggregated"
SUMMARY = "/v1/finance/summary"
BETA_PASSWORD = "beta password 123"


@dataclass
class Stack:
    app: ServeProcess
    edge: VarnishProcess
    secret: str
    gate: TcpGate | None = None

    def stop(self) -> None:
        self.edge.stop()
        self.app.stop()
        if self.gate is not None:
            self.gate.close()


def cli(workdir: Path, env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "streamcore_server", *args],
        cwd=workdir,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def start_stack(workdir: Path, *, gated: bool = False, **settings: object) -> Stack:
    require_varnish()
    secret = secrets.token_hex(32)
    secret_path = workdir / "edge_jwt_secret"
    secret_path.write_text(secret + "\n")  # as an operator's editor leaves it: the VCL trims
    edge_port = free_port()
    gate = TcpGate(edge_port) if gated else None
    purge_url = gate.url if gate is not None else f"http://127.0.0.1:{edge_port}"
    env = server_env(
        workdir,
        JWT_SECRET=secret,
        EDGE_PROVIDER="varnish",
        EDGE_PURGE_URLS=purge_url,
        EDGE_PURGE_RETRY_BASE_S=0.1,
        EDGE_PURGE_RETRY_MAX_S=0.4,
        **settings,
    )
    # The demo org (1) and a second org with its own user and property, through the CLI.
    cli(workdir, env, "seed-demo")
    cli(workdir, env, "create-org", "--name", "Beta")
    cli(workdir, env, "create-user", "--email", "b@example.com", "--org", "Beta",
        "--password", BETA_PASSWORD)  # fmt: skip
    cli(workdir, env, "create-property", "--org", "Beta", "--name", "Beta House")  # 2
    cli(workdir, env, "create-property", "--org", "Demo", "--name", "Never Written")  # 3
    app = ServeProcess(workdir, env, "app")
    try:
        edge = VarnishProcess(workdir, app.port, secret_path, port=edge_port)
    except BaseException:
        app.stop()
        raise
    if gate is not None:
        gate.open()
    return Stack(app, edge, secret, gate)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("edge"))
    yield s
    s.stop()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def app_counts(app: ServeProcess) -> tuple[int, int]:
    """(summary requests the app answered, summaries it computed from the database)."""
    body = app.get(AGG).json()
    served = sum(
        int(row["requests"])
        for row in body["api"]["by_route"]
        if (row["route"], row["method"]) == (SUMMARY, "GET")
    )
    return served, int(body["cache"]["l3"]["hits"])


def app_not_modified(app: ServeProcess) -> int:
    """Summary requests the app answered with a 3xx (its only one here: 304)."""
    body = app.get(AGG).json()
    return sum(
        int(row["responses"]["3xx"])
        for row in body["api"]["by_route"]
        if (row["route"], row["method"]) == (SUMMARY, "GET")
    )


def edge_stats(app: ServeProcess) -> dict[str, int]:
    return app.get(AGG).json()["edge"]  # type: ignore[no-any-return]


def wait_for(check: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.02)


def add_expense(s: Stack, token: str, cents: int, property_id: int = 1) -> None:
    body = {
        "propertyId": property_id,
        "category": "maintenance",
        "amountCents": cents,
        "currency": "INR",
        "expenseDate": "2025-12-13T10:00:00Z",
        "paymentMode": "cash",
    }
    r = httpx2.post(f"{s.edge.http}/v1/finance/expenses", json=body, headers=bearer(token))
    assert r.status_code == 201, r.text


def expenses_of(response: httpx2.Response) -> int:
    totals = response.json()["totals"]
    return sum(t["expensesCents"] for t in totals)


def test_a_repeated_summary_read_is_served_by_the_edge(stack: Stack) -> None:
    token = stack.app.token()
    url = f"{SUMMARY}?propertyId=1&from=2025-01-01T00:00:00Z"
    served0, computed0 = app_counts(stack.app)

    first = stack.edge.get(url, headers=bearer(token))
    second = stack.edge.get(url, headers=bearer(token))

    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.headers["x-edge-cache"], second.headers["x-edge-cache"]) == ("miss", "hit")
    assert second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    served, computed = app_counts(stack.app)
    assert (served - served0, computed - computed0) == (1, 1)  # two reads, one query
    # The edge's own lifetime and tags stay at the edge; browsers must revalidate per token.
    for header in ("xkey", "surrogate-key", "surrogate-control", "cache-tag"):
        assert header not in second.headers
    assert second.headers["cache-control"] == "private, no-cache"
    assert "Authorization" in second.headers["vary"]
    # A client that holds it gets a 304 from the edge, still without the app.
    again = stack.edge.get(url, headers={**bearer(token), "If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert app_counts(stack.app) == (served, computed)


def test_a_write_changes_the_next_edge_read_within_1s(stack: Stack) -> None:
    token = stack.app.token()
    url = f"{SUMMARY}?propertyId=1"
    before = stack.edge.get(url, headers=bearer(token))
    assert stack.edge.get(url, headers=bearer(token)).headers["x-edge-cache"] == "hit"

    add_expense(stack, token, 1234)
    written = time.monotonic()
    fresh = wait_for(
        lambda: when_body(stack.edge.get(url, headers=bearer(token)), before.content),
        "the edge to show the write",
        timeout=5.0,
    )
    took = time.monotonic() - written

    assert expenses_of(fresh) == expenses_of(before) + 1234
    assert took < 1.0, f"the write showed at the edge after {took:.3f}s"
    assert edge_stats(stack.app)["purge_succeeded"] >= 1


def forged(claims: dict[str, Any], key: str) -> str:
    return jwt.encode(claims, key, algorithm="HS256")


def test_no_other_org_and_no_unverified_token_gets_the_cached_answer(stack: Stack) -> None:
    token = stack.app.token()
    # A property no test writes to, so no purge can evict its copy while this test looks.
    url = f"{SUMMARY}?propertyId=3&to=2030-01-01T00:00:00Z"
    cached = stack.edge.get(url, headers=bearer(token))
    assert stack.edge.get(url, headers=bearer(token)).headers["x-edge-cache"] == "hit"
    served0, computed0 = app_counts(stack.app)

    beta = stack.app.token("b@example.com", BETA_PASSWORD)
    claims = jwt.decode(token, stack.secret, algorithms=["HS256"], issuer="streamcore")
    now = int(time.time())
    header, payload, signature = token.split(".")
    raised = base64.urlsafe_b64encode(json.dumps({**claims, "org": 2}).encode()).rstrip(b"=")
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    attempts = {
        # A valid token of another org: the app answers it (404: not its property).
        "other org": (bearer(beta), 404),
        "wrong key": (bearer(forged(claims, secrets.token_hex(32))), 401),
        "payload swapped": (bearer(f"{header}.{raised.decode()}.{signature}"), 401),
        "alg none": (bearer(f"{unsigned}.{payload}."), 401),
        "expired": (bearer(forged({**claims, "iat": now - 60, "exp": now - 1}, stack.secret)), 401),
        "no token, org header": ({"X-Edge-Org": "1"}, 401),
    }
    for name, (headers, status) in attempts.items():
        r = stack.edge.get(url, headers=headers)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.content != cached.content, name
        assert r.headers["x-edge-cache"] in ("miss", "pass"), name  # the app answered it
    served, computed = app_counts(stack.app)
    assert served - served0 == len(attempts)  # each one reached the app...
    assert computed == computed0  # ...and none was given a summary

    # The other org's own reads are cached for it alone; org 1's copy is still org 1's.
    own = f"{SUMMARY}?propertyId=2&to=2030-01-01T00:00:00Z"
    assert stack.edge.get(own, headers=bearer(beta)).status_code == 200
    assert stack.edge.get(own, headers=bearer(beta)).headers["x-edge-cache"] == "hit"
    assert stack.edge.get(own, headers=bearer(token)).status_code == 404
    mine = stack.edge.get(url, headers=bearer(token))
    assert (mine.headers["x-edge-cache"], mine.content) == ("hit", cached.content)


def test_an_unreachable_purge_is_retried_and_the_write_still_answers_201(
    tmp_path: Path,
) -> None:
    s = start_stack(tmp_path, gated=True)
    assert s.gate is not None
    try:
        token = s.app.token()
        url = f"{SUMMARY}?propertyId=1"
        before = s.edge.get(url, headers=bearer(token))
        assert s.edge.get(url, headers=bearer(token)).headers["x-edge-cache"] == "hit"

        s.gate.close()  # the edge's purge address refuses connections
        add_expense(s, token, 777)  # 201, asserted inside
        failed = wait_for(
            lambda: when_stats(edge_stats(s.app), lambda st: st["purge_retries"] >= 2),
            "two failed purges",
            timeout=10.0,
        )
        assert failed["purge_failed"] >= 2 and failed["purge_succeeded"] == 0
        stale = s.edge.get(url, headers=bearer(token))
        assert (stale.headers["x-edge-cache"], stale.content) == ("hit", before.content)

        s.gate.open()
        fresh = wait_for(
            lambda: when_body(s.edge.get(url, headers=bearer(token)), before.content),
            "the retried purge to land",
            timeout=5.0,
        )
        assert expenses_of(fresh) == expenses_of(before) + 777
        assert edge_stats(s.app)["purge_succeeded"] >= 1
    finally:
        s.stop()


def when_stats(stats: dict[str, int], test: Callable[[dict[str, int]], bool]) -> Any:
    return stats if test(stats) else None


def when_body(response: httpx2.Response, old: bytes) -> Any:
    return response if response.status_code == 200 and response.content != old else None


async def test_the_realtime_stream_passes_through_the_edge(stack: Stack) -> None:
    token = stack.app.token()
    url = stack.edge.http.replace("http://", "ws://") + "/v2/realtime/stream"
    async with connect(url, additional_headers=bearer(token), compression=None) as ws:
        hello = await ws.recv()  # the app's hello frame: the upgrade went through the edge
    assert b"hello" in (hello.encode() if isinstance(hello, str) else hello)


def test_past_its_lifetime_the_edge_revalidates_and_the_app_answers_304(tmp_path: Path) -> None:
    s = start_stack(tmp_path, EDGE_TTL_S=1, EDGE_STALE_WHILE_REVALIDATE_S=0)
    try:
        token = s.app.token()
        url = f"{SUMMARY}?propertyId=1"
        first = s.edge.get(url, headers=bearer(token))
        served, computed = app_counts(s.app)
        assert app_not_modified(s.app) == 0
        # Hits until the second is up; then the edge asks the app with the ETag it holds.
        again = wait_for(
            lambda: when_miss(s.edge.get(url, headers=bearer(token))), "the copy to expire", 10.0
        )
        assert (again.status_code, again.content) == (200, first.content)
        assert again.headers["etag"] == first.headers["etag"]
        assert app_counts(s.app) == (served + 1, computed)  # no summary query ran...
        assert app_not_modified(s.app) == 1  # ...because the app answered 304
    finally:
        s.stop()


def when_miss(response: httpx2.Response) -> Any:
    return response if response.headers.get("x-edge-cache") == "miss" else None
