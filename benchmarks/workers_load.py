"""Load the multi-process realtime path: one worker, one worker through Redis, two workers.

The same realtime load, in one run, through three set-ups, each a real `python -m streamcore_server
serve`
(its own SQLite file and DATA_DIR in a temp dir, a fixed JWT_SECRET, connection caps raised,
LOG_LEVEL=warning, Redis keys under a prefix of this run's own):

- 1w: one worker, no REDIS_URL: a publish goes straight into the process's hub;
- 1w+redis: one worker with REDIS_URL: every event goes out to Redis pub/sub and back in;
- 2w+redis: `serve --workers 2` with REDIS_URL: each worker ingests every event from Redis and
  frames it for its own subscribers.

Events come from outside the server, as a customer's publisher would send them: a publisher
process POSTs one batch per org every `--tick-ms` to /v2/realtime/publish over keep-alive HTTP
(`--rate` events/s over `--orgs` orgs; keys cycle over `--keys` per org, so nothing is conflated
unless the server falls a whole key cycle behind). Each event carries its creation time; the
WebSocket clients are benchmarks.ws_load's client processes (one in 50 decodes frames for latency).

Reported per set-up: events accepted (published) and delivered per second with their ratio,
frames/s, delivery latency p50/p95/p99 (creation -> received, including the HTTP publish), server
CPU summed over the supervisor and every worker, CPU-µs per delivered frame, RSS summed over those
processes, the publish round trip (p50/p99), publish errors (not 202), events shed (not sent
because --publish-conns x 4 requests were already waiting: the server was not keeping up), and
each set-up's CPU per frame and p99 as a ratio to 1w's. With two workers it also reports each
worker's connections and CPU, and fails the run unless both carried connections and did work.

    .venv/bin/python -m benchmarks.workers_load [--clients 1000] [--rate 5000] [--seconds 8]
        [--setups 1w,1w+redis,2w+redis] [--redis-url redis://127.0.0.1:6379/0] [--json out.json]

The clients and the publisher share the cores with the server: read delivered against expected,
and the ratios rather than the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.ws_load import (
    ENV,
    ROOT,
    SAMPLE_EVERY,
    SECRET,
    Clients,
    cpu_s,
    drop_redis_keys,
    free_port,
    pct,
    redis_env,
    rss_kb,
    seed_bench_users,
    stop,
    token_for,
    wait_port,
)

SETUPS = {"1w": (1, False), "1w+redis": (1, True), "2w+redis": (2, True)}
WALL_BUDGET_S = 100.0  # with the defaults; a run past it says so


# -- the publisher (its own process) -------------------------------------------------------------


def run_publisher(args: argparse.Namespace) -> None:
    """POST one batch per org every tick until told "report"; print what was accepted."""
    import httpx2
    import orjson
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        headers = {
            org: {"Authorization": f"Bearer {token_for(org)}", "Content-Type": "application/json"}
            for org in range(1, args.orgs + 1)
        }
        stats: dict[str, Any] = {}
        limits = httpx2.Limits(
            max_connections=args.publish_conns, max_keepalive_connections=args.publish_conns
        )
        inflight: set[asyncio.Task[None]] = set()

        async def post(client: httpx2.AsyncClient, org: int, body: bytes, n: int) -> None:
            sent = loop.time()
            try:
                r = await client.post("/v2/realtime/publish", content=body, headers=headers[org])
                ok = r.status_code == 202
            except httpx2.HTTPError:
                ok = False
            stats["rtt"].append(loop.time() - sent)
            if ok:
                stats["events"] += n
                stats["requests"] += 1
                stats["org"][org] = stats["org"].get(org, 0) + n
            else:
                stats["errors"] += n

        async def publish(client: httpx2.AsyncClient) -> None:
            tick = args.tick_ms / 1000
            n = 0
            started = next_at = loop.time()
            while True:
                # Owed by the clock, not by ticks: a late tick sends more, so the rate holds.
                owed = int(args.rate * (loop.time() - started)) - n
                batch: dict[int, list[bytes]] = {}
                now = time.time()
                for _ in range(owed):
                    org = n % args.orgs + 1
                    key = f"k{(n // args.orgs) % args.keys}"
                    event = {"type": "quote", "key": key, "data": {"n": n, "ts": now}}
                    batch.setdefault(org, []).append(orjson.dumps(event))
                    n += 1
                for org, events in batch.items():
                    if len(inflight) >= args.publish_conns * 4:
                        # The server is not keeping up: count what is not sent, never queue it.
                        stats["shed"] += len(events)
                        continue
                    body = b'{"events":[' + b",".join(events) + b"]}"
                    task = loop.create_task(post(client, org, body, len(events)))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                next_at += tick
                await asyncio.sleep(max(0.0, next_at - loop.time()))

        base = f"http://127.0.0.1:{args.port}"
        stats.update(events=0, requests=0, errors=0, shed=0, org={}, rtt=[])
        async with httpx2.AsyncClient(base_url=base, limits=limits, timeout=5) as client:
            task = loop.create_task(publish(client))
            await loop.run_in_executor(None, sys.stdin.readline)  # "measure": reset the counts
            stats.update(events=0, requests=0, errors=0, shed=0, org={}, rtt=[])
            await loop.run_in_executor(None, sys.stdin.readline)  # "report"
            print(json.dumps(stats), flush=True)
            task.cancel()
            if inflight:
                await asyncio.wait(inflight, timeout=5)

    uvloop.run(main())


class Publisher:
    """The publisher process, driven through its stdin and stdout like the client processes."""

    def __init__(self, port: int, args: argparse.Namespace) -> None:
        cmd = [
            sys.executable,
            *("-m", "benchmarks.workers_load", "--role", "publisher", "--port", str(port)),
            *("--rate", str(args.rate), "--orgs", str(args.orgs), "--keys", str(args.keys)),
            *("--tick-ms", str(args.tick_ms), "--publish-conns", str(args.publish_conns)),
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def _say(self, word: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(word + "\n")
        self.proc.stdin.flush()

    def measure(self) -> None:
        self._say("measure")

    def report(self) -> dict[str, Any]:
        self._say("report")
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, "the publisher exited"
        stats: dict[str, Any] = json.loads(line)
        stats["org"] = {int(k): v for k, v in stats["org"].items()}
        return stats

    def close(self) -> None:
        stop(self.proc, grace=5)


# -- the server under test -----------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (children of each of its threads, recursively)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except FileNotFoundError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:
                continue
            out += children
            todo += children
    return out


def is_worker(pid: int) -> bool:
    # uvicorn's workers are multiprocessing "spawn" children (the resource tracker is not one).
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return False


def sockets(pid: int) -> int:
    """Open sockets of a process (its accepted connections, plus a few of its own)."""
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed since the listing
            n += os.readlink(fd).startswith("socket:")
    return n


class Server:
    """`python -m streamcore_server serve [--workers N]` on a free port, in a temp dir of its
    own."""

    def __init__(self, name: str, workers: int, redis_url: str | None, window_ms: float) -> None:
        self.name = name
        self.workers = workers
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="workers_load_"))
        self.prefix = f"bench-workers-{uuid.uuid4().hex[:8]}"
        self.redis_url = redis_url
        env = {
            **ENV,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "DATABASE_URL": f"sqlite+aiosqlite:///{self.dir}/db.sqlite",
            "DATA_DIR": str(self.dir / "var"),
            "JWT_SECRET": SECRET,  # the client processes sign their tokens with it
            "REALTIME_MAX_CONNECTIONS_PER_USER": "1000000",
            "REALTIME_MAX_CONNECTIONS_PER_ORG": "1000000",
            "LOG_LEVEL": "warning",
            "SEED_DEMO": "0",
            "METRICS_PUBLISH_INTERVAL_S": "1",
        }
        if window_ms:
            env["WINDOW_MIN_MS"] = env["WINDOW_MAX_MS"] = str(window_ms)
        env.pop("REDIS_URL", None)
        env.pop("WORKERS", None)
        if redis_url:
            env |= redis_env(redis_url, self.prefix)
        self.log_path = self.dir / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamcore_server", "serve", "--workers", str(workers)],
            cwd=self.dir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.pids: list[int] = []

    def wait_ready(self, timeout: float = 30) -> None:
        """Wait for the port, then (several workers) for every worker's app to have started."""
        import httpx2

        deadline = time.monotonic() + timeout
        wait_port(self.port, self.proc, f"{self.name} server", timeout)
        while True:
            assert self.proc.poll() is None, self.log()
            try:
                if self.workers == 1:
                    r = httpx2.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)
                    if r.status_code == 200:
                        break
                else:
                    # Each worker publishes its metrics once its lifespan has started.
                    r = httpx2.get(
                        f"http://127.0.0.1:{self.port}/v1/system/metrics/aggregated", timeout=2
                    )
                    if r.status_code == 200 and len(r.json()["source"]["instances"]) == (
                        self.workers
                    ):
                        break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, f"{self.name} did not become ready"
            time.sleep(0.2)
        self.pids = [self.proc.pid, *descendants(self.proc.pid)]

    def worker_pids(self) -> list[int]:
        return [p for p in self.pids if is_worker(p)] if self.workers > 1 else [self.proc.pid]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def close(self) -> None:
        pids = self.pids or [self.proc.pid, *descendants(self.proc.pid)]
        stop(self.proc)  # SIGTERM: the supervisor stops its workers, then SIGKILL after 10 s
        for pid in pids[1:]:  # a worker left behind by a killed supervisor
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._log.close()
        if self.redis_url:
            drop_redis_keys(self.redis_url, self.prefix)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- one set-up ----------------------------------------------------------------------------------


