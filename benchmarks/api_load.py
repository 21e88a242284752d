"""Load the HTTP API on loopback and compare it with minimal servers, in one run.

Servers, each a uvicorn process of its own, stopped by its pid:

- echo: Starlette parsing and echoing the JSON body (the framework's floor);
- minimal insert: Starlette inserting the expense row in one statement and answering it (asyncpg
  on PostgreSQL, aiosqlite on SQLite; no auth, events, totals or logs) - the write path's floor;
- the app (`python -m streamcore_server serve`) on the same database, at the default log level (the
access log
  is written, to /dev/null).

The load generator is `wrk` (Debian's package) with a Lua script: a compiled client costs a few
µs per request where a Python client costs about as much CPU as the server it drives, and the two
share this machine's cores. Each scenario runs for a fixed time (wrk's -d) after a short warm-up,
and each wrk thread also stops at a cap of answers (--max-requests). Server
CPU per request is read from /proc (utime + stime of the server process and all its
descendants, so every worker counts) before and after each scenario; on PostgreSQL the
database backends serving the run's database are read the same way and shown apart ("db").

    .venv/bin/python -m benchmarks.api_load [--seconds 5] [--json out.json] [--no-postgres]

PostgreSQL comes from TEST_DATABASE_URL (default the shared server on 5432); the run creates a
database of its own and drops it at the end. WORKERS=2 needs Redis (TEST_REDIS_URL): its keys
go under a prefix of this run's and are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from sqlalchemy.engine import make_url

from benchmarks.ws_load import drop_redis_keys, redis_env

ECHO_APP = """
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

# The row the app writes, in one statement, as a hand-written endpoint would: parse, insert,
# answer the stored row. org 1 / user 1 are the demo org and user the app seeded.
_MINIMAL_COMMON = """
import datetime as dt, sys, orjson, uvicorn
from contextlib import asynccontextmanager
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

COLUMNS = ("org_id, property_id, category, amount_cents, currency, description, expense_date, "
           "payment_mode, created_at, created_by")

def values(b):
    date = dt.datetime.fromisoformat(b["expenseDate"]).astimezone(dt.UTC)
    return (1, b["propertyId"], b["category"], b["amountCents"], b["currency"],
            b.get("description", ""), date, b["paymentMode"], dt.datetime.now(dt.UTC), 1)

def answer(b, id_, created):
    out = {"id": id_, **b, "createdAt": created, "createdBy": 1}
    return Response(orjson.dumps(out, option=orjson.OPT_UTC_Z), status_code=201,
                    media_type="application/json")
"""

MINIMAL_PG_APP = (
    _MINIMAL_COMMON
    + """
import asyncpg
SQL = f"INSERT INTO expenses ({COLUMNS}) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10) RETURNING id"
pool = None

@asynccontextmanager
async def lifespan(app):
    global pool
    pool = await asyncpg.create_pool(sys.argv[2], min_size=10, max_size=20)
    yield
    await pool.close()

async def write(request):
    b = orjson.loads(await request.body())
    v = values(b)
    id_ = await pool.fetchval(SQL, *v)
    return answer(b, id_, v[8])

async def ready(request):
    return Response(b"ok")

app = Starlette(routes=[Route("/", write, methods=["POST"]), Route("/", ready)], lifespan=lifespan)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""
)

# aiosqlite on one connection, WAL, synchronous left at FULL like the app's. Concurrent requests
# interleave their INSERT and COMMIT on the connection's thread, so one COMMIT often carries
# several rows: the naive endpoint already shares fsyncs.
MINIMAL_SQLITE_APP = (
    _MINIMAL_COMMON
    + """
import aiosqlite
SQL = f"INSERT INTO expenses ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING id"
db = None

@asynccontextmanager
async def lifespan(app):
    global db
    db = await aiosqlite.connect(sys.argv[2], timeout=30)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA foreign_keys=ON")
    yield
    await db.close()

def naive(value):
    return value.replace(tzinfo=None).isoformat(" ")

async def write(request):
    b = orjson.loads(await request.body())
    v = values(b)
    row = list(v)
    row[6], row[8] = naive(v[6]), naive(v[8])
    # execute_fetchall steps the statement to its end: a RETURNING cursor left open would make
    # another request's COMMIT fail with "SQL statements in progress".
    ((id_,),) = await db.execute_fetchall(SQL, row)
    await db.commit()
    return answer(b, id_, v[8])

async def ready(request):
    return Response(b"ok")

app = Starlette(routes=[Route("/", write, methods=["POST"]), Route("/", ready)], lifespan=lifespan)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""
)

