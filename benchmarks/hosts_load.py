"""Realtime across three hosts (network namespaces) against one instance alone, in one run.

Three hosts as in tests/streamcore_server/hosts.py: network namespaces on a bridge of this run's
own, one
`python -m streamcore_server serve` in each (HOST=<its address>, PORT=4000), a private redis-server
and a
private PostgreSQL on the bridge address. This process stays in the root namespace and is the
clients and the publisher. Without root it falls back to servers on loopback ports and says so.

1. latency: facts (non-conflatable events carrying their creation time) POSTed one per request to
   /v2/realtime/publish at `--rate`, received by `--subscribers` WebSocket clients per set-up:
   `1 instance` (a second server in host 1 on port 4001, no REDIS_URL: publish and subscribers
   on it) and `3 hosts` (REDIS_URL; published on host 1, subscribers on all three). Both run at
   once and are measured in `--rounds` alternating rounds (`--seconds` each in all), so both see
   the same background load: p50/p99 publish -> receive, on the publishing host and the others.
2. Redis per event: INFO commandstats / INFO stats deltas on the private Redis over the 3-host
   rounds, per published fact, less the rate of an idle interval just before them with the same
   servers and subscribers (lease refreshes, metrics).
3. resume: `--resume-clients` clients on host 1 (spread over `--resume-orgs` orgs, a few facts/s
   still published through hosts 2 and 3); host 1's server is SIGKILLed; each client reconnects at
   once to host 2 or 3 with its epoch and last_seq. Reported: time from the kill to each client's
   first frame on its new host (p50/p99/max), how many resumed, got a `reset` (by reason) or
   never got back within the deadline, why reconnects were retried, and the CPU of this process
   (all the clients) meanwhile.
4. CPU: one instance (host 2) with one org subscribed, its utime+stime from /proc over
   `--cpu-seconds`, idle and then while `--cpu-orgs` other orgs publish, round-robin at
   `--cpu-rate` events/s: straight into Redis through the server's own broker in this process
   (positions, history, the org's sharded channel), or `--cpu-via http` through host 1's publish
   endpoint. An instance subscribes only to the orgs it has subscribers for, so the loaded
   figure should stay near the idle one (when every instance received every org's messages, it
   grew with all orgs' traffic).

    .venv/bin/python -m benchmarks.hosts_load [--subscribers 30] [--rate 200] [--seconds 6]
        [--rounds 3] [--resume-clients 1000] [--cpu-orgs 10000] [--cpu-rate 2000]
        [--cpu-via redis|http] [--cpu-seconds 8] [--json out.json]

Everything shares this machine's cores (clients, publisher, three servers, Redis, PostgreSQL): the
ratios against the same-run baselines are the figures, not the absolute times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.ws_load import ROOT, SECRET, cpu_s, pct, raise_nofile, token_for

sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "streamcore_server")]
from hosts import SERVER_PORT, Backing, Network  # noqa: E402
from processes import ServeProcess, server_env  # noqa: E402

WALL_BUDGET_S = 180.0


@dataclass
class Latency:
    setup: str
    where: str  # subscribers on the publishing host, or on the other hosts
    subscribers: int
    published: int
    received: int
    expected: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    x_alone_p50: float = 0.0
    x_alone_p99: float = 0.0


@dataclass
class RedisCost:
    events: int
    commands_per_event: float
    bytes_in_per_event: float
    bytes_out_per_event: float
    idle_commands_s: float
    commands: dict[str, float] = field(default_factory=dict)  # per event, the busiest first


@dataclass
class Resume:
    clients: int
    connected: int
    back: int
    resumed: int
    resets: dict[str, int]
    failed: int
    failures: dict[str, int]
    retries: dict[str, int]
    client_cpu: float  # CPU s/s of this (the clients') process from the kill until all were back
    noticed_p50_ms: float
    noticed_max_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class Cpu:
    orgs: int
    via: str  # redis: PUBLISHed as a server does; http: through the publishing host
    seconds: float
    idle_cpu: float  # CPU seconds per second of the measured instance
    loaded_cpu: float
    x_idle: float
    published_s: float
    publisher_cpu: float
    subscribed_org_received: bool


# -- the servers ---------------------------------------------------------------------------------


class Cluster:
    """Servers on the hosts of `network`, all on `backing`'s PostgreSQL (Redis when asked)."""

    def __init__(self, network: Network, backing: Backing, workdir: Path) -> None:
        self.network = network
        self.backing = backing
        self.workdir = workdir
        self.servers: list[ServeProcess] = []
        self._n = 0

    def start(
        self, indices: list[int], redis: bool, port: int = SERVER_PORT, **env: Any
    ) -> list[ServeProcess]:
        assert self.backing.redis is not None
        common = {
            "DATABASE_URL": self.backing.database_url,
            "JWT_SECRET": SECRET,  # benchmarks.ws_load.token_for signs with it
            "SEED_DEMO": "0",
            "REALTIME_MAX_CONNECTIONS_PER_USER": "1000000",
            "REALTIME_MAX_CONNECTIONS_PER_ORG": "1000000",
            "LOG_LEVEL": "warning",
            **({"REDIS_URL": self.backing.redis.url} if redis else {}),
            **{k: str(v) for k, v in env.items()},
        }
        started = []
        for i in indices:
            host = self.network.hosts[i]
            self._n += 1
            d = self.workdir / f"{host.name}-{self._n}"
            d.mkdir()
            started.append(
                ServeProcess(
                    d,
                    server_env(d, **common),
                    host.name,
                    host=host.address,
                    port=port if host.netns else None,
                    wrap=host.wrap,
                    wait=False,
                )
            )
            self.servers.append(started[-1])
        for s in started:
            s.wait_ready()
        return started

    def stop_all(self) -> None:
        for s in self.servers:
            with contextlib.suppress(Exception):
                s.stop()
        self.servers = []


