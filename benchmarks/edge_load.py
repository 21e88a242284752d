"""The finance reads through a real Varnish edge against the same reads sent to the app directly.

One `python -m streamcore_server serve` (embedded SQLite, EDGE_PROVIDER=varnish) behind one varnishd
running
deploy/varnish/streamcore.vcl. The same open-loop load runs straight at the app (the baseline),
then at the edge, then at the edge again with a server that sends each purge once
(EDGE_PURGE_REPEAT_S=0): `--rate` requests/s for `--seconds`, in the seed's SLO-load mix
(benchmarks/slo_load.py: per 20 requests, 12 summaries — all-time and this month — 5 list pages,
2 expense and 1 revenue writes) on the demo property. It reports, for each phase:

- edge hit ratio: reads the edge answered from its copy (X-Edge-Cache: hit) over all reads;
- app CPU per read: the server process's user+system CPU over the phase divided by the reads
  sent, the staleness probe's included (the writes' cost is in both phases alike);
- reads over 1 s stale: all-time summary reads of the load that miss a write whose 201 came
  more than 1 s before they were sent (what a read stored after its write's purge would cause);
- staleness after a write: from a write's 201 to the first all-time summary read through the
  same path that counts it (a probe polls from PROBE_S apart, backing off to 100 ms, for at
  most PROBE_DEADLINE_S; a write still unseen then is counted as such), p50/p99.

    .venv/bin/python -m benchmarks.edge_load [--seconds 20] [--rate 60] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime as dt
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from benchmarks import api_load, ws_load

ROOT = Path(__file__).resolve().parent.parent
VCL = ROOT / "deploy" / "varnish" / "streamcore.vcl"
MIX = {"summary": 12, "list": 5, "expense": 2, "revenue": 1}  # slo_load's, per 20 requests
WARMUP_S = 2.0
PROBE_S = 0.005
PROBE_DEADLINE_S = 10.0
STALE_AFTER_S = 1.0  # the target: a write shows at the edge within 1 s
MAX_IN_FLIGHT = 256
TIMEOUT_S = 5.0


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


@dataclass
class Phase:
    name: str
    reads: int = 0
    probe_reads: int = 0  # the staleness probe's: in the CPU per read, not in the hit ratio
    hits: int = 0
    checked: int = 0  # all-time summary reads of the load, checked for staleness
    stale: int = 0  # ...that missed a write whose 201 came more than STALE_AFTER_S before
    writes: int = 0
    errors: int = 0
    cpu_s: float = 0.0
    seconds: float = 0.0
    staleness: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)

    def row(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "reads": self.reads,
            "writes": self.writes,
            "errors": self.errors,
            "hit_ratio": self.hits / self.reads if self.reads else None,
            "probe_reads": self.probe_reads,
            "app_cpu_per_read_us": (
                self.cpu_s / (self.reads + self.probe_reads) * 1e6 if self.reads else None
            ),
            "app_cpu_s": self.cpu_s,
            "staleness_p50_ms": _ms(pct(self.staleness, 50)),
            "staleness_p99_ms": _ms(pct(self.staleness, 99)),
            "staleness_max_ms": _ms(max(self.staleness, default=None)),
            "writes_timed": len(self.staleness),
            "reads_checked": self.checked,
            "reads_stale_over_1s": self.stale,
            "rps": round((self.reads + self.writes) / self.seconds, 1) if self.seconds else None,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def entries(body: dict[str, Any]) -> int:
    return sum(t["expenseCount"] + t["revenueCount"] for t in body["totals"])


class Load:
    def __init__(self, client: httpx2.AsyncClient, base: str, token: str, phase: Phase) -> None:
        self.client = client
        self.base = base
        self.auth = {"Authorization": f"Bearer {token}"}
        self.phase = phase
        self.rng = random.Random(7)
        self.kinds = [k for k, n in MIX.items() for _ in range(n)]
        month = dt.datetime.now(dt.UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        self.summaries = [
            "/v1/finance/summary?propertyId=1",
            f"/v1/finance/summary?propertyId=1&from={month.isoformat().replace('+00:00', 'Z')}",
        ]
        self.lists = ["/v1/finance/expenses?propertyId=1", "/v1/finance/revenues?limit=20"]
        self.committed = 0  # entries known committed: the initial count plus every 201 so far
        self.probes: set[asyncio.Task[None]] = set()
        self.commits: list[tuple[float, int]] = []  # (time of a 201, entries committed by then)

    def required(self, sent: float) -> int:
        """Entries a read sent at `sent` must show: those whose 201 came over 1 s before."""
        i = bisect.bisect_right(self.commits, (sent - STALE_AFTER_S, sys.maxsize))
        return self.commits[i - 1][1] if i else 0

    async def read(self, path: str) -> None:
        sent = time.monotonic()
        try:
            r = await self.client.get(self.base + path, headers=self.auth, timeout=TIMEOUT_S)
        except httpx2.HTTPError:
            self.phase.errors += 1
            return
        self.phase.reads += 1
        self.phase.statuses[r.status_code] += 1
        if r.status_code != 200:
            self.phase.errors += 1
        if r.headers.get("x-edge-cache") == "hit":
            self.phase.hits += 1
        if path == self.summaries[0] and r.status_code == 200:
            self.phase.checked += 1
            if entries(r.json()) < self.required(sent):
                self.phase.stale += 1

    async def write(self, kind: str) -> None:
        body = {
            "propertyId": 1,
            "category": "maintenance" if kind == "expense" else "rent",
            "amountCents": self.rng.randint(100, 100_000),
            "currency": "INR",
            f"{kind}Date": "2025-12-13T10:00:00Z",
            "paymentMode": "cash",
        }
        try:
            r = await self.client.post(
                f"{self.base}/v1/finance/{kind}s", json=body, headers=self.auth, timeout=TIMEOUT_S
            )
        except httpx2.HTTPError:
            self.phase.errors += 1
            return
        if r.status_code != 201:
            self.phase.errors += 1
            return
        self.phase.writes += 1
        self.committed += 1
        self.commits.append((time.monotonic(), self.committed))
        done = time.monotonic()
        task = asyncio.create_task(self.probe(self.committed, done))
        self.probes.add(task)
        task.add_done_callback(self.probes.discard)

    async def probe(self, target: int, written: float) -> None:
        """Poll the all-time summary through this phase's path until it counts the write."""
        deadline = written + PROBE_DEADLINE_S
        pause = PROBE_S
        while time.monotonic() < deadline:
            try:
                self.phase.probe_reads += 1
                r = await self.client.get(
                    self.base + self.summaries[0], headers=self.auth, timeout=TIMEOUT_S
                )
                if r.status_code == 200 and entries(r.json()) >= target:
                    self.phase.staleness.append(time.monotonic() - written)
                    return
            except httpx2.HTTPError:
                pass
            await asyncio.sleep(pause)
            pause = min(pause * 1.5, 0.1)

    async def one(self) -> None:
        kind = self.rng.choice(self.kinds)
        if kind == "summary":
            await self.read(self.rng.choice(self.summaries))
        elif kind == "list":
            await self.read(self.rng.choice(self.lists))
        else:
            await self.write(kind)


