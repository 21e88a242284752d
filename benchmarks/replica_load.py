"""List reads with and without a streaming standby: how much of the primary's CPU it takes off.

Makes a private PostgreSQL primary and one hot standby on loopback (tests/pg_cluster.py), fills
a property with expenses, and runs `python -m streamcore_server serve` twice on the primary: alone,
and with
DATABASE_REPLICA_URL naming the standby. Each drives GET /v1/finance/expenses (a page of 50)
from a concurrent httpx2 client, bounded in requests and in time, reads only and then with the
reader writing every 20th request (its next reads must see the write: read-your-writes). The
primary's CPU is measured from /proc (the postmaster, its children, and the reaped ones), so the
report is the primary's CPU per request with the standby over without it in the same run: the
offload. Throughput is shown too, but the standby shares this machine's two cores, so it is not
the figure. Every server is stopped by its pid and the cluster is removed.

    .venv/bin/python -m benchmarks.replica_load [--requests 3000] [--concurrency 16] [--json out]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx2

from benchmarks.api_load import EXPENSE, free_port, server

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from pg_cluster import PostgresCluster, Server  # noqa: E402

TARGET_OFFLOAD = 0.9  # list reads: at least 90 % of the primary's CPU per read taken off
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
WRITE_EVERY = 20


@dataclass
class Row:
    scenario: str
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    primary_cpu_ms_per_1k: float
    standby_cpu_ms_per_1k: float
    replica_share: float | None
    fallbacks: int  # reads the primary served because no standby could


@dataclass
class Result:
    requests: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float


Request = Callable[[httpx2.AsyncClient], Awaitable[httpx2.Response]]


async def drive(base: str, request: Request, total: int, concurrency: int, max_s: float) -> Result:
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
        requests=len(latencies),
        errors=errors,
        rps=round(len(latencies) / elapsed, 1),
        p50_ms=round(statistics.median(latencies) * 1000, 2),
        p99_ms=round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2),
    )


def cluster_cpu_s(s: Server) -> float:
    """CPU seconds of a postgres cluster: the postmaster, live children and reaped children."""
    pid = int((s.data / "postmaster.pid").read_text().split("\n", 1)[0])
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue  # exited while we looked: its time is now in the postmaster's cutime
        fields = raw.rsplit(")", 1)[1].split()
        ppid, utime, stime, cutime, cstime = (int(fields[i]) for i in (1, 11, 12, 13, 14))
        if int(stat.parent.name) == pid:
            total += utime + stime + cutime + cstime
        elif ppid == pid:
            total += utime + stime
    return total * TICK_S


async def scenario(
    name: str,
    base: str,
    headers: dict[str, str],
    cluster: PostgresCluster,
    requests: int,
    concurrency: int,
    max_s: float,
    writes: bool,
) -> Row:
    count = itertools.count()

    async def request(c: httpx2.AsyncClient) -> httpx2.Response:
        if writes and next(count) % WRITE_EVERY == WRITE_EVERY - 1:
            return await c.post("/v1/finance/expenses", json=EXPENSE, headers=headers)
        return await c.get("/v1/finance/expenses", params={"propertyId": 1}, headers=headers)

    standby = cluster.standbys[0]
    routed_before = routed_reads(base)
    before = (cluster_cpu_s(cluster.primary), cluster_cpu_s(standby))
    result = await drive(base, request, requests, concurrency, max_s)
    after = (cluster_cpu_s(cluster.primary), cluster_cpu_s(standby))
    routed = {k: v - routed_before[k] for k, v in routed_reads(base).items()}
    reads = routed["replica"] + routed["primary"]
    per_1k = 1000 / max(result.requests, 1) * 1000
    return Row(
        scenario=name,
        requests=result.requests,
        errors=result.errors,
        rps=result.rps,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        primary_cpu_ms_per_1k=round((after[0] - before[0]) * per_1k, 1),
        standby_cpu_ms_per_1k=round((after[1] - before[1]) * per_1k, 1),
        replica_share=round(routed["replica"] / reads, 3) if reads else None,
        fallbacks=routed["fallbacks"],
    )


def routed_reads(base: str) -> dict[str, int]:
    """The app's routed reads so far (all zero without a replica)."""
    db = httpx2.get(f"{base}/v1/system/metrics/aggregated", timeout=10).json()["database"]
    routed = db.get("routed_reads") or {"replica": 0, "primary": 0, "fallbacks": {}}
    return {
        "replica": routed["replica"],
        "primary": routed["primary"],
        "fallbacks": sum(routed["fallbacks"].values()),
    }


