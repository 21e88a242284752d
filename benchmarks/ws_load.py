"""Load the realtime stream on loopback: streamcore against two Python servers and the socket floor.

One server process at a time, WebSocket clients in other processes, a fixed event rate, all
bounded in count and time; every process is stopped by its pid. Servers (same run, same load):

- streamcore: the app (`create_app`) under uvicorn with our prepared-frame protocol, events
  entering through the EventBus as finance writes do;
- naive: one JSON text frame per event per client (`await send_text`);
- encode-once: a pure-Python server, 50 ms windows, latest-wins, one orjson + zstd per batch,
  `await send_bytes` to each client;
- floor: the same number of bytes per frame written with `socket.send` to the same number of
  plain TCP sockets (what the kernel costs; no WebSocket, no encoding), while running the same
  event generator with the least a server can do with an event (keep the latest per key).

Each server generates its own events (the same generator: `--rate` events/s over `--orgs` orgs,
`--keys` keys per org, each payload carrying its creation time), so all pay the same cost of
making the load; the floor too, so a ratio to it is the server's work, not the generator's.
Reported per server: delivered events/s, frames/s, bytes/s, delivery latency p50/p95/p99
(creation -> received, sampled clients), server CPU-µs per frame sent, RSS, and RSS per idle
connection; plus CPU per frame as a ratio to the floor.

    .venv/bin/python -m benchmarks.ws_load [--clients 1000] [--rate 10000] [--seconds 8]
        [--servers streamcore,encode_once,naive,floor] [--json out.json]

The clients share the two cores with the server: check `delivered` against `expected` (a client
that fell behind shows up there and in the latency, not as a server win).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SECRET = "bench-secret-" + "x" * 32
COUNTED = ("frames", "bytes", "events", "wire", "sampled_wire")
SAMPLE_EVERY = 50  # one client in 50 decodes its frames for latency; the rest only count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


# -- the event generator (inside each server) ----------------------------------------------------


async def generate(rate: int, orgs: int, keys: int, emit: Any) -> None:
    """Call emit(org, key, payload) `rate` times a second, in 10 ms ticks, until cancelled."""
    import orjson

    tick = 0.01
    per_tick = max(1, rate // 100)
    n = 0
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        now = time.time()
        for _ in range(per_tick):
            org = n % orgs + 1
            key = f"k{(n // orgs) % keys}"
            emit(org, key, orgjson(orjson, org, key, n, now))
            n += 1
        next_at += tick
        await asyncio.sleep(max(0.0, next_at - loop.time()))


def orgjson(orjson: Any, org: int, key: str, n: int, now: float) -> bytes:
    return orjson.dumps({"type": "quote", "orgId": org, "key": key, "data": {"n": n, "ts": now}})


# -- servers -------------------------------------------------------------------------------------


def seed_bench_users(database_url: str, orgs: Any) -> None:
    """Make the org and the user each bench token names (both ids = the org's).

    Authentication refuses a signed token whose user does not exist, so the tokens token_for
    mints need these rows. Rows already there (a demo org 1) are left as they are.
    """
    from streamcore_server import storage

    ids = sorted(set(int(o) for o in orgs))

    async def run() -> None:
        engine = storage.create_engine(database_url)
        try:
            await storage.migrate(engine)
            now = storage.utcnow()
            async with engine.begin() as conn:
                await conn.execute(
                    storage.orgs.insert().prefix_with("OR IGNORE"),
                    [{"id": o, "name": f"bench-{o}", "created_at": now} for o in ids],
                )
                await conn.execute(
                    storage.users.insert().prefix_with("OR IGNORE"),
                    [
                        {
                            "id": o,
                            "org_id": o,
                            "email": f"u{o}@bench",
                            "password_hash": "!",  # no password logs in as a bench user
                            "created_at": now,
                        }
                        for o in ids
                    ],
                )
        finally:
            await engine.dispose()

    asyncio.run(run())


def serve_streamcore(port: int, args: argparse.Namespace) -> None:

    sys.path.insert(0, str(ROOT / "src"))
    from streamcore_server.events import Event
    from streamcore_server.main import create_app
    from streamcore_server.settings import Settings

    tmp = tempfile.mkdtemp(prefix="ws_load_")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp}/db.sqlite",
        data_dir=tmp,
        jwt_secret=SECRET,
        realtime_max_connections_per_user=1_000_000,
        realtime_max_connections_per_org=1_000_000,
        log_level="warning",
        window_min_ms=args.window_ms or 30.0,
        window_max_ms=args.window_ms or 150.0,
    )
    # Seeded (and migrated) in a child process, as a deployment migrates before its servers
    # start: the server then starts on a current schema and never imports alembic.
    subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.ws_load", "--role", "seed"),
            *("--orgs", str(args.orgs), "--database-url", settings.database_url),
        ],
        cwd=ROOT,
        env=ENV,
        check=True,
    )
    app = create_app(settings, own_process=True)  # as `serve` builds it: its own process

    def emit(org: int, key: str, payload: bytes) -> None:
        app.state.events.publish(Event(org, key, True, payload))

    def status() -> None:
        # What the orchestrator cannot see from outside: the history held, the windows chosen.
        hub, broker = app.state.hub, app.state.broker
        windows = [hub.scheduler.window_ms(ch.sched_id) for ch in hub._channels.values()]
        Path(args.status).write_text(
            json.dumps(
                {
                    "history_bytes": broker.history_bytes(),
                    "window_ms": sum(windows) / len(windows) if windows else 0.0,
                }
            )
        )

    signal.signal(signal.SIGUSR2, lambda *_: status())
    run_uvicorn(
        app, port, args, emit, ws="streamcore_server.realtime.ws_protocol:StreamWebSocketProtocol"
    )


def serve_python(port: int, args: argparse.Namespace, naive: bool) -> None:
    import zstandard
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket

    subscribers: dict[int, set[WebSocket]] = {}
    pending: dict[int, dict[str, bytes]] = {}
    compressor = zstandard.ZstdCompressor(level=1)

    async def stream(ws: WebSocket) -> None:
        org = int(ws.query_params.get("org", "1"))
        await ws.accept()
        subscribers.setdefault(org, set()).add(ws)
        try:
            while (await ws.receive())["type"] != "websocket.disconnect":
                pass
        finally:
            subscribers[org].discard(ws)

    async def send_all(org: int, data: bytes | str) -> None:
        for ws in tuple(subscribers.get(org, ())):
            try:
                if isinstance(data, str):
                    await ws.send_text(data)
                else:
                    await ws.send_bytes(data)
            except Exception:
                subscribers[org].discard(ws)

    def emit(org: int, key: str, payload: bytes) -> None:
        if naive:
            asyncio.get_running_loop().create_task(send_all(org, payload.decode()))
        else:
            pending.setdefault(org, {})[key] = payload

    async def flusher() -> None:
        while True:
            await asyncio.sleep(0.05)
            batch, pending_now = dict(pending), None
            pending.clear()
            del pending_now
            for org, by_key in batch.items():
                body = b"[" + b",".join(by_key.values()) + b"]"
                await send_all(org, compressor.compress(body))

    app = Starlette(routes=[WebSocketRoute("/v2/realtime/stream", stream)])
    run_uvicorn(
        app, port, args, emit, ws="websockets-sansio", background=None if naive else flusher
    )


def run_uvicorn(
    app: Any, port: int, args: argparse.Namespace, emit: Any, ws: str, background: Any = None
) -> None:
    import uvicorn

    async def main() -> None:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            ws=ws,
            ws_per_message_deflate=False,
            log_level="warning",
            access_log=False,
            backlog=4096,
        )
        server = uvicorn.Server(config)
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[None]] = []

        def go() -> None:
            tasks.append(loop.create_task(generate(args.rate, args.orgs, args.keys, emit)))
            if background is not None:
                tasks.append(loop.create_task(background()))

        loop.add_signal_handler(signal.SIGUSR1, go)
        await server.serve()
        for t in tasks:
            t.cancel()

    import uvloop

    uvloop.run(main())


def serve_floor(port: int, args: argparse.Namespace) -> None:
    """Accept plain TCP sockets; every 50 ms per org write a frame of --frame-bytes to each."""

    async def main() -> None:
        socks: dict[int, list[socket.socket]] = {}
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(4096)
        listener.setblocking(False)
        loop = asyncio.get_running_loop()
        frame = b"\x82\x7e" + struct.pack(">H", args.frame_bytes) + b"x" * args.frame_bytes
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)

        async def accept() -> None:
            while True:
                conn, _ = await loop.sock_accept(listener)
                conn.setblocking(False)
                org = int((await loop.sock_recv(conn, 16)).split(b"\n")[0] or b"1")
                socks.setdefault(org, []).append(conn)

        pending: dict[int, dict[str, bytes]] = {}

        def emit(org: int, key: str, payload: bytes) -> None:
            pending.setdefault(org, {})[key] = payload

        async def flush() -> None:
            next_at = loop.time()
            while True:
                # Fixed deadlines, as the generator keeps: a sleep after the sends would stretch
                # the floor's cycle with the client count and under-count what it can deliver.
                next_at += 0.05
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                pending.clear()
                for org_socks in socks.values():
                    for s in org_socks:
                        with contextlib.suppress(BlockingIOError, OSError):
                            s.send(frame)

        def go() -> None:
            if args.server == "floor":  # floor_bare: the kernel alone, as earlier runs measured
                tasks.append(loop.create_task(generate(args.rate, args.orgs, args.keys, emit)))
            tasks.append(loop.create_task(flush()))

        tasks = [loop.create_task(accept())]
        loop.add_signal_handler(signal.SIGUSR1, go)
        await stop.wait()

    import uvloop

    uvloop.run(main())


# -- clients -------------------------------------------------------------------------------------


class Counter(asyncio.Protocol):
    """Counts WebSocket frames; a sampled one decodes them for delivery latency."""

    def __init__(self, stats: dict[str, Any], sample: bool, raw: bool, handshake: bytes) -> None:
        self.stats, self.sample, self.raw = stats, sample, raw
        self.buf = bytearray()
        self.open = raw
        self.handshake = handshake
        self.org = 0
        self.connected = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.write(self.handshake)
        if self.raw:
            self.connected.set_result(True)

    def data_received(self, data: bytes) -> None:
        if self.open and not self.sample:
            # Counting clients only count bytes (no copies, no parsing): frames are estimated from
            # the sampled clients' mean frame size, the same frames going to every client.
            self.stats["wire"] += len(data)
            return
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            ok = self.buf.startswith(b"HTTP/1.1 101")
            del self.buf[: end + 4]
            self.open = True
            if not self.connected.done():
                self.connected.set_result(ok)
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 2:
            n = buf[pos + 1] & 0x7F
            head = 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n = struct.unpack_from(">H", buf, pos + 2)[0]
                head = 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n = struct.unpack_from(">Q", buf, pos + 2)[0]
                head = 10
            if len(buf) - pos < head + n:
                break
            if buf[pos] & 0x0F in (1, 2):
                self.stats["frames"] += 1
                self.stats["bytes"] += n
                self.stats["sampled_wire"] += head + n
                if self.sample and not self.raw:  # the floor's bytes are filler
                    self.decode(bytes(buf[pos + head : pos + head + n]))
            pos += head + n
        del buf[:pos]

    def decode(self, payload: bytes) -> None:
        import orjson

        now = time.time()
        if payload[:2] == b"SC":
            from streamcore.protocol import decode_frame

            frame = decode_frame(payload)
            if frame.kind != 0:
                return
            items = frame.events
        elif payload[:1] in (b"{", b"["):
            items = orjson.loads(payload)
            items = items if isinstance(items, list) else [items]
        else:
            import zstandard

            items = orjson.loads(zstandard.ZstdDecompressor().decompress(payload))
        for item in items:
            self.stats["events"] += 1
            data = item.get("data")
            if not isinstance(data, dict):
                continue
            if "ts" in data:  # a generated event: its creation time
                self.stats["lat"].append(now - data["ts"])
                self.stats["lat_org"].append(self.org)
            elif "createdAt" in data:  # a finance record: its commit time; tagged -org
                created = dt.datetime.fromisoformat(data["createdAt"])
                self.stats["lat"].append(now - created.timestamp())
                self.stats["lat_org"].append(-self.org)


def client_orgs(args: argparse.Namespace) -> list[int]:
    """The org of each of this process's clients: round-robin, or slice of --orgs-file's list."""
    if args.orgs_file:
        every = json.loads(Path(args.orgs_file).read_text())
        return [int(o) for o in every[args.first : args.first + args.count]]
    return [(args.first + i) % args.orgs + 1 for i in range(args.count)]


def run_clients(args: argparse.Namespace) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stats: dict[str, Any] = {
            "frames": 0,
            "bytes": 0,
            "events": 0,
            "lat": [],
            "lat_org": [],  # each latency sample's org (negative: a finance record), in order
            "failed": 0,
            "wire": 0,
            "sampled_wire": 0,
        }
        orgs = client_orgs(args)
        tokens = {org: token_for(org) for org in set(orgs)}
        protos = []
        for i, org in enumerate(orgs):
            sample = (args.first + i) % SAMPLE_EVERY == 0
            if args.server.startswith("floor"):
                hs = f"{org}\n".encode()
            else:
                path = f"/v2/realtime/stream?codec=zstd&org={org}&access_token={tokens[org]}"
                hs = (
                    f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            proto = Counter(stats, sample, args.server.startswith("floor"), hs)
            proto.org = org
            try:
                await loop.create_connection(lambda p=proto: p, "127.0.0.1", args.port)
                if not await asyncio.wait_for(proto.connected, 10):
                    stats["failed"] += 1
            except (OSError, TimeoutError):
                stats["failed"] += 1
            protos.append(proto)
        print(json.dumps({"ready": True, "failed": stats["failed"]}), flush=True)
        # Any number of intervals over the same connections, until end of input or "quit".
        while True:
            word = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
            if word == "measure":
                stats.update({k: 0 for k in COUNTED}, lat=[], lat_org=[])
            elif word == "report":
                print(json.dumps(stats), flush=True)
            else:
                break
        for proto in protos:
            proto.transport.abort()

    uvloop.run(main())


def token_for(org: int) -> str:
    import jwt

    now = int(time.time())
    claims = {
        "iss": "streamcore",
        "sub": str(org),
        "org": org,
        "email": f"u{org}@bench",
        "iat": now,
        "exp": now + 3600,
    }
    return jwt.encode(claims, SECRET, algorithm="HS256")


# -- the orchestrator ----------------------------------------------------------------------------


@dataclass
class Result:
    server: str
    clients: int
    connected: int
    seconds: float
    expected_frames_s: float
    frames_s: float
    events_s: float
    mbytes_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    cpu_us_per_frame: float
    cpu_util: float
    rss_mb: float
    idle_kb_per_conn: float
    clients_cpu: float = 0.0  # cores the client processes used: what caps a loopback run
    x_floor: float = 0.0
    history_mb: float = 0.0  # what streamcore's resume history held at the end
    window_ms: float = 0.0  # the window the expected frames are counted against


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))] * 1000


ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def redis_env(url: str, prefix: str) -> dict[str, str]:
    """A server's Redis settings, every key under `prefix` so the run can remove them."""
    return {
        "REDIS_URL": url,
        "REALTIME_REDIS_PREFIX": f"{prefix}:rt",
        "IDEMPOTENCY_REDIS_PREFIX": f"{prefix}:idem:",
        "METRICS_REDIS_PREFIX": f"{prefix}:metrics",  # the summary cache's keys go under it too
    }


def drop_redis_keys(url: str, prefix: str) -> int:
    """Delete this run's keys (and only them) from the shared Redis."""
    import redis

    r = redis.Redis.from_url(url)
    try:
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        return int(r.delete(*keys)) if keys else 0
    finally:
        r.close()


def wait_port(port: int, proc: subprocess.Popen[Any], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"{what} exited"
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"{what} did not start"
            time.sleep(0.1)


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, grace: float = 10) -> None:
    """Stop a process this harness started, by its pid: `sig`, then SIGKILL after `grace`."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


class Clients:
    """WebSocket client processes (`--role clients`) driven through their stdin and stdout."""

    def __init__(
        self,
        server: str,
        port: int,
        total: int,
        procs: int,
        orgs: int,
        orgs_file: str | None = None,
    ) -> None:
        self.total = total
        self.procs: list[subprocess.Popen[str]] = []
        per = -(-total // procs)
        for i in range(procs):
            count = min(per, total - i * per)
            cmd = [
                sys.executable,
                *("-m", "benchmarks.ws_load", "--role", "clients", "--server", server),
                *("--port", str(port), "--orgs", str(orgs)),
                *("--first", str(i * per), "--count", str(count)),
            ]
            if orgs_file:
                cmd += ["--orgs-file", orgs_file]
            self.procs.append(
                subprocess.Popen(
                    cmd, cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
            )

    def ready(self) -> int:
        """Wait until every client has connected (or failed); return how many failed."""
        return sum(json.loads(self._read(c))["failed"] for c in self.procs)

    def _read(self, proc: subprocess.Popen[str]) -> str:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, "a client process exited"
        return line

    def _say(self, word: str) -> None:
        for c in self.procs:
            assert c.stdin is not None
            c.stdin.write(word + "\n")
            c.stdin.flush()

    def measure(self) -> None:
        """Zero the counters: what is reported next is counted from now."""
        self._say("measure")

    def report(self) -> dict[str, Any]:
        """Totals since measure(); the next measure() starts a new interval."""
        self._say("report")
        totals: dict[str, Any] = {
            "frames": 0,
            "bytes": 0,
            "events": 0,
            "lat": [],
            "lat_org": [],
            "wire": 0,
            "sampled_wire": 0,
        }
        for c in self.procs:
            got = json.loads(self._read(c))
            for k in ("frames", "bytes", "events", "wire", "sampled_wire"):
                totals[k] += got[k]
            totals["lat"] += got["lat"]
            totals["lat_org"] += got["lat_org"]
        # Sampled clients counted their frames; the others' frames are their bytes over the
        # sampled mean wire size of a frame.
        if totals["frames"]:
            totals["frames"] += round(totals["wire"] * totals["frames"] / totals["sampled_wire"])
            totals["bytes"] += totals["wire"]
        return totals

    def close(self) -> None:
        for c in self.procs:
            stop(c, signal.SIGKILL)


def server_status(server: subprocess.Popen[Any], path: Path, timeout: float = 10) -> dict[str, Any]:
    """Ask the streamcore server for its status file (SIGUSR2) and read it."""
    os.kill(server.pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "the server wrote no status"
        time.sleep(0.05)
    for _ in range(100):  # written in one call, but read it whole
        try:
            return dict(json.loads(path.read_text()))
        except json.JSONDecodeError:
            time.sleep(0.05)
    raise AssertionError("unreadable status file")


def run_server(name: str, args: argparse.Namespace, frame_bytes: int) -> Result:
    port = free_port()
    cmd = [
        sys.executable,
        *("-m", "benchmarks.ws_load", "--role", "server", "--server", name, "--port", str(port)),
        *("--rate", str(args.rate), "--orgs", str(args.orgs), "--keys", str(args.keys)),
        *("--frame-bytes", str(frame_bytes), "--window-ms", str(args.window_ms)),
    ]
    status_path = Path(tempfile.mkdtemp(prefix="ws_load_status_")) / "status.json"
    cmd += ["--status", str(status_path)]
    server = subprocess.Popen(cmd, cwd=ROOT, env=ENV)
    clients: Clients | None = None
    try:
        wait_port(port, server, f"{name} server")
        rss_before = rss_kb(server.pid)
        clients = Clients(name, port, args.clients, args.client_procs, args.orgs)
        failed = clients.ready()
        time.sleep(1.0)
        idle_kb = (rss_kb(server.pid) - rss_before) / max(1, args.clients - failed)
        os.kill(server.pid, signal.SIGUSR1)  # start generating
        time.sleep(args.warmup)
        clients.measure()
        cpu0, t0 = cpu_s(server.pid), time.monotonic()
        ccpu0 = sum(cpu_s(c.pid) for c in clients.procs)
        time.sleep(args.seconds)
        cpu1, t1 = cpu_s(server.pid), time.monotonic()
        ccpu1 = sum(cpu_s(c.pid) for c in clients.procs)
        rss = rss_kb(server.pid)
        totals = clients.report()
        dt = t1 - t0
        connected = args.clients - failed
        status = server_status(server, status_path) if name == "streamcore" else {}
        window_ms = status.get("window_ms") or args.window_ms or 50.0
        per_conn_frames_s = {"naive": args.rate / args.orgs}.get(name, 1000.0 / window_ms)
        return Result(
            server=name,
            clients=args.clients,
            connected=connected,
            seconds=round(dt, 2),
            expected_frames_s=round(connected * per_conn_frames_s),
            frames_s=round(totals["frames"] / dt),
            events_s=0 if name.startswith("floor") else round(totals["events"] * SAMPLE_EVERY / dt),
            mbytes_s=round(totals["bytes"] / dt / 1e6, 2),
            p50_ms=round(pct(totals["lat"], 50), 1),
            p95_ms=round(pct(totals["lat"], 95), 1),
            p99_ms=round(pct(totals["lat"], 99), 1),
            cpu_us_per_frame=round((cpu1 - cpu0) / max(1, totals["frames"]) * 1e6, 2),
            cpu_util=round((cpu1 - cpu0) / dt, 2),
            rss_mb=round(rss / 1024, 1),
            idle_kb_per_conn=round(idle_kb, 1),
            clients_cpu=round((ccpu1 - ccpu0) / dt, 2),
            history_mb=round(status.get("history_bytes", 0) / 2**20, 1),
            window_ms=round(window_ms, 1),
        )
    finally:
        if clients is not None:
            clients.close()
        stop(server)


# Targets read against the same run (met / MISSED), per client count where they apply.
TARGET_X_FLOOR = 1.3  # server CPU per frame sent, over the floor's
TARGET_VS_ENCODE_ONCE = 1.5  # times cheaper per frame than the encode-once server
TARGET_IDLE_KB = 16.0  # RSS per idle connection
TARGET_DELIVERED = 0.95  # frames delivered over expected


def raise_nofile(connections: int) -> None:
    """Let this process and its children hold `connections` sockets (plus some slack)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = connections + 1024
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))