# wrk's per-thread script: a fixed count of answers per thread (then the thread stops), bodies
# pre-built per property, an Idempotency-Key made per request only when asked for (new keys
# only: the run's own prefix, the thread and a counter).
WRK_LUA = r"""
local threads = {}
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("tid", next_id)
  table.insert(threads, thread)
end

function init(args)
  limit = tonumber(args[1])
  expect = tonumber(args[2])
  idem = args[3] == "1"
  template = args[4]
  props = {}
  for p in string.gmatch(args[5], "%d+") do table.insert(props, p) end
  if args[6] ~= "-" then wrk.headers["Authorization"] = "Bearer " .. args[6] end
  run = args[7]
  if template ~= "-" then
    wrk.method = "POST"
    wrk.headers["Content-Type"] = "application/json"
  end
  requests = {}
  for i, p in ipairs(props) do
    local body = nil
    if template ~= "-" then body = string.gsub(template, "PROPERTY_ID", p) end
    requests[i] = {body = body, req = wrk.format(nil, nil, nil, body)}
  end
  if #requests == 0 then requests[1] = {req = wrk.format()} end
  sent, answered, unexpected = 0, 0, 0
end

function request()
  sent = sent + 1
  local r = requests[(sent % #requests) + 1]
  if idem then
    local h = {}
    for k, v in pairs(wrk.headers) do h[k] = v end
    h["Idempotency-Key"] = string.format("load-%s-%d-%d", run, tid, sent)
    return wrk.format(nil, nil, h, r.body)
  end
  return r.req
end

function response(status, headers, body)
  answered = answered + 1
  if status ~= expect then unexpected = unexpected + 1 end
  if answered >= limit then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local bad = 0
  for _, t in ipairs(threads) do bad = bad + (t:get("unexpected") or 0) end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "unexpected": %d, ' ..
    '"socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), bad,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
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
SPREAD = 64  # properties for the writes-spread-out scenarios
WARMUP_S = 2
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    scenario: str
    backend: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float  # server processes' CPU per request
    db_cpu_ms: float | None  # PostgreSQL backends' CPU per request (None on SQLite)
    client_cpu_ms: float  # wrk's CPU per request
    extra: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime + stime in ticks) of a process, None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # the command name may hold spaces
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree_ticks(root: int) -> int:
    """CPU ticks of a process and every descendant now alive."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (s := _stat(int(entry))) is not None:
            stats[int(entry)] = s
    total, frontier = 0, [root]
    while frontier:
        pid = frontier.pop()
        if pid in stats:
            total += stats[pid][1]
            frontier.extend(p for p, (ppid, _) in stats.items() if ppid == pid)
    return total


def pids_ticks(pids: list[int]) -> dict[int, int]:
    return {pid: s[1] for pid in pids if (s := _stat(pid)) is not None}