@dataclass
class Row:
    setup: str
    workers: int
    redis: bool
    clients: int
    connected: int
    seconds: float
    published_events_s: float
    expected_events_s: float
    delivered_events_s: float
    delivered_ratio: float
    frames_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_util: float
    cpu_us_per_frame: float
    rss_mb: float
    publish_p50_ms: float
    publish_p99_ms: float
    publish_errors: int
    publish_shed: int
    publisher_cpu_util: float
    per_worker: list[dict[str, Any]] = field(default_factory=list)
    x_1w_cpu_per_frame: float = 0.0
    x_1w_delivered: float = 0.0
    x_1w_p99: float = 0.0


def clients_per_org(indices: range, orgs: int) -> Counter[int]:
    """How many of the clients at these indices each org has (ws_load places them round-robin)."""
    return Counter(j % orgs + 1 for j in indices)


def run_setup(name: str, args: argparse.Namespace) -> Row:
    workers, with_redis = SETUPS[name]
    server = Server(name, workers, args.redis_url if with_redis else None, args.window_ms)
    clients: Clients | None = None
    publisher: Publisher | None = None
    try:
        server.wait_ready()
        seed_bench_users(f"sqlite+aiosqlite:///{server.dir}/db.sqlite", range(1, args.orgs + 1))
        worker_pids = server.worker_pids()
        idle_sockets = {pid: sockets(pid) for pid in worker_pids}
        clients = Clients("streamcore", server.port, args.clients, args.client_procs, args.orgs)
        failed = clients.ready()
        time.sleep(1.0)
        held = {pid: sockets(pid) - idle_sockets[pid] for pid in worker_pids}
        publisher = Publisher(server.port, args)
        time.sleep(args.warmup)
        clients.measure()
        publisher.measure()
        cpu0 = {pid: cpu_s(pid) for pid in server.pids}
        pub0, t0 = cpu_s(publisher.proc.pid), time.monotonic()
        time.sleep(args.seconds)
        cpu1 = {pid: cpu_s(pid) for pid in server.pids}
        pub1, t1 = cpu_s(publisher.proc.pid), time.monotonic()
        rss = sum(rss_kb(pid) for pid in server.pids)
        published = publisher.report()
        totals = clients.report()
        dt = t1 - t0

        # Delivery: what the sampled clients decoded against what their orgs were sent.
        all_clients = clients_per_org(range(args.clients), args.orgs)
        sampled = clients_per_org(range(0, args.clients, SAMPLE_EVERY), args.orgs)
        by_org = published["org"]
        sampled_due = sum(n * by_org.get(org, 0) for org, n in sampled.items())
        ratio = totals["events"] / sampled_due if sampled_due else 0.0
        connected = args.clients - failed
        expected = sum(n * by_org.get(org, 0) for org, n in all_clients.items())
        expected_s = expected * connected / args.clients / dt
        cpu = sum(cpu1[p] - cpu0[p] for p in server.pids)
        frames = totals["frames"]
        # A worker's connections: sockets opened since it was idle (its clients, plus any
        # connection its Redis pools added meanwhile).
        per_worker = [
            {
                "pid": pid,
                "connections": held[pid],
                "cpu_util": round((cpu1[pid] - cpu0[pid]) / dt, 2),
            }
            for pid in worker_pids
        ]
        return Row(
            setup=name,
            workers=workers,
            redis=with_redis,
            clients=args.clients,
            connected=connected,
            seconds=round(dt, 2),
            published_events_s=round(published["events"] / dt),
            expected_events_s=round(expected_s),
            delivered_events_s=round(ratio * expected_s),
            delivered_ratio=round(ratio, 3),
            frames_s=round(frames / dt),
            p50_ms=round(pct(totals["lat"], 50), 1),
            p95_ms=round(pct(totals["lat"], 95), 1),
            p99_ms=round(pct(totals["lat"], 99), 1),
            cpu_util=round(cpu / dt, 2),
            cpu_us_per_frame=round(cpu / max(1, frames) * 1e6, 2),
            rss_mb=round(rss / 1024, 1),
            publish_p50_ms=round(pct(published["rtt"], 50), 1),
            publish_p99_ms=round(pct(published["rtt"], 99), 1),
            publish_errors=published["errors"],
            publish_shed=published["shed"],
            publisher_cpu_util=round((pub1 - pub0) / dt, 2),
            per_worker=per_worker if workers > 1 else [],
        )
    except BaseException:
        print(f"{name} server log (tail):\n{server.log()}", file=sys.stderr)
        raise
    finally:
        if publisher is not None:
            publisher.close()
        if clients is not None:
            clients.close()
        server.close()