async def seed(database_url: str, orgs: int) -> None:
    """Orgs and users 1..orgs (user id = org id), the ids benchmarks.ws_load's tokens name."""
    from sqlalchemy.dialects.postgresql import insert

    from streamcore_server import storage

    engine = storage.create_engine(database_url)
    try:
        await storage.migrate(engine)
        now = storage.utcnow()
        async with engine.begin() as conn:
            for start in range(1, orgs + 1, 5000):
                ids = range(start, min(orgs, start + 4999) + 1)
                await conn.execute(
                    insert(storage.orgs).on_conflict_do_nothing(),
                    [{"id": o, "name": f"bench-{o}", "created_at": now} for o in ids],
                )
                await conn.execute(
                    insert(storage.users).on_conflict_do_nothing(),
                    [
                        {
                            "id": o,
                            "org_id": o,
                            "email": f"u{o}@bench",
                            "password_hash": "!",
                            "created_at": now,
                        }
                        for o in ids
                    ],
                )
    finally:
        await engine.dispose()


# -- clients -------------------------------------------------------------------------------------


def fact(n: int) -> bytes:
    import orjson

    return orjson.dumps(
        {"events": [{"type": "t", "conflatable": False, "data": {"n": n, "ts": time.time()}}]}
    )


async def connect(url: str, org: int, **query: Any) -> Any:
    from urllib.parse import urlencode

    from websockets.asyncio.client import connect as ws_connect

    qs = f"?{urlencode(query)}" if query else ""
    return await ws_connect(
        f"{url}{qs}",
        additional_headers={"Authorization": f"Bearer {token_for(org)}"},
        compression=None,
        open_timeout=30,
        max_size=64 * 1024 * 1024,
    )


class Subscriber:
    """One stream: decodes every frame and keeps each fact's delay since its creation."""

    def __init__(self, ws: Any, where: str) -> None:
        self.ws = ws
        self.where = where
        self.delays: list[float] = []
        self.counting = False
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        from streamcore.protocol import FrameKind, decode_frame

        with contextlib.suppress(ConnectionClosed):
            async for message in self.ws:
                now = time.time()
                frame = decode_frame(message)
                if frame.kind != FrameKind.EVENTS or not self.counting:
                    continue
                for e in frame.events:
                    if e.get("type") == "t":
                        self.delays.append(now - e["data"]["ts"])

    async def close(self) -> None:
        await self.ws.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


