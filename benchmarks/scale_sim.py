"""Simulate 100,000 org channels, most idle and a hot few busy, with thousands of connections.

One server process (the app under uvicorn with our prepared-frame protocol, on uvloop, no
Redis) takes commands on stdin and answers one JSON line each: `prime N` (give idle orgs
channels until N have one: one event each, then wait for the flush, so each holds one frame of
history as a quiet org does), `load R` (R events/s from a generator inside the server, over the
active orgs by Zipf weight, 10 ms ticks), `stats`, `sweep` (one timed Hub.sweep() and one timed
full collection), `drop` (a sweep as if every history had aged out), `quit`. Counting WebSocket
clients (ws_load's) run in two client processes, placed on the active orgs by the same Zipf law
(the hottest get hundreds), a share of them on idle orgs.

Phases, all in one server: RSS baseline -> connect the clients (RSS per connection) -> idle
channels in steps 0, 1,000, 10,000, ... up to every org that is not active, so that the last
step holds --orgs channels -> `drop` back to the first step's idle channels. At each step the
same hot load, a warm-up, then a measured interval. Reported per step: server CPU per second
and per event, time inside Hub.flush_due (wall and this thread's CPU, per second, per flush, per
frame built), frames built and sent per second (and received, estimated by the clients from
bytes), collector time, and delivery latency (event creation -> received by a sampled client)
for clients of the hot orgs (the top --hot ranks) and of the other active orgs. Then: RSS per
connection and per idle channel, the cost of a sweep and of a full collection at --orgs
channels, and the verdict: CPU/s and flush CPU/s at the last step over the mean of the two
baseline steps must stay <= 1.2x (idle channels cost memory, not CPU).

Choices the measurements led to:

- The baseline is measured twice, first and after `drop`: the machine is shared and its load
  drifts by 10-20 % over a minute, which a single baseline would charge to the idle channels.
- Flush time is this thread's CPU time (time.thread_time) for the verdict; wall time counts the
  preemptions by other processes that land inside a flush. Both are reported.
- RSS is read with the load stopped, right around each prime: the active orgs' histories grow
  while the load runs and would be charged to the idle channels otherwise.
- REALTIME_HISTORY_AGE_S is raised (--history-age-s, 600) so that no sweep runs inside a
  measured interval and the primed channels survive the run. One full Hub.sweep() is timed at
  the end; the hub's own timer walks the channels SWEEP_CHUNK per loop turn, so the longest
  stall it causes is that time scaled down to one chunk.
- Python's collector is timed (gc.callbacks): 100,000 channels are over a million tracked
  objects, so a full collection grows with idle channels even though flushing does not.
- uvicorn's WebSocket pings are off: the counting clients never answer one, and uvicorn would
  close every connection 40 s into the run. The clients are ws_load's client processes, one
  measure/report interval per step over the same connections.
- The `empty` column is the share of flush_due calls that found no window due. uvloop's clock
  counts whole milliseconds, so a timer set for a fractional deadline fires up to 1 ms early,
  finds nothing, and was re-armed for the same deadline until the clock ticked over; the hub now
  rounds its deadlines up to a whole millisecond, and the column shows it stays near 0.

    .venv/bin/python -m benchmarks.scale_sim [--orgs 100000] [--connections 4000]
        [--rate 5000] [--seconds 8] [--json out.json]

The clients share the machine's cores with the server: read CPU and latency as relative
between steps of the same run, not as absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import resource
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.ws_load import (
    ENV,
    ROOT,
    SECRET,
    Clients,
    free_port,
    pct,
    rss_kb,
    seed_bench_users,
    stop,
    wait_port,
)
from streamcore_server.realtime.hub import SWEEP_CHUNK

FLAT_TARGET = 1.2  # last step over the baselines: CPU/s and flush CPU/s
PRIME_CHUNK = 2000  # events between yields to the loop while priming


def zipf_weights(n: int, s: float) -> list[float]:
    return [r**-s for r in range(1, n + 1)]


def place(total: int, active: int, orgs: int, idle_share: float, s: float, seed: int) -> list[int]:
    """Return the org of each connection: Zipf over orgs 1..active, a share on idle orgs."""
    n_idle = round(total * idle_share) if orgs > active else 0
    n_active = total - n_idle
    weights = zipf_weights(active, s)
    norm = sum(weights)
    exact = [n_active * w / norm for w in weights]
    counts = [int(e) for e in exact]
    # The largest remainders get one more, so the counts add up to n_active exactly.
    short = n_active - sum(counts)
    for rank in sorted(range(active), key=lambda r: exact[r] - counts[r], reverse=True)[:short]:
        counts[rank] += 1
    placed = [org for org, c in enumerate(counts, 1) for _ in range(c)]
    step = max(1, (orgs - active) // max(1, n_idle))
    placed += [active + 1 + (i * step) % (orgs - active) for i in range(n_idle)]
    # Mixed so both client processes, and the one-in-50 sampled clients, see every kind of org.
    random.Random(seed).shuffle(placed)
    return placed


# -- the server ----------------------------------------------------------------------------------


class Meter:
    """Cumulative time inside Hub.flush_due, Hub.sweep and the garbage collector."""

    def __init__(self, hub: Any) -> None:
        self.flush_s = 0.0
        self.flush_cpu_s = 0.0  # this thread's CPU: unlike wall time, not charged for preemption
        self.flushes = 0
        self.built = 0
        self.empty = 0  # flushes that found no window due
        self.sweep_s = 0.0
        self.sweeps = 0
        self.gc_s = 0.0
        self.gc_full = 0
        self.gc_max_s = 0.0  # since the last stats
        self._gc_t0 = 0.0
        flush_due, sweep = hub.flush_due, hub.sweep

        # Instance attributes shadow the methods: _on_timer and _sweep_timer call these.
        def timed_flush() -> int:
            t0, c0 = time.perf_counter(), time.thread_time()
            built = flush_due()
            self.flush_cpu_s += time.thread_time() - c0
            self.flush_s += time.perf_counter() - t0
            self.flushes += 1
            self.built += built
            self.empty += not built
            return int(built)

        def timed_sweep(channels: Any = None) -> int:  # the hub's timer sweeps in chunks
            t0 = time.perf_counter()
            dropped = sweep(channels)
            self.sweep_s += time.perf_counter() - t0
            self.sweeps += 1
            return int(dropped)

        hub.flush_due, hub.sweep = timed_flush, timed_sweep
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_t0 = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_t0
        self.gc_s += took
        self.gc_max_s = max(self.gc_max_s, took)
        self.gc_full += info["generation"] == 2


class Quiet:
    """A subscriber that keeps an idle org's channel open and is sent nothing (none arrives)."""

    def __init__(self, org_id: int) -> None:
        from streamcore import Codec

        self.id, self.org_id, self.codec = f"quiet-{org_id}", org_id, Codec.NONE
        self.channel: Any = None
        self.group: Any = None
        self.close_code = None

    def deliver(self, frame: Any) -> None:
        pass

    def send_control(self, frame: Any) -> None:
        pass