async def drive(base: str, token: str, phase: Phase, args: argparse.Namespace, pid: int) -> None:
    limits = httpx2.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx2.AsyncClient(limits=limits) as client:
        first = await client.get(f"{base}/v1/finance/summary?propertyId=1", headers=_auth(token))
        load = Load(client, base, token, phase)
        load.committed = entries(first.json())
        in_flight: set[asyncio.Task[None]] = set()

        async def run_for(seconds: float) -> None:
            start = time.monotonic()
            n = 0
            while (now := time.monotonic()) < start + seconds:
                due = start + n / args.rate
                if due > now:
                    await asyncio.sleep(due - now)
                n += 1
                if len(in_flight) >= MAX_IN_FLIGHT:
                    phase.errors += 1
                    continue
                task = asyncio.create_task(load.one())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.gather(*in_flight)

        await run_for(WARMUP_S)
        await asyncio.gather(*load.probes)
        phase.reads = phase.probe_reads = phase.hits = phase.writes = phase.errors = 0
        phase.checked = phase.stale = 0
        phase.staleness.clear()
        phase.statuses.clear()
        cpu0, t0 = ws_load.cpu_s(pid), time.monotonic()
        await run_for(args.seconds)
        await asyncio.gather(*load.probes)
        phase.cpu_s = ws_load.cpu_s(pid) - cpu0
        phase.seconds = time.monotonic() - t0


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def varnishd() -> str:
    found = shutil.which("varnishd") or "/usr/sbin/varnishd"
    if not os.path.exists(found):
        raise SystemExit("varnishd is not installed (apt-get install varnish varnish-modules)")
    return found


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edge-load-") as work:
        secret = secrets.token_hex(32)
        secret_path = Path(work) / "jwt_secret"
        secret_path.write_text(secret)
        port, edge_port = api_load.free_port(), api_load.free_port()
        base, edge = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{edge_port}"
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "DATA_DIR": f"{work}/var",
            "DATABASE_URL": f"sqlite+aiosqlite:///{work}/var/streamcore.db",
            "LOG_LEVEL": "warning",
            "JWT_SECRET": secret,
            "EDGE_PROVIDER": "varnish",
            "EDGE_PURGE_URLS": edge,
        }
        vcl = VCL.read_text().replace('.port = "4000";', f'.port = "{port}";')
        vcl = vcl.replace('"/etc/varnish/streamcore_jwt_secret"', f'"{secret_path}"')
        (Path(work) / "streamcore.vcl").write_text(vcl)
        cache = subprocess.Popen(
            [
                *(varnishd(), "-F", "-f", f"{work}/streamcore.vcl"),
                *("-a", f"127.0.0.1:{edge_port}", "-n", f"{work}/varnish", "-T", "none"),
                *("-s", "malloc,64m", "-j", "none"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ws_load.wait_port(edge_port, cache, "varnishd")
            argv = [sys.executable, "-m", "streamcore_server", "serve"]
            phases: list[Phase] = []
            purges: list[dict[str, int]] = []
            # The third phase's server sends each purge only once: what the repeat costs in
            # hits, and what it saves in staleness, measured side by side.
            for overrides, runs in (
                ({}, (("direct", base), ("edge", edge))),
                ({"EDGE_PURGE_REPEAT_S": "0"}, (("edge, no repeat", edge),)),
            ):
                with api_load.server(argv, {**env, **overrides}, f"{base}/readyz", work) as pid:
                    login = httpx2.post(
                        f"{base}/auth/login",
                        json={"email": "user@example.com", "password": "changeme"},
                        timeout=30,
                    )
                    login.raise_for_status()
                    token = login.json()["accessToken"]
                    for name, url in runs:
                        phase = Phase(name)
                        asyncio.run(drive(url, token, phase, args, pid))
                        phases.append(phase)
                    purges.append(httpx2.get(f"{base}/v1/system/metrics/aggregated").json()["edge"])
        finally:
            ws_load.stop(cache)
    rows = [p.row() for p in phases]
    return {"rows": rows, "purges": purges, "rate": args.rate, "seconds": args.seconds}


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def report(result: dict[str, Any]) -> str:
    direct, edge, once = result["rows"]
    ratio = (
        edge["app_cpu_per_read_us"] / direct["app_cpu_per_read_us"]
        if edge["app_cpu_per_read_us"] and direct["app_cpu_per_read_us"]
        else None
    )
    lines = [
        f"Open loop at {result['rate']} requests/s for {result['seconds']} s per phase, the seed's "
        "SLO mix (12 summaries, 5 list pages, 3 writes per 20), one property.",
        "",
        "| path | reads | writes | errors | edge hit ratio | app CPU per read | "
        f"staleness p50 | staleness p99 | max | unseen after {PROBE_DEADLINE_S:.0f} s | "
        "reads over 1 s stale |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in (direct, edge, once):
        lines.append(
            f"| {row['phase']} | {row['reads']} | {row['writes']} | {row['errors']} | "
            f"{_fmt(row['hit_ratio'] and row['hit_ratio'] * 100, ' %')} | "
            f"{_fmt(row['app_cpu_per_read_us'], ' µs', 0)} | "
            f"{_fmt(row['staleness_p50_ms'], ' ms')} | {_fmt(row['staleness_p99_ms'], ' ms')} | "
            f"{_fmt(row['staleness_max_ms'], ' ms')} | {row['writes'] - row['writes_timed']} | "
            f"{row['reads_stale_over_1s']} of {row['reads_checked']} |"
        )
    p = result["purges"][0]
    p99 = edge["staleness_p99_ms"]
    verdict = "n/a" if p99 is None else ("met" if p99 < 1000 else "MISSED")
    lines += [
        "",
        f"App CPU per read (load and probe reads: {direct['probe_reads']} and "
        f"{edge['probe_reads']} probe reads), edge / direct: {_fmt(ratio, '', 2)}. "
        "Staleness is write (201) to the first all-time summary that counts it, "
        "read through the same path "
        f"({direct['writes_timed']} and {edge['writes_timed']} writes timed); target: a write "
        f"shows at the edge within 1 s, p99 {_fmt(p99, ' ms')}: {verdict}.",
        f"Purges (direct and edge phases): {p.get('purge_tags', 0)} tags in "
        f"{p.get('purge_batches', 0)} windows, {p.get('purge_requests', 0)} requests "
        f"({p.get('purge_repeats', 0)} repeats), {p.get('purge_failed', 0)} failed. "
        "'edge, no repeat' is a second server with EDGE_PURGE_REPEAT_S=0: a read already at the "
        "app when a write commits can then be stored after the purge and stay for the TTL.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--rate", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