async def publish_for(
    base: str, org: int, rate: float, seconds: float, start: int = 0
) -> tuple[int, int]:
    """POST one fact per request at `rate`/s for `seconds`; return (accepted, errors)."""
    import httpx2

    loop = asyncio.get_running_loop()
    headers = {"Authorization": f"Bearer {token_for(org)}", "Content-Type": "application/json"}
    ok = errors = 0
    inflight: set[asyncio.Task[None]] = set()
    async with httpx2.AsyncClient(base_url=base, headers=headers, timeout=10) as client:

        async def post(n: int) -> None:
            nonlocal ok, errors
            try:
                r = await client.post("/v2/realtime/publish", content=fact(n))
                ok += r.status_code == 202
                errors += r.status_code != 202
            except httpx2.HTTPError:
                errors += 1

        began = loop.time()
        n = 0
        while (elapsed := loop.time() - began) < seconds:
            for _ in range(int(rate * elapsed) - n):
                if len(inflight) < 64:
                    task = loop.create_task(post(start + n))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                else:
                    errors += 1  # shed: the server is not keeping up
                n += 1
            await asyncio.sleep(0.005)
        if inflight:
            await asyncio.wait(inflight, timeout=10)
    return ok, errors


async def latency_run(
    alone: ServeProcess, three: list[ServeProcess], redis: Any, args: argparse.Namespace
) -> tuple[list[Latency], RedisCost]:
    """Both set-ups at once, measured in alternating rounds so both see the same noisy machine.

    `--subscribers` on the lone instance and as many spread over the three hosts, all of org 1;
    facts are published on the lone instance or on host 1 (which has no fan-out between them,
    so each set-up's subscribers only see its own facts). Redis is counted over the 3-host
    rounds (each with its windows' flush), less the rate of an idle interval before them.
    """
    subs: list[Subscriber] = []
    try:
        for i in range(args.subscribers):
            subs.append(Subscriber(await connect(alone.ws, 1), "1 instance"))
            s = three[i % 3]
            where = "3 hosts, publishing host" if s is three[0] else "3 hosts, other hosts"
            subs.append(Subscriber(await connect(s.ws, 1), where))
        await asyncio.sleep(0.5)  # every hello read
        await publish_for(alone.http, 1, args.rate, 1.0)  # warm-up
        await publish_for(three[0].http, 1, args.rate, 1.0)
        await asyncio.sleep(0.5)
        idle0, t0 = redis_counts(redis), time.monotonic()
        # Long enough for several lease refreshes (every lease/3) and a metrics publish (5 s).
        await asyncio.sleep(max(args.seconds, 5.0))
        idle1, t1 = redis_counts(redis), time.monotonic()
        for sub in subs:
            sub.counting = True
        published = {"1 instance": 0, "3 hosts": 0}
        busy = [0.0, 0.0, 0.0]
        busy_s = 0.0
        calls: dict[str, int] = {}
        errors = 0
        for _ in range(args.rounds):
            ok, err = await publish_for(alone.http, 1, args.rate, args.seconds / args.rounds)
            published["1 instance"] += ok
            errors += err
            await asyncio.sleep(0.5)  # the last windows flush
            b0, tb0 = redis_counts(redis), time.monotonic()
            ok, err = await publish_for(three[0].http, 1, args.rate, args.seconds / args.rounds)
            published["3 hosts"] += ok
            errors += err
            await asyncio.sleep(0.5)
            b1, tb1 = redis_counts(redis), time.monotonic()
            for j in range(3):
                busy[j] += b1[j] - b0[j] - 2 * (j == 0)  # less the two INFO calls
            for k, v in b1[3].items():
                calls[k] = calls.get(k, 0) + v - b0[3].get(k, 0)
            busy_s += tb1 - tb0
        cost = redis_cost(idle0, idle1, t1 - t0, busy, busy_s, calls, published["3 hosts"])
        rows = []
        for where in ("1 instance", "3 hosts, publishing host", "3 hosts, other hosts"):
            group = [s for s in subs if s.where == where]
            delays = [d for s in group for d in s.delays]
            n = published[where.split(",")[0]]
            rows.append(
                Latency(
                    setup=where.split(",")[0],
                    where=where.split(", ")[1] if "," in where else "publishing host",
                    subscribers=len(group),
                    published=n,
                    received=len(delays),
                    expected=n * len(group),
                    p50_ms=round(pct(delays, 50), 1),
                    p99_ms=round(pct(delays, 99), 1),
                    max_ms=round(max(delays, default=float("nan")) * 1000, 1),
                )
            )
        if errors:
            print(f"latency: {errors} publishes failed or shed", file=sys.stderr)
        return rows, cost
    finally:
        for sub in subs:
            await sub.close()