class Postgres:
    """A database of this run's on the PostgreSQL server, and the backends serving it."""

    def __init__(self, admin_url: str) -> None:
        self.admin = make_url(admin_url)
        self.name = f"api_load_{uuid.uuid4().hex[:10]}"
        self.url = self.admin.set(database=self.name).render_as_string(hide_password=False)
        self.dsn = self.admin.set(drivername="postgresql", database=self.name).render_as_string(
            hide_password=False
        )

    def _admin(self, sql: str, *args: Any) -> list[Any]:
        import asyncpg

        async def run() -> list[Any]:
            dsn = self.admin.set(drivername="postgresql").render_as_string(hide_password=False)
            conn = await asyncpg.connect(dsn)
            try:
                return list(await conn.fetch(sql, *args))
            finally:
                await conn.close()

        return asyncio.run(run())

    def create(self) -> None:
        self._admin(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def backends(self) -> list[int]:
        rows = self._admin("SELECT pid FROM pg_stat_activity WHERE datname = $1", self.name)
        return [int(r["pid"]) for r in rows]


def prepare_database(url: str) -> list[int]:
    """Migrate, seed the demo org, add properties for the spread scenarios; their ids."""
    from streamcore_server import accounts, storage

    async def run() -> list[int]:
        engine = storage.create_engine(url)
        try:
            await storage.migrate(engine)
            await accounts.seed_demo(engine)
            async with engine.begin() as conn:
                extra = [
                    await accounts.create_property(conn, 1, f"Load property {i}")
                    for i in range(1, SPREAD)
                ]
            return [1, *extra]
        finally:
            await engine.dispose()

    return asyncio.run(run())


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx2.get(url, timeout=1).status_code < 500:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer in {timeout}s")


@contextmanager
def server(argv: list[str], env: dict[str, str], ready_url: str, cwd: str) -> Iterator[int]:
    proc = subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(ready_url, proc)
        yield proc.pid
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


@dataclass
class Load:
    """What one scenario sends."""

    path: str
    body: dict[str, Any] | None = None
    token: str | None = None
    properties: list[int] = field(default_factory=lambda: [1])
    idempotency: bool = False
    expect: int = 201


class Runner:
    def __init__(self, work: str, seconds: float, max_requests: int) -> None:
        self.script = Path(work) / "load.lua"
        self.script.write_text(WRK_LUA)
        self.seconds = seconds
        self.max_requests = max_requests

    def _wrk(self, port: int, load: Load, seconds: float, concurrency: int) -> dict[str, Any]:
        threads = 2
        template = "-"
        if load.body is not None:
            template = json.dumps({**load.body, "propertyId": 0}).replace(
                '"propertyId": 0', '"propertyId": PROPERTY_ID'
            )
        argv = [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{int(seconds)}s",
            "--timeout",
            "10s",
            "-s",
            str(self.script),
            f"http://127.0.0.1:{port}{load.path}",
            "--",
            str(max(1, self.max_requests // threads)),
            str(load.expect),
            "1" if load.idempotency else "0",
            template,
            ",".join(map(str, load.properties)),
            load.token or "-",
            # Fresh keys per invocation: the warm-up's keys would otherwise be replayed.
            uuid.uuid4().hex[:12],
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=seconds + 30)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"wrk failed ({proc.returncode}): {err.strip()} {out.strip()}")
        return dict(json.loads(lines[-1]))

    def drive(
        self,
        name: str,
        backend: str,
        port: int,
        server_pid: int,
        load: Load,
        concurrency: int,
        pg: Postgres | None = None,
    ) -> Result:
        import resource

        self._wrk(port, load, WARMUP_S, concurrency)  # connections, caches, prepared statements
        db_pids = pg.backends() if pg else []
        db_before = pids_ticks(db_pids)
        before = tree_ticks(server_pid)
        client_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        stats = self._wrk(port, load, self.seconds, concurrency)
        client_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        after = tree_ticks(server_pid)
        db_cpu = None
        n = max(1, stats["requests"])
        if pg is not None:
            now = pids_ticks(pg.backends())
            db_ticks = sum(t - db_before.get(pid, 0) for pid, t in now.items())
            db_cpu = round(db_ticks / CLK_TCK * 1000 / n, 3)
        client_s = (client_after.ru_utime + client_after.ru_stime) - (
            client_before.ru_utime + client_before.ru_stime
        )
        seconds = stats["duration_us"] / 1e6
        return Result(
            scenario=name,
            backend=backend,
            concurrency=concurrency,
            requests=stats["requests"],
            errors=stats["unexpected"] + stats["socket_errors"],
            seconds=round(seconds, 3),
            rps=round(stats["requests"] / seconds, 1),
            p50_ms=round(stats["p50_us"] / 1000, 2),
            p99_ms=round(stats["p99_us"] / 1000, 2),
            cpu_ms=round((after - before) / CLK_TCK * 1000 / n, 3),
            db_cpu_ms=db_cpu,
            client_cpu_ms=round(client_s * 1000 / n, 3),
        )


def login(base: str) -> str:
    answer = httpx2.post(
        f"{base}/auth/login", json={"email": "user@example.com", "password": "changeme"}
    )
    answer.raise_for_status()
    return str(answer.json()["accessToken"])


def app_env(work: str, port: int, database_url: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_", "DATABASE_", "WORKERS", "LOG_LEVEL"))
    }
    return {
        **env,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "DATA_DIR": f"{work}/var",
        "DATABASE_URL": database_url,
        **extra,
    }


def run_backend(
    runner: Runner,
    work: str,
    backend: str,
    database_url: str,
    pg: Postgres | None,
    concurrency: int,
    redis_url: str | None,
) -> list[Result]:
    results: list[Result] = []
    props = prepare_database(database_url)
    if pg is not None:
        minimal = [sys.executable, "-c", MINIMAL_PG_APP, "PORT", pg.dsn]
    else:
        minimal = [
            sys.executable,
            "-c",
            MINIMAL_SQLITE_APP,
            "PORT",
            make_url(database_url).database,
        ]
    port = free_port()
    minimal[3] = str(port)
    with server(minimal, dict(os.environ), f"http://127.0.0.1:{port}/", work) as pid:
        results.append(
            runner.drive(
                "minimal insert POST", backend, port, pid, Load("/", EXPENSE), concurrency, pg
            )
        )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "streamcore_server", "serve"]
    with server(argv, app_env(work, port, database_url), f"{base}/healthz", work) as pid:
        token = login(base)
        path = "/v1/finance/expenses"
        cases = [
            ("app POST expense, one property", Load(path, EXPENSE, token), concurrency),
            (
                "app POST expense + Idempotency-Key",
                Load(path, EXPENSE, token, idempotency=True),
                concurrency,
            ),
            (
                f"app POST expense, {SPREAD} properties",
                Load(path, EXPENSE, token, props),
                concurrency,
            ),
            ("app POST expense, one property", Load(path, EXPENSE, token), 32),
            (f"app POST expense, {SPREAD} properties", Load(path, EXPENSE, token, props), 32),
            (
                "app GET expenses (page of 50)",
                Load(f"{path}?propertyId=1", token=token, expect=200),
                concurrency,
            ),
        ]
        for name, load, c in cases:
            results.append(runner.drive(name, backend, port, pid, load, c, pg))
    if pg is not None and redis_url:
        prefix = f"api-load-{uuid.uuid4().hex[:8]}"
        try:
            for workers in (1, 2):
                port = free_port()
                base = f"http://127.0.0.1:{port}"
                env = app_env(
                    work, port, database_url, WORKERS=str(workers), **redis_env(redis_url, prefix)
                )
                with server(argv, env, f"{base}/healthz", work) as pid:
                    load = Load(path, EXPENSE, login(base), props)
                    results.append(
                        runner.drive(
                            f"app POST, {SPREAD} properties, WORKERS={workers} + Redis",
                            backend,
                            port,
                            pid,
                            load,
                            32,
                            pg,
                        )
                    )
        finally:
            drop_redis_keys(redis_url, prefix)
    return results


def run(args: argparse.Namespace) -> list[Result]:
    if shutil.which("wrk") is None:
        raise SystemExit("api_load needs wrk (Debian: apt-get install wrk)")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="api-load-") as work:
        runner = Runner(work, args.seconds, args.max_requests)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        with server(
            [sys.executable, "-c", ECHO_APP, str(port)], dict(os.environ), base, work
        ) as pid:
            results.append(
                runner.drive(
                    "echo POST (parse + echo JSON)", "-", port, pid, Load("/", EXPENSE), 16
                )
            )
            results.append(
                runner.drive("echo GET (constant JSON)", "-", port, pid, Load("/", expect=200), 16)
            )
        sqlite_url = f"sqlite+aiosqlite:///{work}/var/streamcore.db"
        Path(work, "var").mkdir()
        results += run_backend(runner, work, "sqlite", sqlite_url, None, 16, None)
        if not args.no_postgres:
            pg = Postgres(args.postgres)
            pg.create()
            try:
                results += run_backend(runner, work, "postgres", pg.url, pg, 16, args.redis)
            finally:
                pg.drop()
    return results


