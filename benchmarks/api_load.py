"""Load the HTTP API on loopback and compare it with the framework floor, in one run.

Starts `python -m app serve` (embedded SQLite, WAL, a fresh data dir) and, as the baseline, the
same uvicorn + Starlette serving a trivial JSON endpoint. Drives POST /v1/finance/expenses and
GET /v1/finance/expenses from a concurrent httpx2 client, bounded in requests and in time, and
reports requests/s and p50/p99 latency per scenario with the app/baseline ratio. Every server
it starts is stopped by its pid.

    .venv/bin/python -m benchmarks.api_load [--requests 2000] [--concurrency 32] [--json out.json]

Absolute numbers include the Python client sharing the machine's two cores with the server,
so read the ratios: the client's cost is the same on both sides.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx2

BASELINE_APP = """
import sys, orjson, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

async def read(request):
    return Response(orjson.dumps({"items": [], "nextCursor": None}), media_type="application/json")

async def write(request):
    body = orjson.loads(await request.body())
    return Response(orjson.dumps(body), status_code=201, media_type="application/json")

app = Starlette(routes=[Route("/", read, methods=["GET"]), Route("/", write, methods=["POST"])])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""

EXPENSE = {
    "propertyId": 1,
    "category": "maintenance",
    "amountCents": 50000,
    "currency": "INR",
    "description": "Load test expense",
    "expenseDate": "2025-12-13T10:00:00Z",
    "paymentMode": "cash",
}


@dataclass
class Result:
    scenario: str
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx2.get(url, timeout=1)
            return
        except httpx2.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


@contextmanager
def server(argv: list[str], env: dict[str, str], ready_url: str, cwd: str) -> Any:
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(ready_url, proc)
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


Request = Callable[[httpx2.AsyncClient], Awaitable[httpx2.Response]]


async def drive(
    name: str, base: str, request: Request, total: int, concurrency: int, max_s: float
) -> Result:
    """Send `total` requests from `concurrency` workers, stopping early after `max_s`."""
    latencies: list[float] = []
    errors = 0
    sent = 0
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        for _ in range(min(50, total)):  # warm the connections and caches
            await request(client)
        started = time.perf_counter()
        deadline = started + max_s

        async def worker() -> None:
            nonlocal sent, errors
            while sent < total and time.perf_counter() < deadline:
                sent += 1
                t0 = time.perf_counter()
                response = await request(client)
                latencies.append(time.perf_counter() - t0)
                if response.status_code >= 400:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return Result(
        scenario=name,
        requests=len(latencies),
        errors=errors,
        seconds=round(elapsed, 3),
        rps=round(len(latencies) / elapsed, 1),
        p50_ms=round(statistics.median(latencies) * 1000, 2),
        p99_ms=round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
    )


async def run(requests: int, concurrency: int, max_s: float, log_level: str) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="api-load-") as work:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with server([sys.executable, "-c", BASELINE_APP, str(port)], dict(os.environ), base, work):
            results.append(
                await drive(
                    "baseline POST (parse + echo JSON)",
                    base,
                    lambda c: c.post("/", json=EXPENSE),
                    requests,
                    concurrency,
                    max_s,
                )
            )
            results.append(
                await drive(
                    "baseline GET (constant JSON)",
                    base,
                    lambda c: c.get("/"),
                    requests,
                    concurrency,
                    max_s,
                )
            )

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "DATA_DIR": f"{work}/var",
            "DATABASE_URL": f"sqlite+aiosqlite:///{work}/var/streamcore.db",
            "LOG_LEVEL": log_level,
        }
        argv = [sys.executable, "-m", "app", "serve"]
        with server(argv, env, f"{base}/healthz", work):
            login = httpx2.post(
                f"{base}/auth/login", json={"email": "user@example.com", "password": "changeme"}
            )
            headers = {"Authorization": f"Bearer {login.json()['accessToken']}"}
            results.append(
                await drive(
                    "app POST /v1/finance/expenses",
                    base,
                    lambda c: c.post("/v1/finance/expenses", json=EXPENSE, headers=headers),
                    requests,
                    concurrency,
                    max_s,
                )
            )
            results.append(
                await drive(
                    "app GET /v1/finance/expenses (page of 50)",
                    base,
                    lambda c: c.get(
                        "/v1/finance/expenses", params={"propertyId": 1}, headers=headers
                    ),
                    requests,
                    concurrency,
                    max_s,
                )
            )
    return results


def report(results: list[Result]) -> str:
    lines = [
        f"{'scenario':45} {'requests':>8} {'errors':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}",
    ]
    for r in results:
        counts = f"{r.requests:8d} {r.errors:6d}"
        lines.append(f"{r.scenario:45} {counts} {r.rps:9.1f} {r.p50_ms:8.2f} {r.p99_ms:8.2f}")
    by = {r.scenario.split()[0] + " " + r.scenario.split()[1]: r for r in results}
    for verb in ("POST", "GET"):
        app, base = by[f"app {verb}"], by[f"baseline {verb}"]
        lines.append(
            f"{verb}: app/baseline throughput {app.rps / base.rps:.2f}x, "
            f"p50 {app.p50_ms / base.p50_ms:.2f}x, p99 {app.p99_ms / base.p99_ms:.2f}x"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="per scenario (default 2000)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--max-seconds", type=float, default=30, help="cap per scenario")
    parser.add_argument("--log-level", default="warning", help="the app's LOG_LEVEL")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = asyncio.run(run(args.requests, args.concurrency, args.max_seconds, args.log_level))
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