class Simulation:
    """The commands of the control loop, run on the server's event loop."""

    def __init__(self, app: Any, args: argparse.Namespace) -> None:
        import orjson

        from streamcore_server.events import Event

        self.app, self.args = app, args
        self.hub = app.state.hub
        self.meter = Meter(self.hub)
        self.orjson, self.Event = orjson, Event
        self.next_idle = args.active + 1
        self.quiet: list[Quiet] = []  # the watchers that keep idle orgs' channels open
        self.load_task: asyncio.Task[None] | None = None
        self.dropped_ticks = 0
        self.n = 0

    def publish(self, org: int, key: str) -> None:
        body = {"type": "quote", "orgId": org, "key": key, "data": {"n": self.n, "ts": time.time()}}
        self.n += 1
        self.app.state.events.publish(self.Event(org, key, True, self.orjson.dumps(body)))

    def active_channels(self) -> int:
        return sum(1 for org in range(1, self.args.active + 1) if (org, None) in self.hub._channels)

    async def prime(self, target: int) -> dict[str, Any]:
        """Give idle orgs channels until `target` idle orgs have one; wait for their flush.

        Only a watched org has a channel (an unwatched one costs nothing at all): each idle org
        gets a watcher that reads nothing, standing for a dashboard left open on a quiet org.
        """
        t0 = time.perf_counter()
        need = target - (len(self.hub._channels) - self.active_channels())
        added = 0
        while added < need and self.next_idle <= self.args.orgs:
            org = self.next_idle
            self.next_idle += 1
            if (org, None) in self.hub._channels:  # an idle org with subscribers
                continue
            watcher = Quiet(org)
            await self.hub.subscribe(watcher, None, None, None)
            self.quiet.append(watcher)
            self.publish(org, "k0")
            added += 1
            if added % PRIME_CHUNK == 0:
                await asyncio.sleep(0)
        deadline = time.monotonic() + 30
        while len(self.hub.scheduler) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return {"added": added, "seconds": time.perf_counter() - t0, **self.stats()}

    def load(self, rate: int) -> dict[str, Any]:
        if self.load_task is not None:
            self.load_task.cancel()
            self.load_task = None
        if rate > 0:
            self.load_task = asyncio.get_running_loop().create_task(self.generate(rate))
        return {"rate": rate}

    async def generate(self, rate: int) -> None:
        """`rate` events/s in 10 ms ticks over the active orgs by Zipf weight, until cancelled."""
        args = self.args
        rng = random.Random(args.seed)
        ranks = range(1, args.active + 1)
        cum, total = [], 0.0
        for w in zipf_weights(args.active, args.zipf):
            total += w
            cum.append(total)
        keys = [f"k{i}" for i in range(args.keys)]
        loop = asyncio.get_running_loop()
        tick, owed = 0.01, 0.0
        next_at = loop.time()
        while True:
            owed += rate * tick
            count, owed = int(owed), owed - int(owed)
            for org in rng.choices(ranks, cum_weights=cum, k=count):
                self.publish(org, rng.choice(keys))
            next_at += tick
            late = loop.time() - next_at
            if late > 0.5:  # a stalled loop drops ticks rather than bursting to catch up
                self.dropped_ticks += int(late / tick)
                next_at = loop.time()
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    def sweep(self) -> dict[str, Any]:
        """Time one sweep over every channel (none is old enough to go) and one full collection."""
        t0 = time.perf_counter()
        dropped = self.hub.sweep()
        took = time.perf_counter() - t0
        t0 = time.perf_counter()
        gc.collect()
        collect_s = time.perf_counter() - t0
        # Counted here, once, not in stats(): listing a million objects takes tens of ms.
        objects = len(gc.get_objects())
        return {"sweep_s": took, "dropped": dropped, "gc_objects": objects, "collect_s": collect_s}

    def drop(self) -> dict[str, Any]:
        """The idle orgs' watchers leave: their channels go with them."""
        t0 = time.perf_counter()
        dropped = len(self.quiet)
        for watcher in self.quiet:
            self.hub.unsubscribe(watcher)
        self.quiet.clear()
        took = time.perf_counter() - t0
        self.next_idle = self.args.active + 1
        objects = len(gc.get_objects())
        return {
            "added": 0,
            "seconds": took,
            "dropped": dropped,
            "gc_objects": objects,
            **self.stats(),
        }

    def stats(self) -> dict[str, Any]:
        m, meter = self.hub.metrics, self.meter
        out = {
            "cpu_s": time.process_time(),
            "rss_kb": rss_kb(os.getpid()),
            "channels": len(self.hub._channels),
            "active_channels": self.active_channels(),
            "sched_nbytes": self.hub.scheduler.nbytes,
            "flush_s": meter.flush_s,
            "flush_cpu_s": meter.flush_cpu_s,
            "flushes": meter.flushes,
            "built": meter.built,
            "empty": meter.empty,
            "sweeps": meter.sweeps,
            "sweep_total_s": meter.sweep_s,
            "gc_s": meter.gc_s,
            "gc_full": meter.gc_full,
            "gc_max_s": meter.gc_max_s,
            "events_in": m.events_in,
            "frames_sent": m.frames_sent,
            "connections": m.connections,
            "slow_disconnects": m.slow_disconnects,
            "dropped_ticks": self.dropped_ticks,
        }
        meter.gc_max_s = 0.0
        return out

    async def handle(self, line: str) -> dict[str, Any]:
        cmd, *rest = line.split()
        if cmd == "prime":
            return await self.prime(int(rest[0]))
        if cmd == "load":
            return self.load(int(rest[0]))
        if cmd == "sweep":
            return self.sweep()
        if cmd == "drop":
            return self.drop()
        if cmd == "stats":
            return self.stats()
        return {"error": f"unknown command {cmd!r}"}