# p99 targets by client count: with the default (adaptive) windows, and at 10,000 clients.
TARGET_P99_DEFAULT_MS = {1000: 100.0, 3000: 150.0}
TARGET_P99_10K_MS = 250.0


def x_floor(sc: Result, floor: Result | None, bare: Result | None) -> tuple[float, str] | None:
    """Server CPU per frame over the kernel's, with the event generator's cost taken out.

    Every server here makes its own events; `floor` pays that generator and `floor_bare` does
    not, so their difference is the generator's cost per frame, which is not the server's work.
    Without floor_bare, the plain ratio to the floor.
    """
    if floor is None or not floor.cpu_us_per_frame:
        return None
    if bare is None or not bare.cpu_us_per_frame:
        return sc.cpu_us_per_frame / floor.cpu_us_per_frame, "the floor"
    generator = max(0.0, floor.cpu_us_per_frame - bare.cpu_us_per_frame)
    return (sc.cpu_us_per_frame - generator) / bare.cpu_us_per_frame, (
        f"the bare floor, the generator's {generator:.2f} µs/frame taken out"
    )


def verdicts(results: list[Result], adaptive: bool) -> list[str]:
    """The issue's targets, each met or MISSED with the measured figure."""
    lines = []

    def say(ok: bool, text: str) -> None:
        lines.append(f"- {text}: {'met' if ok else 'MISSED'}")

    for n in sorted({r.clients for r in results}):
        at = {r.server: r for r in results if r.clients == n}
        sc, floor, eo = at.get("streamcore"), at.get("floor"), at.get("encode_once")
        if sc is None:
            continue
        share = sc.frames_s / max(1.0, sc.expected_frames_s)
        say(
            share >= TARGET_DELIVERED,
            f"{n} clients: frames delivered {100 * share:.1f} % of 1/window "
            f"({sc.window_ms:g} ms) (>= 95)",
        )
        if adaptive and n in TARGET_P99_DEFAULT_MS:
            want = TARGET_P99_DEFAULT_MS[n]
            say(
                sc.p99_ms <= want,
                f"{n} clients, default windows: p99 {sc.p99_ms:g} ms (<= {want:g})",
            )
        if n >= 10_000:
            say(sc.p99_ms <= TARGET_P99_10K_MS, f"{n} clients: p99 {sc.p99_ms:g} ms (<= 250)")
        ratio = x_floor(sc, floor, at.get("floor_bare"))
        if ratio is not None:
            x, against = ratio
            say(x <= TARGET_X_FLOOR, f"{n} clients: CPU per frame {x:.2f}x {against} (<= 1.3x)")
        if eo is not None and sc.cpu_us_per_frame:
            r = eo.cpu_us_per_frame / sc.cpu_us_per_frame
            say(
                r >= TARGET_VS_ENCODE_ONCE,
                f"{n} clients: {r:.2f}x cheaper than encode-once (>= 1.5)",
            )
        if n == 1000:
            idle = sc.idle_kb_per_conn
            say(idle <= TARGET_IDLE_KB, f"RSS per idle connection {idle:g} KB (<= 16 KB)")
            if eo is not None:
                say(
                    sc.rss_mb <= eo.rss_mb + sc.history_mb,
                    f"RSS {sc.rss_mb:g} MB against encode-once {eo.rss_mb:g} MB + history "
                    f"{sc.history_mb:g} MB",
                )
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--role", default="main", choices=["main", "server", "clients", "seed"])
    p.add_argument("--server", default="streamcore")
    p.add_argument("--servers", default="streamcore,encode_once,naive,floor")
    p.add_argument(
        "--clients",
        default="1000",
        help="main: client counts, comma-separated (each runs every server); clients: one count",
    )
    p.add_argument("--client-procs", type=int, default=0, help="0: one per 2,500 clients, >= 2")
    p.add_argument("--rate", type=int, default=10_000)
    p.add_argument("--orgs", type=int, default=10)
    p.add_argument("--keys", type=int, default=200)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=0)
    p.add_argument("--orgs-file", help="clients: a JSON list, the org of each client by index")
    p.add_argument("--frame-bytes", type=int, default=0)
    p.add_argument(
        "--window-ms",
        type=float,
        default=50.0,
        help="streamcore's window (min = max), 50 like encode-once; 0 = adaptive",
    )
    p.add_argument("--json")
    p.add_argument("--status", help="server: where SIGUSR2 writes the hub's status")
    p.add_argument("--database-url", help="seed: the database to migrate and seed")
    args = p.parse_args(argv)
    if args.role == "server":
        if args.server == "streamcore":
            serve_streamcore(args.port, args)
        elif args.server in ("floor", "floor_bare"):
            serve_floor(args.port, args)
        else:
            serve_python(args.port, args, naive=args.server == "naive")
        return 0
    if args.role == "clients":
        run_clients(args)
        return 0
    if args.role == "seed":
        seed_bench_users(args.database_url, range(1, args.orgs + 1))
        return 0
    counts = [int(c) for c in str(args.clients).split(",")]
    raise_nofile(max(counts))
    results: list[Result] = []
    for n in counts:
        at = argparse.Namespace(**vars(args))
        at.clients = n
        at.client_procs = args.client_procs or max(2, -(-n // 2500))
        frame_bytes = 0
        mine: list[Result] = []
        for name in args.servers.split(","):
            if name.startswith("floor"):
                # The floor writes frames of streamcore's mean size (or a typical one if not run).
                sc = next((r for r in mine if r.server == "streamcore"), None)
                frame_bytes = int(sc.mbytes_s * 1e6 / sc.frames_s) if sc and sc.frames_s else 2000
            mine.append(run_server(name, at, frame_bytes))
            print(json.dumps(asdict(mine[-1])), flush=True)
        floor = next((r for r in mine if r.server == "floor"), None)
        bare = next((r for r in mine if r.server == "floor_bare"), None)
        for r in mine:
            ratio = x_floor(r, floor, bare) if not r.server.startswith("floor") else None
            if ratio is not None:
                r.x_floor = round(ratio[0], 2)
        results += mine
    head = (
        f"{'server':<12}{'clients':>8}{'frames/s':>10}{'expected':>10}{'events/s':>10}"
        f"{'MB/s':>7}{'p50':>7}{'p95':>7}{'p99 ms':>8}{'CPU µs/fr':>10}{'x floor':>8}"
        f"{'CPU':>6}{'RSS MB':>8}{'KB/idle':>8}{'clients CPU':>12}"
    )
    window = f"{args.window_ms:g} ms windows" if args.window_ms else "default (adaptive) windows"
    print(
        f"\nws_load: {args.orgs} orgs, {args.rate} events/s, {window}, {args.seconds:g} s "
        f"measured per server"
    )
    print(head)
    for r in results:
        print(
            f"{r.server:<12}{r.connected:>8}{r.frames_s:>10}{r.expected_frames_s:>10}"
            f"{r.events_s:>10}{r.mbytes_s:>7}{r.p50_ms:>7}{r.p95_ms:>7}{r.p99_ms:>8}"
            f"{r.cpu_us_per_frame:>10}{r.x_floor:>8}{r.cpu_util:>6}{r.rss_mb:>8}"
            f"{r.idle_kb_per_conn:>8}{r.clients_cpu:>12}"
        )
    lines = verdicts(results, adaptive=not args.window_ms)
    if lines:
        print("\nTargets (same run):")
        print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