def _find(results: list[Result], backend: str, prefix: str, c: int = 16) -> Result | None:
    for r in results:
        if r.backend == backend and r.scenario.startswith(prefix) and r.concurrency == c:
            return r
    return None


def verdicts(results: list[Result]) -> list[str]:
    """The issue's targets, each met or MISSED with the measured figure."""
    lines = []

    def target(label: str, value: float | None, limit: float, unit: str, below: bool) -> None:
        if value is None:
            lines.append(f"{label}: not measured")
            return
        ok = value <= limit if below else value >= limit
        sign = "<=" if below else ">="
        lines.append(
            f"{label}: {value:.2f}{unit} (target {sign} {limit}{unit}) {'met' if ok else 'MISSED'}"
        )

    for backend, limit in (("postgres", 1.5), ("sqlite", 2.0)):
        base = _find(results, backend, "minimal insert")
        for prefix, lim in (
            ("app POST expense, one property", limit),
            ("app POST expense + Idempotency-Key", 2.0 if backend == "postgres" else None),
        ):
            app = _find(results, backend, prefix)
            if base and app and lim is not None:
                target(
                    f"{backend} {prefix[9:]}: CPU x minimal",
                    app.cpu_ms / base.cpu_ms,
                    lim,
                    "x",
                    True,
                )
    hot32 = _find(results, "postgres", "app POST expense, one property", 32)
    spread32 = _find(results, "postgres", "app POST expense, 64", 32)
    target("postgres p99 at 32 concurrent, one property", hot32 and hot32.p99_ms, 50, " ms", True)
    target(
        "postgres p99 at 32 concurrent, 64 properties",
        spread32 and spread32.p99_ms,
        50,
        " ms",
        True,
    )
    for backend in ("postgres", "sqlite"):
        for c in (16, 32):
            hot = _find(results, backend, "app POST expense, one property", c)
            spread = _find(results, backend, "app POST expense, 64", c)
            if hot and spread:
                lines.append(
                    f"{backend} contention at {c}: one property {hot.rps:.0f} req/s, "
                    f"64 properties {spread.rps:.0f} req/s ({hot.rps / spread.rps:.2f}x); "
                    f"CPU/req {hot.cpu_ms:.3f} vs {spread.cpu_ms:.3f} ms"
                    + (
                        f", db {hot.db_cpu_ms:.3f} vs {spread.db_cpu_ms:.3f} ms"
                        if hot.db_cpu_ms is not None and spread.db_cpu_ms is not None
                        else ""
                    )
                )
    one = _find(results, "postgres", "app POST, 64 properties, WORKERS=1", 32)
    two = _find(results, "postgres", "app POST, 64 properties, WORKERS=2", 32)
    if one and two:
        target("postgres WORKERS=2 req/s x one worker", two.rps / one.rps, 1.7, "x", False)
    return lines