Counts = tuple[int, int, int, dict[str, int]]


def redis_counts(client: Any) -> Counts:
    """Commands processed, bytes in, bytes out, and calls by command, from INFO."""
    stats = client.info("stats")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in client.info("commandstats").items()}
    return (
        int(stats["total_commands_processed"]),
        int(stats["total_net_input_bytes"]),
        int(stats["total_net_output_bytes"]),
        calls,
    )


def redis_cost(
    idle0: Counts,
    idle1: Counts,
    idle_s: float,
    busy: list[float],
    busy_s: float,
    calls: dict[str, int],
    events: int,
) -> RedisCost:
    idle = [(idle1[i] - idle0[i] - 2 * (i == 0)) / idle_s for i in range(3)]
    net = [busy[i] - idle[i] * busy_s for i in range(3)]
    n = max(1, events)
    calls.pop("info", None)
    idle_calls = {k: (v - idle0[3].get(k, 0)) / idle_s for k, v in idle1[3].items()}
    net_calls = {k: (v - idle_calls.get(k, 0.0) * busy_s) / n for k, v in calls.items()}
    busiest = sorted(((v, k) for k, v in net_calls.items() if v >= 0.005), reverse=True)[:8]
    return RedisCost(
        events=events,
        commands_per_event=round(net[0] / n, 2),
        bytes_in_per_event=round(net[1] / n),
        bytes_out_per_event=round(net[2] / n),
        idle_commands_s=round(idle[0], 1),
        commands={k: round(v, 2) for v, k in busiest},
    )