def spread_problems(row: Row) -> list[str]:
    """Why the workers did not share the load, if they did not (each should hold its part)."""
    problems = []
    n = len(row.per_worker)
    for w in row.per_worker:
        if w["connections"] < 0.05 * row.connected:
            problems.append(f"worker {w['pid']} held {w['connections']} of {row.connected} clients")
        if w["cpu_util"] < 0.1 * row.cpu_util / n:
            problems.append(f"worker {w['pid']} used {w['cpu_util']} CPU of {row.cpu_util}")
    return problems


def print_table(rows: list[Row], args: argparse.Namespace) -> None:
    print(
        f"\nworkers_load: {args.clients} clients, {args.orgs} orgs, {args.rate} events/s "
        f"published over HTTP, {args.seconds:g} s measured"
    )
    print(
        f"{'setup':<10}{'conn':>6}{'pub ev/s':>9}{'deliv ev/s':>11}{'ratio':>7}{'frames/s':>9}"
        f"{'p50':>7}{'p95':>7}{'p99 ms':>8}{'CPU':>6}{'µs/frame':>9}{'RSS MB':>8}"
        f"{'POST p99':>9}{'errors':>7}{'shed':>7}{'x1w µs/fr':>10}{'x1w p99':>8}"
    )
    for r in rows:
        print(
            f"{r.setup:<10}{r.connected:>6}{r.published_events_s:>9}{r.delivered_events_s:>11}"
            f"{r.delivered_ratio:>7}{r.frames_s:>9}{r.p50_ms:>7}{r.p95_ms:>7}{r.p99_ms:>8}"
            f"{r.cpu_util:>6}{r.cpu_us_per_frame:>9}{r.rss_mb:>8}{r.publish_p99_ms:>9}"
            f"{r.publish_errors:>7}{r.publish_shed:>7}{r.x_1w_cpu_per_frame:>10}{r.x_1w_p99:>8}"
        )
    for r in rows:
        for w in r.per_worker:
            print(f"  {r.setup} worker {w['pid']}: {w['connections']} clients, CPU {w['cpu_util']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--role", default="main", choices=["main", "publisher"])
    p.add_argument("--setups", default=",".join(SETUPS))
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--rate", type=int, default=5000)
    p.add_argument("--orgs", type=int, default=10)
    p.add_argument("--keys", type=int, default=200)
    # Shorter than the window, so a window never waits on the next tick (a 50 ms tick against
    # 50 ms windows aliases into about half the frames).
    p.add_argument("--tick-ms", type=float, default=20.0, help="one POST per org per tick")
    p.add_argument("--publish-conns", type=int, default=16, help="keep-alive HTTP connections")
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--window-ms", type=float, default=50.0, help="0 = the adaptive 30-150 ms")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.role == "publisher":
        run_publisher(args)
        return 0
    names = args.setups.split(",")
    unknown = [n for n in names if n not in SETUPS]
    if unknown:
        p.error(f"unknown set-ups {unknown}; choose from {', '.join(SETUPS)}")
    started = time.monotonic()
    rows: list[Row] = []
    for name in names:
        rows.append(run_setup(name, args))
        print(json.dumps(asdict(rows[-1])), flush=True)
    base = next((r for r in rows if r.setup == "1w"), None)
    for r in rows:
        if base is not None:
            r.x_1w_cpu_per_frame = round(r.cpu_us_per_frame / (base.cpu_us_per_frame or 1), 2)
            r.x_1w_delivered = round(r.delivered_events_s / (base.delivered_events_s or 1), 2)
            r.x_1w_p99 = round(r.p99_ms / (base.p99_ms or 1), 2)
    print_table(rows, args)
    wall = time.monotonic() - started
    print(f"wall time {wall:.0f} s")
    if wall > WALL_BUDGET_S:
        print(f"note: over the {WALL_BUDGET_S:g} s meant for the defaults", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=2))
    problems = [f"{r.setup}: {msg}" for r in rows for msg in spread_problems(r)]
    problems += [f"{r.setup}: no events delivered" for r in rows if not r.delivered_events_s]
    for msg in problems:
        print(f"FAILED {msg}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