async def run(requests: int, concurrency: int, max_s: float) -> list[Row]:
    rows: list[Row] = []
    cluster = PostgresCluster(standbys=1)
    try:
        with tempfile.TemporaryDirectory(prefix="replica-load-") as work:
            for with_standby in (False, True):
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                env = {
                    **os.environ,
                    "HOST": "127.0.0.1",
                    "PORT": str(port),
                    "DATA_DIR": f"{work}/var",
                    "DATABASE_URL": cluster.primary.url(),
                    "LOG_LEVEL": "warning",
                }
                if with_standby:
                    env["DATABASE_REPLICA_URL"] = cluster.standbys[0].url()
                argv = [sys.executable, "-m", "streamcore_server", "serve"]
                with server(argv, env, f"{base}/healthz", work):
                    login = httpx2.post(
                        f"{base}/auth/login",
                        json={"email": "user@example.com", "password": "changeme"},
                    )
                    headers = {"Authorization": f"Bearer {login.json()['accessToken']}"}
                    if not with_standby:  # a property with a few pages of expenses
                        for _ in range(200):
                            httpx2.post(
                                f"{base}/v1/finance/expenses", json=EXPENSE, headers=headers
                            )
                    cluster.wait_caught_up(cluster.standbys[0])
                    label = "with standby" if with_standby else "primary only"
                    for writes in (False, True):
                        kind = f"reads + own write every {WRITE_EVERY}th" if writes else "reads"
                        rows.append(
                            await scenario(
                                f"{label}: {kind}",
                                base,
                                headers,
                                cluster,
                                requests,
                                concurrency,
                                max_s,
                                writes,
                            )
                        )
    finally:
        cluster.stop()
    return rows


def report(rows: list[Row], concurrency: int) -> tuple[str, bool]:
    lines = [
        "replica share and fallbacks: the scenario's routed reads (its 50-request warm-up in)",
        f"replica_load: GET /v1/finance/expenses (page of 50), {concurrency} concurrent, "
        "one app process, primary and standby on this machine",
        f"{'scenario':46} {'reqs':>5} {'err':>3} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'primary CPU ms/1k':>17} {'standby CPU ms/1k':>17} {'replica share':>13} "
        f"{'fallbacks':>9}",
    ]
    for r in rows:
        share = "-" if r.replica_share is None else f"{r.replica_share:.3f}"
        lines.append(
            f"{r.scenario:46} {r.requests:5d} {r.errors:3d} {r.rps:7.1f} {r.p50_ms:7.2f} "
            f"{r.p99_ms:7.2f} {r.primary_cpu_ms_per_1k:17.1f} {r.standby_cpu_ms_per_1k:17.1f} "
            f"{share:>13} {r.fallbacks:9d}"
        )
    ok = True
    for i, kind in ((0, "reads"), (1, "reads + own writes")):
        alone, offloaded = rows[i], rows[i + 2]
        ratio = offloaded.primary_cpu_ms_per_1k / max(alone.primary_cpu_ms_per_1k, 1e-9)
        offload = 1 - ratio
        verdict = ""
        if i == 0:
            met = offload >= TARGET_OFFLOAD
            ok = ok and met
            verdict = f" (target >= {TARGET_OFFLOAD:.0%}: {'met' if met else 'MISSED'})"
        lines.append(
            f"{kind}: primary CPU per request with standby / primary only = {ratio:.3f}x, "
            f"offload {offload:.1%}{verdict}; throughput {offloaded.rps / alone.rps:.2f}x "
            "(the standby shares the cores: not a speed figure)"
        )
    return "\n".join(lines), ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="per scenario (default 3000)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=20, help="cap per scenario")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    started = time.monotonic()
    rows = asyncio.run(run(args.requests, args.concurrency, args.max_seconds))
    text, _ok = report(rows, args.concurrency)
    print(text)
    print(f"wall time {time.monotonic() - started:.0f} s")
    if args.json:
        out: list[dict[str, Any]] = [asdict(r) for r in rows]
        args.json.write_text(json.dumps(out, indent=2))
    return 1 if any(r.errors for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