async def resume_run(three: list[ServeProcess], args: argparse.Namespace) -> Resume:
    """`--resume-clients` on host 1; host 1 dies; each reconnects at once to host 2 or 3."""
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    from streamcore.protocol import FrameKind, decode_frame

    victim, *others = three
    loop = asyncio.get_running_loop()
    killed = asyncio.Event()
    t_kill = 0.0
    results: list[tuple[str, float]] = []  # (resumed | reset:<reason> | failed, seconds)
    noticed: list[float] = []  # kill -> the client saw its connection end
    retries: list[str] = []  # why a reconnect failed (it is retried after 0.1 s)
    marks: list[tuple[float, float]] = []  # (when, this process's CPU time) at each first frame
    failures: list[str] = []  # why a client never got its first frame back
    connected = 0

    async def client(i: int) -> None:
        nonlocal connected
        org = i % args.resume_orgs + 1
        epoch = None
        last_seq = 0
        try:
            ws = await connect(victim.ws, org)
        except (OSError, InvalidStatus):
            return
        connected += 1
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                frame = decode_frame(message)
                if frame.kind == FrameKind.CONTROL and frame.events[0]["type"] == "hello":
                    epoch, last_seq = frame.events[0]["epoch"], frame.events[0]["seq"]
                elif frame.kind == FrameKind.EVENTS:
                    last_seq = frame.seq
        await killed.wait()
        noticed.append(loop.time() - t_kill)
        target = others[i % len(others)]
        deadline = t_kill + args.resume_deadline
        while loop.time() < deadline:
            try:
                ws = await connect(target.ws, org, epoch=epoch, last_seq=last_seq)
            except InvalidStatus as exc:
                why = (exc.response.body or b"")[:200].decode(errors="replace")
                code = why.split('"code":"', 1)[-1].split('"', 1)[0] if '"code":"' in why else ""
                retries.append(f"HTTP {exc.response.status_code} {code}".strip())
                await asyncio.sleep(0.1)
                continue
            except OSError as exc:
                retries.append(type(exc).__name__)
                await asyncio.sleep(0.1)
                continue
            try:
                first = decode_frame(await asyncio.wait_for(ws.recv(), deadline - loop.time()))
                took = loop.time() - t_kill
                marks.append((loop.time(), time.process_time()))
                outcome = "resumed"
                with contextlib.suppress(TimeoutError):
                    # A reset, if any, comes right after the hello; facts keep coming otherwise.
                    nxt = decode_frame(await asyncio.wait_for(ws.recv(), 2.0))
                    if nxt.kind == FrameKind.CONTROL and nxt.events[0]["type"] == "reset":
                        outcome = f"reset:{nxt.events[0].get('reason')}"
                if first.kind == FrameKind.CONTROL and first.events[0]["type"] == "reset":
                    outcome = f"reset:{first.events[0].get('reason')}"
                results.append((outcome, took))
            except (ConnectionClosed, TimeoutError) as exc:
                results.append(("failed", loop.time() - t_kill))
                failures.append(type(exc).__name__)
            finally:
                await ws.close()
            return
        results.append(("failed", loop.time() - t_kill))
        failures.append("deadline")

    tasks = []
    for i in range(args.resume_clients):
        tasks.append(loop.create_task(client(i)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # connect in steps of 50: a burst, not a SYN flood
    began = loop.time()
    while connected < args.resume_clients and loop.time() - began < 60:
        if all(t.done() for t in tasks):
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # every hello read

    async def trickle() -> None:
        # A few facts/s per org through the surviving hosts, so there is something to resume.
        await asyncio.gather(
            *(
                publish_for(others[o % 2].http, o + 1, 2.0, args.resume_deadline)
                for o in range(args.resume_orgs)
            )
        )

    pub = loop.create_task(trickle())
    await asyncio.sleep(1.0)
    t_kill, cpu0 = loop.time(), time.process_time()
    await asyncio.to_thread(victim.kill)
    killed.set()
    _, pending = await asyncio.wait(tasks, timeout=args.resume_deadline + 5)
    for task in pending:  # never saw its connection end, or never got an answer
        task.cancel()
    failures += ["still waiting"] * len(pending)
    # This process is every client: how busy it was until the last one was back says how much
    # of the wait is its own.
    last = max(marks, default=(loop.time(), time.process_time()))
    busy = (last[1] - cpu0) / max(1e-3, last[0] - t_kill)
    pub.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await pub
    back = [t for outcome, t in results if outcome != "failed"]
    resets: dict[str, int] = {}
    for outcome, _ in results:
        if outcome.startswith("reset:"):
            resets[outcome[6:]] = resets.get(outcome[6:], 0) + 1
    return Resume(
        clients=args.resume_clients,
        connected=connected,
        back=len(back),
        resumed=sum(1 for o, _ in results if o == "resumed"),
        resets=resets,
        failed=connected - len(back),
        failures={f: failures.count(f) for f in sorted(set(failures))},
        retries={r: retries.count(r) for r in sorted(set(retries))},
        client_cpu=round(busy, 2),
        noticed_p50_ms=round(pct(noticed, 50)),
        noticed_max_ms=round(max(noticed, default=float("nan")) * 1000),
        p50_ms=round(pct(back, 50)),
        p99_ms=round(pct(back, 99)),
        max_ms=round(max(back, default=float("nan")) * 1000),
    )


class NoSink:
    """A broker that only publishes delivers nothing: it never subscribes."""

    def on_batch(self, org_id: int, epoch: str, batch: Any) -> None:
        pass

    def on_reset(self, org_id: int, epoch: str, position: int, reason: str) -> None:
        pass


def direct_publisher(redis_url: str) -> Any:
    """The server's own Redis broker, in this process, publishing and never subscribing.

    So the load is what a publishing instance sends (positions, history and the org's sharded
    channel, one script call per org and batch) without an HTTP request per event. None when
    that code is not there: the run then publishes through a host's endpoint instead.
    """
    try:
        from streamcore_server.realtime.redis_broker import RedisBroker
        from streamcore_server.settings import Settings
    except ImportError:
        return None
    d = Settings()  # the servers run with the defaults of these
    return RedisBroker(
        redis_url,
        d.realtime_redis_prefix,
        NoSink(),
        history_events=d.realtime_history_events,
        history_age_s=d.realtime_history_age_s,
    )


def event_for(org: int, n: int) -> Any:
    """A fact for `org`, encoded as the publish endpoint encodes one."""
    import orjson

    from streamcore_server.events import Event

    body = {"type": "t", "orgId": org, "conflatable": False, "data": {"n": n, "ts": time.time()}}
    return Event(org, None, False, orjson.dumps(body))


async def reaches(sub: Subscriber, broker: Any) -> bool:
    """Whether a fact published straight into Redis for org 1 reaches org 1's subscriber."""
    before = len(sub.delays)
    await broker.publish_now([event_for(1, -1)])
    deadline = time.monotonic() + 5
    while len(sub.delays) == before and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return len(sub.delays) > before


async def redis_load(broker: Any, args: argparse.Namespace, seconds: float) -> int:
    """Publish one fact per org round-robin at `--cpu-rate`/s, one broker call per 10 ms tick."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    n = 0
    while (elapsed := loop.time() - began) < seconds:
        owed = int(args.cpu_rate * elapsed) - n
        if owed > 0:
            await broker.publish_now(
                [event_for((n + i) % args.cpu_orgs + 2, n + i) for i in range(owed)]
            )
            n += owed
        await asyncio.sleep(0.01)
    return n


async def http_load(publisher: ServeProcess, args: argparse.Namespace, seconds: float) -> int:
    """POST one fact per org round-robin at `--cpu-rate`/s to the publishing host; count 202s."""
    import httpx2

    loop = asyncio.get_running_loop()
    ok = 0
    tokens = {o: token_for(o) for o in range(2, args.cpu_orgs + 2)}
    limits = httpx2.Limits(max_connections=16, max_keepalive_connections=16)
    inflight: set[asyncio.Task[None]] = set()
    async with httpx2.AsyncClient(base_url=publisher.http, limits=limits, timeout=10) as http:

        async def post(org: int, n: int) -> None:
            nonlocal ok
            headers = {"Authorization": f"Bearer {tokens[org]}", "Content-Type": "application/json"}
            with contextlib.suppress(httpx2.HTTPError):
                r = await http.post("/v2/realtime/publish", content=fact(n), headers=headers)
                ok += r.status_code == 202

        began = loop.time()
        n = 0
        while (elapsed := loop.time() - began) < seconds:
            for _ in range(int(args.cpu_rate * elapsed) - n):
                if len(inflight) < 64:  # else shed: the publishing host is not keeping up
                    task = loop.create_task(post(n % args.cpu_orgs + 2, n))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                n += 1
            await asyncio.sleep(0.005)
        if inflight:
            await asyncio.wait(inflight, timeout=10)
    return ok


async def cpu_run(
    measured: ServeProcess, publisher: ServeProcess, redis_url: str, args: argparse.Namespace
) -> Cpu:
    """The measured instance's CPU with org 1 subscribed on it: idle, then other orgs publish."""
    broker = direct_publisher(redis_url) if args.cpu_via == "redis" else None
    sub = Subscriber(await connect(measured.ws, 1), "measured")
    sub.counting = True
    try:
        await asyncio.sleep(1.0)
        if broker is not None and not await reaches(sub, broker):
            # Straight into Redis would measure nothing: the server does not read it that way.
            print("cpu: a direct publish did not reach the subscriber; using http", file=sys.stderr)
            await broker.stop()
            broker = None
        via = "redis" if broker is not None else "http"
        pid = measured.pid
        c0, t0 = cpu_s(pid), time.monotonic()
        await asyncio.sleep(args.cpu_seconds)
        c1, t1 = cpu_s(pid), time.monotonic()
        idle = (c1 - c0) / (t1 - t0)

        async def load(seconds: float) -> int:
            if broker is not None:
                return await redis_load(broker, args, seconds)
            return await http_load(publisher, args, seconds)

        await load(1.0)  # warm-up
        p0 = cpu_s(publisher.pid)
        c2, t2 = cpu_s(pid), time.monotonic()
        sent = await load(args.cpu_seconds)
        c3, t3 = cpu_s(pid), time.monotonic()
        p1 = cpu_s(publisher.pid)
        loaded = (c3 - c2) / (t3 - t2)
        # The subscribed org still gets its own events on the measured instance.
        before = len(sub.delays)
        await publish_for(publisher.http, 1, 20, 0.5)
        deadline = time.monotonic() + 5
        while len(sub.delays) == before and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return Cpu(
            orgs=args.cpu_orgs,
            via=via,
            seconds=round(t3 - t2, 2),
            idle_cpu=round(idle, 3),
            loaded_cpu=round(loaded, 3),
            x_idle=round(loaded / idle, 1) if idle else 0.0,  # 0: too idle to tick
            published_s=round(sent / (t3 - t2)),
            publisher_cpu=round((p1 - p0) / (t3 - t2), 2),
            subscribed_org_received=len(sub.delays) > before,
        )
    finally:
        await sub.close()
        if broker is not None:
            await broker.stop()


# -- the run -------------------------------------------------------------------------------------


def print_report(
    network: Network,
    latency: list[Latency],
    cost: RedisCost,
    resume: Resume,
    cpu: Cpu,
    args: argparse.Namespace,
) -> None:
    where = (
        f"network namespaces on bridge {network.address}/24"
        if network.mode == "netns"
        else network.reason
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\nhosts_load: 3 hosts as {where}; shared machine, load average at the end {load}")
    print(
        f"latency: {args.subscribers} subscribers (org 1), 1 fact per POST at {args.rate}/s "
        f"for {args.seconds:g} s, windows {args.window_ms:g} ms"
    )
    print(
        f"{'set-up':<12}{'subscribers on':<17}{'subs':>5}{'published':>10}{'received':>10}"
        f"{'expected':>10}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'x1 p50':>8}{'x1 p99':>8}"
    )
    for r in latency:
        print(
            f"{r.setup:<12}{r.where:<17}{r.subscribers:>5}{r.published:>10}{r.received:>10}"
            f"{r.expected:>10}{r.p50_ms:>8}{r.p99_ms:>8}{r.max_ms:>8}{r.x_alone_p50:>8}"
            f"{r.x_alone_p99:>8}"
        )
    print(
        f"redis per published event (3 hosts, {cost.events} events): "
        f"{cost.commands_per_event} commands, {cost.bytes_in_per_event} B in, "
        f"{cost.bytes_out_per_event} B out (less the idle background of "
        f"{cost.idle_commands_s} commands/s); by command: "
        + ", ".join(f"{k} {v}" for k, v in cost.commands.items())
    )
    resets = ", ".join(f"{k} {v}" for k, v in sorted(resume.resets.items())) or "none"
    print(
        f"resume after SIGKILL of host 1: {resume.connected}/{resume.clients} clients connected, "
        f"{resume.back} back on hosts 2-3 (resumed {resume.resumed}; reset: {resets}; failed "
        f"{resume.failed} {resume.failures or ''}; reconnects retried: "
        f"{resume.retries or 'none'}; the clients' process at {resume.client_cpu} CPU); "
        "kill -> first frame p50 "
        f"{resume.p50_ms} ms, p99 {resume.p99_ms} ms, max {resume.max_ms} ms (kill -> close "
        f"seen: p50 {resume.noticed_p50_ms} ms, max {resume.noticed_max_ms} ms)"
    )
    print(
        f"cpu of one instance, 1 org subscribed, {cpu.seconds:g} s: idle {cpu.idle_cpu}, with "
        f"{cpu.orgs} other orgs publishing {cpu.published_s} events/s "
        f"({'straight into Redis' if cpu.via == 'redis' else 'through another host'}) "
        f"{cpu.loaded_cpu} ({cpu.x_idle}x idle"
        + (f"; the publishing host {cpu.publisher_cpu}" if cpu.via == "http" else "")
        + f"; subscribed org still delivered: {cpu.subscribed_org_received})"
    )


async def run(network: Network, backing: Backing, args: argparse.Namespace) -> dict[str, Any]:
    import redis

    assert backing.redis is not None
    workdir = Path(tempfile.mkdtemp(prefix="hosts_load_"))
    cluster = Cluster(network, backing, workdir)
    windows = {"WINDOW_MIN_MS": args.window_ms, "WINDOW_MAX_MS": args.window_ms}
    client = redis.Redis(host=backing.redis.host, port=backing.redis.port)
    try:
        await seed(backing.local_database_url, max(args.cpu_orgs + 1, args.resume_orgs))
        three = cluster.start([0, 1, 2], redis=True, REALTIME_LEASE_S=5, **windows)
        (alone,) = cluster.start([0], redis=False, port=SERVER_PORT + 1, **windows)
        latency, cost = await latency_run(alone, three, client, args)
        alone.stop()
        base = latency[0]
        for r in latency:
            r.x_alone_p50 = round(r.p50_ms / base.p50_ms, 2) if base.p50_ms else 0.0
            r.x_alone_p99 = round(r.p99_ms / base.p99_ms, 2) if base.p99_ms else 0.0
        resume = await resume_run(three, args)
        cluster.stop_all()
        client.flushall()
        publisher, measured = cluster.start([0, 1], redis=True, **windows)
        cpu = await cpu_run(measured, publisher, backing.redis.url, args)
    except BaseException:
        for s in cluster.servers:
            if s.log_path.exists():
                tail = s.log_path.read_text(errors="replace")[-2000:]
                print(f"--- {s.log_path}\n{tail}", file=sys.stderr)
        raise
    finally:
        cluster.stop_all()
        client.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print_report(network, latency, cost, resume, cpu, args)
    return {
        "loadavg_at_end": os.getloadavg(),
        "cpus": os.cpu_count(),
        "hosts": network.mode,
        "fallback": network.reason,
        "latency": [asdict(r) for r in latency],
        "redis": asdict(cost),
        "resume": asdict(resume),
        "cpu": asdict(cpu),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--subscribers", type=int, default=30)
    p.add_argument("--rate", type=float, default=200.0, help="facts/s in the latency runs")
    p.add_argument("--seconds", type=float, default=6.0, help="per set-up, over all rounds")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per set-up")
    p.add_argument("--window-ms", type=float, default=30.0)
    p.add_argument("--resume-clients", type=int, default=1000)
    p.add_argument("--resume-orgs", type=int, default=10)
    p.add_argument("--resume-deadline", type=float, default=30.0)
    p.add_argument("--cpu-orgs", type=int, default=10_000)
    p.add_argument("--cpu-rate", type=float, default=2000.0, help="events/s over the orgs")
    p.add_argument("--cpu-via", choices=["redis", "http"], default="redis")
    p.add_argument("--cpu-seconds", type=float, default=8.0)
    p.add_argument("--json")
    args = p.parse_args(argv)
    raise_nofile(args.resume_clients * 2 + args.subscribers)
    started = time.monotonic()
    network = Network(3)
    backing: Backing | None = None
    try:
        backing = Backing(network)
        try:
            import uvloop

            result = uvloop.run(run(network, backing, args))
        except ImportError:
            result = asyncio.run(run(network, backing, args))
    finally:
        if backing is not None:
            backing.stop()
        network.close()
    wall = time.monotonic() - started
    print(f"wall time {wall:.0f} s")
    if wall > WALL_BUDGET_S:
        print(f"note: over the {WALL_BUDGET_S:g} s meant for the defaults", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    problems = [
        f"{r['setup']} / {r['where']}: nothing received"
        for r in result["latency"]
        if not r["received"]
    ]
    if not result["resume"]["back"]:
        problems.append("resume: no client got back after the kill")
    for msg in problems:
        print(f"FAILED {msg}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
