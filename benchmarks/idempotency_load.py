"""Latency the Idempotency-Key layer adds to a POST, per store, vs the same POST without one.

Starts `python -m streamcore_server serve` once per store (embedded: the app's SQLite database;
Redis: the
server at --redis-url, under a key prefix of this run's own, removed afterwards) and, in the same
server, interleaves three requests per round so drift hits all of them alike:
  no key      POST /v1/finance/expenses without Idempotency-Key (the baseline)
  new key     the same POST with a fresh key (claim, handler + record in its transaction, cache)
  replay      the same POST with the previous round's key (answered from the store)
Sequential by default (--concurrency 1): added latency, not queueing, is what is measured.

    .venv/bin/python -m benchmarks.idempotency_load [--rounds 1500] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx2
import redis

from benchmarks.api_load import EXPENSE, free_port, server


@dataclass
class Row:
    store: str
    scenario: str
    requests: int
    p50_ms: float
    p99_ms: float
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None


def _p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] * 1000


async def measure(base: str, rounds: int, concurrency: int, max_s: float) -> dict[str, list[float]]:
    lat: dict[str, list[float]] = {"no key": [], "new key": [], "replay": []}
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        login = await client.post(
            "/auth/login", json={"email": "user@example.com", "password": "changeme"}
        )
        auth = {"Authorization": f"Bearer {login.json()['accessToken']}"}
        deadline = time.monotonic() + max_s
        done = 0

        async def one(name: str, headers: dict[str, str], record: bool) -> None:
            t0 = time.perf_counter()
            r = await client.post("/v1/finance/expenses", json=EXPENSE, headers=headers)
            took = time.perf_counter() - t0
            expected = 201
            if r.status_code != expected or (name == "replay") != (
                r.headers.get("idempotent-replayed") == "true"
            ):
                raise RuntimeError(f"{name}: {r.status_code} {r.headers} {r.text[:200]}")
            if record:
                lat[name].append(took)

        async def worker(warm: int) -> None:
            nonlocal done
            i = 0
            while done < rounds and time.monotonic() < deadline:
                record = i >= warm
                i += 1
                if record:
                    done += 1
                key = str(uuid.uuid4())
                await one("no key", auth, record)
                await one("new key", {**auth, "Idempotency-Key": key}, record)
                await one("replay", {**auth, "Idempotency-Key": key}, record)

        await asyncio.gather(*(worker(50) for _ in range(concurrency)))
    return lat


def rows_for(store: str, lat: dict[str, list[float]]) -> list[Row]:
    base50, base99 = _p(lat["no key"], 0.5), _p(lat["no key"], 0.99)
    out = []
    for name, values in lat.items():
        p50, p99 = _p(values, 0.5), _p(values, 0.99)
        row = Row(store, name, len(values), round(p50, 3), round(p99, 3))
        if name != "no key":
            row.added_p50_ms = round(p50 - base50, 3)
            row.added_p99_ms = round(p99 - base99, 3)
        out.append(row)
    return out


async def run(args: argparse.Namespace) -> list[Row]:
    results: list[Row] = []
    stores = ["embedded"] + (["redis"] if args.redis_url else [])
    for store in stores:
        with tempfile.TemporaryDirectory(prefix="idem-load-") as work:
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            prefix = f"bench:idem:{uuid.uuid4().hex}:"
            env = {
                **os.environ,
                "HOST": "127.0.0.1",
                "PORT": str(port),
                "DATA_DIR": f"{work}/var",
                "DATABASE_URL": args.database_url or f"sqlite+aiosqlite:///{work}/var/app.db",
                "LOG_LEVEL": "warning",
            }
            env.pop("REDIS_URL", None)
            if store == "redis":
                env |= {"REDIS_URL": args.redis_url, "IDEMPOTENCY_REDIS_PREFIX": prefix}
            try:
                with server(
                    [sys.executable, "-m", "streamcore_server", "serve"],
                    env,
                    f"{base}/healthz",
                    work,
                ):
                    lat = await measure(base, args.rounds, args.concurrency, args.max_seconds)
                results.extend(rows_for(store, lat))
            finally:
                if store == "redis":
                    client = redis.Redis.from_url(args.redis_url)
                    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
                    for i in range(0, len(keys), 1000):
                        client.delete(*keys[i : i + 1000])
                    client.close()
    return results


def report(results: list[Row]) -> str:
    lines = [
        f"{'store':9} {'scenario':8} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'+p50 ms':>8} {'+p99 ms':>8}"
    ]
    for r in results:
        a50 = "" if r.added_p50_ms is None else f"{r.added_p50_ms:+.3f}"
        a99 = "" if r.added_p99_ms is None else f"{r.added_p99_ms:+.3f}"
        lines.append(
            f"{r.store:9} {r.scenario:8} {r.requests:6d} {r.p50_ms:8.3f} {r.p99_ms:8.3f} "
            f"{a50:>8} {a99:>8}"
        )
    lines.append("+ = added over 'no key' in the same server and run; target < 1 ms at p50 (Redis)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1500, help="measured rounds per store")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=60, help="cap per store")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="'' to skip the Redis store",
    )
    parser.add_argument("--database-url", default="", help="default: a fresh SQLite file")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