def report(results: list[Result]) -> str:
    head = (
        f"{'scenario':48} {'db':8} {'conc':>4} {'requests':>8} {'errors':>6} {'req/s':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'CPU ms/req':>10} {'x min':>6} {'db ms':>6} {'wrk ms':>6}"
    )
    lines = [head]
    for r in results:
        base = _find(results, r.backend, "minimal insert")
        ratio = (
            f"{r.cpu_ms / base.cpu_ms:6.2f}"
            if base and r.scenario.startswith("app POST")
            else " " * 6
        )
        db = f"{r.db_cpu_ms:6.3f}" if r.db_cpu_ms is not None else "     -"
        lines.append(
            f"{r.scenario:48} {r.backend:8} {r.concurrency:4d} {r.requests:8d} {r.errors:6d} "
            f"{r.rps:8.1f} {r.p50_ms:7.2f} {r.p99_ms:7.2f} {r.cpu_ms:10.3f} {ratio} {db} "
            f"{r.client_cpu_ms:6.3f}"
        )
    lines.append(
        "CPU ms/req: the server's processes (all workers); x min: that over the minimal insert "
        "endpoint on the same database in this run; db ms: PostgreSQL backends; wrk ms: the client."
    )
    lines += verdicts(results)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5, help="per scenario (default 5)")
    parser.add_argument(
        "--max-requests", type=int, default=50_000, help="cap per scenario (default 50000)"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument(
        "--redis", default=os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = run(args)
    print(report(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