def serve(args: argparse.Namespace) -> None:
    """Run the app and the control loop; replies go to the original stdout, logs elsewhere."""
    sys.path.insert(0, str(ROOT / "src"))
    import uvicorn
    import uvloop

    from streamcore_server.main import create_app
    from streamcore_server.settings import Settings

    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything else printed goes to stderr, not into the reply stream
    tmp = tempfile.mkdtemp(prefix="scale_sim_db_")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp}/db.sqlite",
        data_dir=tmp,
        jwt_secret=SECRET,
        realtime_max_connections_per_user=1_000_000,  # ws_load's tokens: one user per org
        realtime_max_connections_per_org=1_000_000,
        realtime_history_age_s=args.history_age_s,
        log_level="warning",
    )
    seed_bench_users(settings.database_url, range(1, args.orgs + 1))
    app = create_app(settings, own_process=True)  # as `serve` builds it: its own process

    async def main() -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=args.port,
            ws="streamcore_server.realtime.ws_protocol:StreamWebSocketProtocol",
            ws_per_message_deflate=False,
            ws_ping_interval=None,  # the counting clients never answer a ping
            log_level="warning",
            access_log=False,
            backlog=4096,
        )
        server = uvicorn.Server(config)
        loop = asyncio.get_running_loop()
        serving = loop.create_task(server.serve())
        while not server.started:
            assert not serving.done(), "uvicorn did not start"
            await asyncio.sleep(0.05)
        sim = Simulation(app, args)
        lines: asyncio.Queue[str] = asyncio.Queue()

        def read_stdin() -> None:
            # A daemon thread, not the default executor: exit must not wait on a blocked read.
            for line in sys.stdin:
                loop.call_soon_threadsafe(lines.put_nowait, line)
            loop.call_soon_threadsafe(lines.put_nowait, "quit")

        threading.Thread(target=read_stdin, daemon=True).start()
        try:
            while not serving.done():
                getter = loop.create_task(lines.get())
                await asyncio.wait({getter, serving}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    break
                line = getter.result().strip()
                if not line or line == "quit":
                    break
                replies.write(json.dumps(await sim.handle(line)) + "\n")
                replies.flush()
        finally:
            sim.load(0)
            server.should_exit = True
            await serving

    try:
        uvloop.run(main())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- the clients --------------------------------------------------------------------------------


# -- the orchestrator ----------------------------------------------------------------------------


class Server:
    """The server process, spoken to one command and one JSON line at a time."""

    def __init__(self, args: argparse.Namespace, port: int) -> None:
        cmd = [
            sys.executable,
            *("-m", "benchmarks.scale_sim", "--role", "server", "--port", str(port)),
            *("--orgs", str(args.orgs), "--active", str(args.active), "--keys", str(args.keys)),
            *("--zipf", str(args.zipf), "--seed", str(args.seed)),
            *("--history-age-s", str(args.history_age_s)),
        ]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    def ask(self, command: str, timeout: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            assert sel.select(timeout), f"server gave no answer to {command!r} in {timeout} s"
        line = self.proc.stdout.readline()
        assert line, "the server exited"
        reply: dict[str, Any] = json.loads(line)
        assert "error" not in reply, reply
        return reply

    def close(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop(self.proc)


@dataclass
class Step:
    phase: str  # "prime": idle channels added; "dropped": swept back to the first step's
    idle_channels: int
    channels: int
    connections: int  # at the end of the interval, as the server counts them
    prime_s: float
    rss_mb: float
    kb_per_added_channel: float
    events_s: float
    cpu_s_per_s: float
    cpu_us_per_event: float
    flush_ms_per_s: float
    flush_cpu_ms_per_s: float
    flushes_s: float
    empty_flush_share: float
    flush_us_per_flush: float
    flush_us_per_frame: float
    frames_built_s: float
    frames_sent_s: float
    frames_received_s: float
    gc_ms_per_s: float
    gc_full: int
    gc_max_ms: float
    sweeps: int
    hot_p50_ms: float
    hot_p95_ms: float
    hot_p99_ms: float
    hot_samples: int
    rest_p50_ms: float
    rest_p95_ms: float
    rest_p99_ms: float
    rest_samples: int


def measure_step(
    server: Server,
    clients: Clients,
    args: argparse.Namespace,
    primed: dict[str, Any],
    before: dict[str, Any],
    phase: str = "prime",
) -> Step:
    server.ask(f"load {args.rate}")
    time.sleep(args.warmup)
    clients.measure()
    s0 = server.ask("stats")
    t0 = time.monotonic()
    time.sleep(args.seconds)
    s1 = server.ask("stats")
    dt = time.monotonic() - t0
    totals = clients.report()
    server.ask("load 0")

    def d(key: str) -> float:
        return float(s1[key] - s0[key])

    samples = list(zip(totals["lat"], totals["lat_org"], strict=True))
    hot = [x for x, org in samples if 0 < org <= args.hot]
    rest = [x for x, org in samples if args.hot < org <= args.active]
    added = max(1, primed["channels"] - before["channels"])
    events = d("events_in")
    return Step(
        phase=phase,
        idle_channels=primed["channels"] - primed["active_channels"],
        channels=primed["channels"],
        connections=s1["connections"],
        prime_s=round(primed["seconds"], 2),
        rss_mb=round(primed["rss_kb"] / 1024, 1),
        kb_per_added_channel=round((primed["rss_kb"] - before["rss_kb"]) / added, 2)
        if primed["added"]
        else 0.0,
        events_s=round(events / dt),
        cpu_s_per_s=round(d("cpu_s") / dt, 3),
        cpu_us_per_event=round(d("cpu_s") / max(1.0, events) * 1e6, 1),
        flush_ms_per_s=round(d("flush_s") / dt * 1e3, 1),
        flush_cpu_ms_per_s=round(d("flush_cpu_s") / dt * 1e3, 1),
        flushes_s=round(d("flushes") / dt),
        empty_flush_share=round(d("empty") / max(1.0, d("flushes")), 3),
        flush_us_per_flush=round(d("flush_cpu_s") / max(1.0, d("flushes")) * 1e6, 1),
        flush_us_per_frame=round(d("flush_cpu_s") / max(1.0, d("built")) * 1e6, 1),
        frames_built_s=round(d("built") / dt),
        frames_sent_s=round(d("frames_sent") / dt),
        frames_received_s=round(totals["frames"] / dt),
        gc_ms_per_s=round(d("gc_s") / dt * 1e3, 1),
        gc_full=int(d("gc_full")),
        gc_max_ms=round(s1["gc_max_s"] * 1e3, 1),
        sweeps=int(d("sweeps")),
        hot_p50_ms=round(pct(hot, 50), 1),
        hot_p95_ms=round(pct(hot, 95), 1),
        hot_p99_ms=round(pct(hot, 99), 1),
        hot_samples=len(hot),
        rest_p50_ms=round(pct(rest, 50), 1),
        rest_p95_ms=round(pct(rest, 95), 1),
        rest_p99_ms=round(pct(rest, 99), 1),
        rest_samples=len(rest),
    )


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def idle_steps(args: argparse.Namespace) -> list[int]:
    """0, 1,000, 10,000, ... up to every org that is not active (the last step: --orgs channels)."""
    most = args.orgs - args.active
    steps = [0]
    n = 1000
    while n < most:
        steps.append(n)
        n *= 10
    return [*steps, most] if most > 0 else steps


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.monotonic()
    # Children inherit the limit: the server and the client processes hold one fd per socket.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, args.connections + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    orgs_of = place(args.connections, args.active, args.orgs, args.idle_share, args.zipf, args.seed)
    with tempfile.NamedTemporaryFile("w", prefix="scale_sim_orgs_", suffix=".json") as f:
        json.dump(orgs_of, f)
        f.flush()
        port = free_port()
        server = Server(args, port)
        clients: Clients | None = None
        try:
            wait_port(port, server.proc, "server")
            base = server.ask("stats")
            clients = Clients("streamcore", port, args.connections, args.client_procs, 1, f.name)
            failed = clients.ready()
            time.sleep(1.0)
            connected = server.ask("stats")
            per_conn_kb = (connected["rss_kb"] - base["rss_kb"]) / max(1, connected["connections"])
            steps: list[Step] = []
            deltas: list[tuple[int, int]] = []  # (RSS KB, channels) added by each prime
            before = connected
            for target in idle_steps(args):
                primed = server.ask(f"prime {target}", timeout=120)
                steps.append(measure_step(server, clients, args, primed, before))
                deltas.append(
                    (primed["rss_kb"] - before["rss_kb"], primed["channels"] - before["channels"])
                )
                print(json.dumps(asdict(steps[-1])), flush=True)
                # The next prime's RSS is compared with the load stopped, as this one's was.
                before = server.ask("stats")
            final = server.ask("stats")
            swept = server.ask("sweep", timeout=120)
            # Back to the first step's idle channels and measured again: a second baseline, so
            # that what the shared machine did meanwhile is not read as the idle channels' cost.
            dropped = server.ask("drop", timeout=120)
            steps.append(measure_step(server, clients, args, dropped, dropped, "dropped"))
            print(json.dumps(asdict(steps[-1])), flush=True)
        finally:
            if clients is not None:
                clients.close()
            server.close()
    first, last, again = steps[0], steps[-2], steps[-1]
    grown_kb = sum(kb for kb, n in deltas if n > 0)
    added = sum(n for _, n in deltas if n > 0)
    cpu_ratio = ratio(last.cpu_s_per_s, (first.cpu_s_per_s + again.cpu_s_per_s) / 2)
    flush_ratio = ratio(
        last.flush_cpu_ms_per_s, (first.flush_cpu_ms_per_s + again.flush_cpu_ms_per_s) / 2
    )
    wall_ratio = ratio(last.flush_ms_per_s, (first.flush_ms_per_s + again.flush_ms_per_s) / 2)
    return {
        "orgs": args.orgs,
        "active": args.active,
        "hot": args.hot,
        "connections": args.connections,
        "connected": args.connections - failed,
        "rate": args.rate,
        "seconds": args.seconds,
        "rss_baseline_mb": round(base["rss_kb"] / 1024, 1),
        "kb_per_connection": round(per_conn_kb, 2),
        "kb_per_idle_channel": round(grown_kb / added, 2) if added else None,
        "sched_bytes_per_channel": round(final["sched_nbytes"] / max(1, final["channels"]), 1),
        "gc_objects": swept["gc_objects"],
        "gc_objects_per_dropped": round(
            (swept["gc_objects"] - dropped["gc_objects"]) / max(1, dropped["dropped"]), 1
        ),
        "sweep_ms": round(swept["sweep_s"] * 1e3, 1),
        "sweep_channels": final["channels"],
        "collect_ms": round(swept["collect_s"] * 1e3, 1),
        "drop_ms": round(dropped["seconds"] * 1e3, 1),
        "drop_channels": dropped["dropped"],
        "baseline_drift": round(ratio(again.cpu_s_per_s, first.cpu_s_per_s), 3),
        "cpu_ratio": round(cpu_ratio, 3),
        "flush_ratio": round(flush_ratio, 3),
        "flush_wall_ratio": round(wall_ratio, 3),
        "flat": cpu_ratio <= FLAT_TARGET and flush_ratio <= FLAT_TARGET,
        "dropped_ticks": final["dropped_ticks"],
        "slow_disconnects": final["slow_disconnects"],
        "wall_s": round(time.monotonic() - started, 1),
        "steps": [asdict(s) for s in steps],
    }


def print_report(r: dict[str, Any]) -> None:
    steps = r["steps"]
    last, first = steps[-2], steps[0]
    print(
        f"\nscale_sim: {r['orgs']} orgs ({r['active']} active, top {r['hot']} hot), "
        f"{r['connected']}/{r['connections']} connections, {r['rate']} events/s, "
        f"{r['seconds']:g} s measured per step, {r['wall_s']} s wall"
    )
    print(
        f"memory: baseline RSS {r['rss_baseline_mb']} MB, {r['kb_per_connection']} KB per "
        f"connection, {r['kb_per_idle_channel']} KB per idle channel "
        f"(scheduler {r['sched_bytes_per_channel']} B of it)\n"
    )
    cols = [
        ("phase", "phase", 8),
        ("idle ch", "idle_channels", 8),
        ("conns", "connections", 6),
        ("RSS MB", "rss_mb", 8),
        ("KB/ch", "kb_per_added_channel", 7),
        ("ev/s", "events_s", 7),
        ("CPU/s", "cpu_s_per_s", 7),
        ("µs/ev", "cpu_us_per_event", 7),
        ("flush ms/s", "flush_ms_per_s", 11),
        ("cpu ms/s", "flush_cpu_ms_per_s", 9),
        ("flush/s", "flushes_s", 8),
        ("empty", "empty_flush_share", 7),
        ("µs/flush", "flush_us_per_flush", 9),
        ("µs/frame", "flush_us_per_frame", 9),
        ("built/s", "frames_built_s", 8),
        ("sent/s", "frames_sent_s", 8),
        ("recv/s", "frames_received_s", 8),
        ("gc ms/s", "gc_ms_per_s", 8),
        ("gc max", "gc_max_ms", 7),
        ("sweeps", "sweeps", 7),
    ]
    print("".join(f"{title:>{w}}" for title, _, w in cols))
    for s in steps:
        print("".join(f"{s[key]:>{w}}" for _, key, w in cols))
    print(
        f"\n{'phase':>8}{'idle ch':>8}  {'hot p50/p95/p99 ms (n)':<28}"
        f"{'other active p50/p95/p99 ms (n)':<32}"
    )
    for s in steps:
        hot = f"{s['hot_p50_ms']}/{s['hot_p95_ms']}/{s['hot_p99_ms']} ({s['hot_samples']})"
        rest = f"{s['rest_p50_ms']}/{s['rest_p95_ms']}/{s['rest_p99_ms']} ({s['rest_samples']})"
        print(f"{s['phase']:>8}{s['idle_channels']:>8}  {hot:<28}{rest:<32}")
    verdict = "MET" if r["flat"] else "MISSED"
    print(
        f"\nflat: {verdict} - at {last['idle_channels']} idle channels over the mean of the "
        f"two runs at {first['idle_channels']}: CPU/s x{r['cpu_ratio']}, flush CPU/s "
        f"x{r['flush_ratio']} (target <= {FLAT_TARGET}x); flush wall time/s "
        f"x{r['flush_wall_ratio']}; the two baselines differ by x{r['baseline_drift']}"
    )
    chunk = min(SWEEP_CHUNK, r["sweep_channels"])
    per_chunk = r["sweep_ms"] * chunk / max(1, r["sweep_channels"])
    print(
        f"sweep: {r['sweep_ms']} ms to walk {r['sweep_channels']} channels in one call; the hub's "
        f"timer walks {chunk} per loop turn (~{per_chunk:.1f} ms each, every "
        "SWEEP_INTERVAL_S, 60 s); "
        f"{r['drop_ms']} ms to drop {r['drop_channels']} in one call"
    )
    print(
        f"collector: {r['gc_objects']} objects tracked at {r['sweep_channels']} channels "
        f"({r['gc_objects_per_dropped']} per channel dropped), {r['collect_ms']} ms for a full "
        "collection"
    )
    print(
        f"losses: {r['slow_disconnects']} slow consumers disconnected, "
        f"{r['dropped_ticks']} generator ticks dropped"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--role", default="main", choices=["main", "server"])
    p.add_argument("--orgs", type=int, default=100_000, help="org channels at the last step")
    p.add_argument("--active", type=int, default=1000, help="orgs the load goes to (Zipf ranks)")
    p.add_argument("--hot", type=int, default=10, help="top ranks reported as the hot orgs")
    p.add_argument("--connections", type=int, default=4000)
    p.add_argument("--client-procs", type=int, default=2)
    p.add_argument("--idle-share", type=float, default=0.2, help="connections on idle orgs")
    p.add_argument("--rate", type=int, default=5000, help="events/s over the active orgs")
    p.add_argument("--zipf", type=float, default=1.1, help="exponent s of weight rank**-s")
    p.add_argument("--keys", type=int, default=200, help="conflation keys per org")
    p.add_argument("--seconds", type=float, default=8.0, help="measured per step")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--history-age-s", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.role == "server":
        serve(args)
        return 0
    report = run(args)
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
