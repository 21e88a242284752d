"""Measure the seed's SLO table against one served app under a mixed, open-loop load.

The server is `python -m streamcore_server serve`.

One server process (embedded SQLite in a fresh data dir; `--redis URL` adds REDIS_URL with key
prefixes of this run's own) receives, for `--seconds` after a short warm-up, all at once:

- the finance API at `--rate` requests/s, open-loop (sent on schedule whether or not earlier
  ones have answered): 60 % GET /v1/finance/summary (the L1/L2/L3-cached read; all-time and this
  month), 25 % GET expense/revenue list pages, 10 % POST expenses and 5 % POST revenues, half of
  the writes with an Idempotency-Key and one keyed write in ten sent again (a replay);
- POST /v2/realtime/publish: `--events` quote events/s in batches of 100, each carrying its
  creation time (`data.ts`), to `--clients` WebSocket subscribers of the demo org in two client
  processes (ws_load's), which time every event on one client in 50; the finance writes' own
  events are delivered and timed too (from their `createdAt`);
- GET /readyz once a second.

It prints the SLO table — target, what the load client measured, what the server's own SLO block
(GET /v1/system/metrics/aggregated) reports, verdict — then the load actually achieved. A missed
target is printed with its number. Exit 0 when the run completed, whatever the verdicts.

    .venv/bin/python -m benchmarks.slo_load [--seconds 30] [--rate 60] [--clients 1000]
        [--events 1000] [--redis redis://127.0.0.1:6379/0] [--json out.json]

Why 60 requests/s: the API saturates near 160 POST/s on the 2-core machine with nothing else
running; here it shares those cores with the realtime fan-out to 1,000 sockets, the client
processes and this load generator, so 60/s keeps it well below saturation and the latencies are
service times, not a queue growing for the length of the run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx2

from benchmarks import api_load, ws_load
from streamcore_server.metrics.slo import SLOS

CLIENT_PROCS = 2
BATCH = 100  # events per publish request
KEYS = 1000  # distinct quote keys: a 150 ms window holds fewer events, so nothing is conflated
WARMUP_S = 2.0
TIMEOUT_S = 5.0  # per request; a request past it counts as an error and as unavailable
# Past this many unanswered requests a send is skipped and counted as failed (unavailable).
MAX_IN_FLIGHT = 256
# The finance mix, in requests per 20.
MIX = {"summary": 12, "list": 5, "expense": 2, "revenue": 1}


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))]


# -- the WebSocket clients -------------------------------------------------------------------------


# -- the HTTP load ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    kind: str
    latency: float  # from the scheduled send time, so a late send is counted (open loop)
    result: str  # ok | 4xx | 5xx | timeout | connection | skipped
    status: int = 0
    late: float = 0.0  # how late the request left this process (the client's own lag)


@dataclass
class Load:
    started: float = 0.0
    seconds: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    events_published: int = 0
    written: Counter[str] = field(default_factory=Counter)  # currency/kind -> cents accepted
    written_n: Counter[str] = field(default_factory=Counter)  # kind -> rows created
    unknown_writes: int = 0  # timed out: committed or not, the client cannot tell
    replays_checked: int = 0
    replays_wrong: int = 0  # a replay without Idempotent-Replayed: true or with another id


class Driver:
    """Send the finance mix, the publish batches and the probes on schedule; record outcomes."""

    def __init__(self, client: httpx2.AsyncClient, property_id: int, seed: int = 1) -> None:
        self.client = client
        self.property_id = property_id
        self.rng = random.Random(seed)
        self.load = Load()
        self.recording = False
        self.kinds = [k for k, n in MIX.items() for _ in range(n)]
        today = dt.datetime.now(dt.UTC)
        month = today.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        self.month = {
            "from": month.isoformat(),
            "to": (month + dt.timedelta(days=32)).replace(day=1).isoformat(),
        }
        self.today = today.isoformat().replace("+00:00", "Z")
        self.n_event = 0

    def record(
        self, kind: str, scheduled: float, sent: float, response: httpx2.Response | None, exc: str
    ) -> None:
        if exc or response is None:
            result = exc
        elif response.status_code >= 500:
            result = "5xx"
        elif response.status_code >= 400:
            result = "4xx"  # the load sends only valid requests: any 4xx is an error too
        else:
            result = "ok"
        if self.recording:
            status = response.status_code if response is not None else 0
            self.load.outcomes.append(
                Outcome(kind, time.perf_counter() - scheduled, result, status, sent - scheduled)
            )

    async def send(
        self, kind: str, scheduled: float, method: str, url: str, **kw: Any
    ) -> httpx2.Response | None:
        sent = time.perf_counter()
        try:
            response = await self.client.request(method, url, **kw)
        except httpx2.TimeoutException:
            self.record(kind, scheduled, sent, None, "timeout")
            return None
        except httpx2.TransportError:
            self.record(kind, scheduled, sent, None, "connection")
            return None
        self.record(kind, scheduled, sent, response, "")
        return response

    async def finance(self, scheduled: float) -> None:
        kind = self.rng.choice(self.kinds)
        if kind == "summary":
            params: dict[str, Any] = {"propertyId": self.property_id}
            if self.rng.random() < 1 / 3:
                params |= self.month
            await self.send("summary", scheduled, "GET", "/v1/finance/summary", params=params)
        elif kind == "list":
            what = self.rng.choice(("expenses", "revenues"))
            params = {"propertyId": self.property_id, "limit": 50}
            await self.send("list", scheduled, "GET", f"/v1/finance/{what}", params=params)
        else:
            await self.write(kind, scheduled)

    async def write(self, kind: str, scheduled: float) -> None:
        currency = "INR" if self.rng.random() < 0.8 else "USD"
        amount = self.rng.randint(100, 500_000)
        body = {
            "propertyId": self.property_id,
            "category": self.rng.choice(("maintenance", "utilities", "rent", "repairs")),
            "amountCents": amount,
            "currency": currency,
            "description": "SLO load",
            f"{kind}Date": self.today,
            "paymentMode": self.rng.choice(("cash", "upi", "card", "bank_transfer")),
        }
        keyed = self.rng.random() < 0.5
        headers = {"Idempotency-Key": str(uuid.uuid4())} if keyed else {}
        url = f"/v1/finance/{kind}s"
        response = await self.send(kind, scheduled, "POST", url, json=body, headers=headers)
        if response is None:
            self.load.unknown_writes += 1
            return
        if response.status_code != 201:
            return
        self.load.written[f"{kind}:{currency}"] += amount
        self.load.written_n[kind] += 1
        if keyed and self.rng.random() < 0.1:  # a client retrying after it got the answer
            again = time.perf_counter()
            replay = await self.send("replay", again, "POST", url, json=body, headers=headers)
            if replay is not None and replay.status_code == 201:
                self.load.replays_checked += 1
                same = replay.json().get("id") == response.json().get("id")
                if replay.headers.get("idempotent-replayed") != "true" or not same:
                    self.load.replays_wrong += 1

    async def publish(self, scheduled: float) -> None:
        now = time.time()
        events = []
        for _ in range(BATCH):
            n = self.n_event
            self.n_event += 1
            events.append({"type": "quote", "key": f"k{n % KEYS}", "data": {"n": n, "ts": now}})
        response = await self.send(
            "publish", scheduled, "POST", "/v2/realtime/publish", json={"events": events}
        )
        if self.recording and response is not None and response.status_code == 202:
            self.load.events_published += int(response.json()["accepted"])

    def skip(self, scheduled: float) -> None:
        if self.recording:
            self.load.outcomes.append(Outcome("skipped", 0.0, "skipped"))

    async def probe(self, scheduled: float) -> None:
        await self.send("probe", scheduled, "GET", "/readyz")


async def open_loop(rate: float, until: float, send: Any, in_flight: set[Any], skip: Any) -> None:
    """Call send(scheduled) `rate` times a second until `until` (perf_counter), not waiting."""
    start = time.perf_counter()
    for i in range(int((until - start) * rate) + 1):
        at = start + i / rate
        if at >= until:
            return
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        if len(in_flight) >= MAX_IN_FLIGHT:
            skip(at)
            continue
        task = asyncio.get_running_loop().create_task(send(at))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class Row:
    slo: str
    target: str
    client: str
    server: str
    verdict: str
    client_value: float | None
    server_value: float | None


def _met(value: float | None, comparison: str, target: float) -> bool | None:
    if value is None:
        return None
    return value < target if comparison == "<" else value > target


def _scale(unit: str) -> tuple[float, str]:
    return (1000.0, " ms") if unit == "seconds" else (100.0, " %")


def _show(value: float | None, unit: str, target: float) -> str:
    """Format a value on the same side of the target as it is: never rounded into a pass."""
    if value is None:
        return "n/a"
    scale, suffix = _scale(unit)
    v, t = value * scale, target * scale
    for digits in (1, 3, 5, 7):
        text = f"{v:.{digits}f}"
        if (float(text) > t) == (v > t) and (float(text) < t) == (v < t):
            return text + suffix
    return f"{v!r}{suffix}"


def slo_table(client: dict[str, float | None], server: dict[str, Any]) -> list[Row]:
    rows = []
    for slo in SLOS:
        mine = client.get(slo.name)
        entry = server.get(slo.name, {})
        theirs = entry.get("current")
        verdicts = {
            "client": _met(mine, slo.comparison, slo.target),
            "server": _met(theirs, slo.comparison, slo.target),
        }
        missed = [who for who, ok in verdicts.items() if ok is False]
        if missed:
            verdict = "MISSED (" + ", ".join(missed) + ")"
        elif any(ok for ok in verdicts.values()):
            verdict = "MET"
        else:
            verdict = "not measured"
        server_text = _show(theirs, slo.unit, slo.target)
        scale, suffix = _scale(slo.unit)
        if theirs is None and entry.get("reason"):
            server_text += f" ({entry['reason']})"
        rows.append(
            Row(
                slo=slo.description,
                target=f"{slo.comparison} {slo.target * scale:g}{suffix}",
                client=_show(mine, slo.unit, slo.target),
                server=server_text,
                verdict=verdict,
                client_value=mine,
                server_value=theirs,
            )
        )
    return rows


def cache_counts(metrics: dict[str, Any]) -> tuple[int, int]:
    """(summary reads served without the database, all summary reads) so far."""
    c = metrics.get("cache") or {}
    l1, l2 = c.get("l1") or {}, c.get("l2") or {}
    reads = l1.get("hits", 0) + l1.get("misses", 0)
    return l1.get("hits", 0) + l2.get("hits", 0), reads


def log_summary(path: Path, running_lines: int) -> dict[str, Any]:
    """Count the server's log lines by level, and its warnings and errors by message.

    The first `running_lines` were written before the server was stopped; the rest at shutdown.
    """
    levels: Counter[str] = Counter()
    notable: Counter[str] = Counter()
    for i, line in enumerate(path.read_text(errors="replace").splitlines()):
        when = "" if i < running_lines else " (at shutdown)"
        try:
            entry = json.loads(line)
            level = str(entry.get("level", "?"))
            message = str(entry.get("msg", line))[:160]
            if entry.get("exc"):  # the exception's last line: its type and message
                message += " <- " + entry["exc"].strip().splitlines()[-1][:160]
        except (json.JSONDecodeError, AttributeError):
            level, message = "text", line[:160]
        levels[level + when] += 1
        if level not in ("info", "debug"):
            notable[f"{level}{when}: {message}"] += 1
    return {"levels": dict(levels), "notable": dict(notable.most_common(6))}


async def drive_load(
    base: str,
    token: str,
    metrics_token: str,
    args: argparse.Namespace,
    subscribers: ws_load.Clients,
    server_pid: int,
) -> dict[str, Any]:
    limits = httpx2.Limits(max_connections=64, max_keepalive_connections=64)
    headers = {"Authorization": f"Bearer {token}"}
    metrics_headers = {"Authorization": f"Bearer {metrics_token}"}
    async with httpx2.AsyncClient(
        base_url=base, limits=limits, timeout=TIMEOUT_S, headers=headers
    ) as client:
        driver = Driver(client, property_id=1)
        in_flight: set[asyncio.Task[None]] = set()
        load = driver.load
        end = time.perf_counter() + WARMUP_S + args.seconds
        loops = [
            open_loop(args.rate, end, driver.finance, in_flight, driver.skip),
            open_loop(args.events / BATCH, end, driver.publish, in_flight, driver.skip),
            open_loop(1.0, end, driver.probe, in_flight, driver.skip),
        ]

        async def window() -> dict[str, Any]:
            await asyncio.sleep(WARMUP_S)
            before = (
                await client.get("/v1/system/metrics/aggregated", headers=metrics_headers)
            ).json()
            subscribers.measure()
            driver.recording = True
            load.started = time.perf_counter()
            cpu0 = ws_load.cpu_s(server_pid)
            await asyncio.sleep(max(0.0, end - time.perf_counter()))
            load.seconds = time.perf_counter() - load.started
            return {"before": before, "cpu": ws_load.cpu_s(server_pid) - cpu0}

        measuring = asyncio.ensure_future(window())
        await asyncio.gather(*loops, measuring)
        measured = measuring.result()
        # In flight at the end: answered within the per-request timeout, or counted as timeouts.
        if in_flight:
            await asyncio.wait(in_flight, timeout=TIMEOUT_S + 1)
        driver.recording = False
        delivered = subscribers.report()
        rss_mb = ws_load.rss_kb(server_pid) / 1024
        summary = (
            await client.get("/v1/finance/summary", params={"propertyId": driver.property_id})
        ).json()
        after = (await client.get("/v1/system/metrics/aggregated", headers=metrics_headers)).json()
    return {
        "load": load,
        "delivered": delivered,
        "before": measured["before"],
        "after": after,
        "cpu": measured["cpu"],
        "rss_mb": rss_mb,
        "summary": summary,
    }


def consistency(load: Load, summary: dict[str, Any]) -> str:
    """Compare the summary read after the run with every write the load made (warm-up included).

    The database held no entries before; a write that timed out may or may not have committed.
    """
    got: Counter[str] = Counter()
    counts: Counter[str] = Counter()
    for t in summary.get("totals", []):
        for kind in ("expense", "revenue"):
            got[f"{kind}:{t['currency']}"] += t[f"{kind}sCents"]
            counts[kind] += t[f"{kind}Count"]
    if load.unknown_writes:
        ok = all(got[k] >= v for k, v in load.written.items()) and all(
            n <= counts[k] <= n + load.unknown_writes for k, n in load.written_n.items()
        )
    else:
        ok = got == load.written and counts == load.written_n
    return (
        f"the summary read after the run holds {dict(counts)} rows; the load wrote "
        f"{dict(load.written_n)} ({load.unknown_writes} timed out, outcome unknown): "
        + ("consistent, to the cent" if ok else "INCONSISTENT")
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"slo-load-{os.getpid()}-{secrets.token_hex(4)}"
    metrics_token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="slo-load-") as work:
        port = api_load.free_port()
        base = f"http://127.0.0.1:{port}"
        cap = str(max(1000, args.clients * 2))
        env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "DATA_DIR": f"{work}/var",
            "DATABASE_URL": f"sqlite+aiosqlite:///{work}/var/streamcore.db",
            "LOG_LEVEL": "warning",
            "JWT_SECRET": ws_load.SECRET,  # the WebSocket clients mint their tokens with it
            "METRICS_TOKEN": metrics_token,
            # Every subscriber is one user of one org here; the caps are not what is measured.
            "REALTIME_MAX_CONNECTIONS_PER_USER": cap,
            "REALTIME_MAX_CONNECTIONS_PER_ORG": cap,
            **(ws_load.redis_env(args.redis, prefix) if args.redis else {}),
        }
        log = Path(work) / "server.log"
        # `exec` keeps the server's pid the one api_load.server() stops; stderr is its log.
        argv = [
            "/bin/sh",
            "-c",
            'exec "$0" -m streamcore_server serve 2>"$1"',
            sys.executable,
            str(log),
        ]
        subscribers: ws_load.Clients | None = None
        try:
            with api_load.server(argv, env, f"{base}/readyz", work) as pid:
                login = httpx2.post(
                    f"{base}/auth/login",
                    json={"email": "user@example.com", "password": "changeme"},
                    timeout=30,
                )
                login.raise_for_status()
                token = login.json()["accessToken"]
                import jwt

                org = int(jwt.decode(token, options={"verify_signature": False})["org"])
                orgs_file = Path(work) / "orgs.json"
                orgs_file.write_text(json.dumps([org] * args.clients))
                t0 = time.monotonic()
                subscribers = ws_load.Clients(
                    "streamcore", port, args.clients, CLIENT_PROCS, 1, str(orgs_file)
                )
                failed = subscribers.ready()
                connect_s = time.monotonic() - t0
                out = asyncio.run(drive_load(base, token, metrics_token, args, subscribers, pid))
                subscribers.close()
                subscribers = None
                time.sleep(1.0)  # the server sees the disconnects before it is stopped
                running_lines = len(log.read_text(errors="replace").splitlines())
            out["log"] = log_summary(log, running_lines)
        finally:
            if subscribers is not None:
                subscribers.close()
            if args.redis:
                out_keys = ws_load.drop_redis_keys(args.redis, prefix)
                print(f"removed {out_keys} Redis keys under {prefix}:*", file=sys.stderr)
    out |= {"org": org, "connected": args.clients - failed, "connect_s": connect_s}
    return out


def measure(out: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Turn the raw run into the client's SLO values, the server's SLO block and the load."""
    load: Load = out["load"]
    api = [o for o in load.outcomes if o.kind not in ("probe", "skipped")]
    everything = load.outcomes
    bad = [o for o in everything if o.result != "ok"]
    n_bad = len(bad) + load.replays_wrong
    down = [o for o in everything if o.result in ("5xx", "timeout", "connection", "skipped")]
    # A timeout counts with the time it took; a refused connection has no latency to count.
    latencies = [o.latency for o in api if o.result != "connection"]
    samples = list(zip(out["delivered"]["lat"], out["delivered"]["lat_org"], strict=True))
    quotes = [lat for lat, tag in samples if tag > 0]
    records = [lat for lat, tag in samples if tag < 0]  # finance events, timed from createdAt
    served0, reads0 = cache_counts(out["before"])
    served1, reads1 = cache_counts(out["after"])
    window_reads = reads1 - reads0
    n = len(everything)
    client = {
        "api_latency_p95": pct(latencies, 95),
        "api_latency_p99": pct(latencies, 99),
        "realtime_delivery_p95": pct(quotes, 95),
        "cache_hit_ratio": (served1 - served0) / window_reads if window_reads else None,
        "error_rate": n_bad / n if n else None,
        "availability": 1 - len(down) / n if n else None,
    }
    server = {entry["name"]: entry for entry in out["after"].get("slo", [])}
    rows = slo_table(client, server)
    seconds = load.seconds or 1.0
    by_kind = Counter(o.kind for o in everything)
    results = Counter(f"{o.kind}:{o.result}" + (f" {o.status}" if o.status else "") for o in bad)
    probes = [o for o in everything if o.kind == "probe"]
    delivered = out["delivered"]
    achieved = {
        "window_s": round(seconds, 2),
        "finance_rps": round(sum(by_kind[k] for k in (*MIX, "replay")) / seconds, 1),
        "finance_rps_target": args.rate,
        "requests_by_kind": dict(by_kind),
        "http_rps_total": round(n / seconds, 1),
        "skipped_sends": by_kind["skipped"],
        "events_published_s": round(load.events_published / seconds),
        "events_target_s": args.events,
        "events_delivered_s": round(delivered["events"] * ws_load.SAMPLE_EVERY / seconds),
        "frames_s": round(delivered["frames"] / seconds),
        "clients_connected": out["connected"],
        "clients": args.clients,
        "connect_s": round(out["connect_s"], 1),
        "delivery_samples": len(quotes),
        "finance_event_p95_ms": _ms(pct(records, 95)),
        "finance_event_samples": len(records),
        "quote_p50_ms": _ms(pct(quotes, 50)),
        "quote_p99_ms": _ms(pct(quotes, 99)),
        "api_p50_ms": _ms(pct(latencies, 50)),
        "latency_by_kind_p95_ms": {
            k: _ms(pct([o.latency for o in api if o.kind == k and o.result == "ok"], 95))
            for k in sorted({o.kind for o in api})
        },
        "client_late_p95_ms": _ms(pct([o.late for o in everything], 95)),
        "server_p95_by_route_ms": {
            f"{r['method']} {r['route']}": r["p95_ms"]
            for r in (out["after"].get("api") or {}).get("by_route", [])
        },
        "errors": dict(results),
        "probes_ok": f"{sum(o.result == 'ok' for o in probes)}/{len(probes)}",
        "replays_checked": load.replays_checked,
        "replays_wrong": load.replays_wrong,
        "cache_window": {"reads": window_reads, "served_without_db": served1 - served0},
        "server_cpu": round(out["cpu"] / seconds, 2),
        "server_rss_mb": round(out["rss_mb"], 1),
        "consistency": consistency(load, out["summary"]),
    }
    return {
        "rows": [asdict(r) for r in rows],
        "achieved": achieved,
        "server": {
            "cache": out["after"].get("cache"),
            "realtime": out["after"].get("realtime"),
            "connections": (out["after"].get("connections") or {}).get("refused"),
            "api_recent": (out["after"].get("api") or {}).get("recent"),
        },
        "log": out["log"],
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def report(result: dict[str, Any], args: argparse.Namespace) -> str:
    a = result["achieved"]
    head = f"{'SLO':32} {'target':>10} {'load client':>14} {'server SLO block':>18}  verdict"
    lines = [
        f"slo_load: {args.seconds:g} s measured, {args.rate:g} finance req/s, "
        f"{args.events} events/s to {args.clients} subscribers"
        + (", Redis" if args.redis else ", embedded SQLite, no Redis"),
        head,
        "-" * len(head),
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['slo']:32} {r['target']:>10} {r['client']:>14} {r['server']:>18}  {r['verdict']}"
        )
    lines += [
        "",
        "load client: latency from each request's scheduled send time to its answer, timeouts",
        "included (finance and publish requests; probes left out); delivery from each quote's",
        "data.ts to its receipt; errors = 5xx, timeouts, connection errors, skipped sends and",
        "any 4xx (the load sends only valid requests); availability = answered without 5xx,",
        "timeout, connection error or skip (probes included); cache = the server's hit and miss",
        "counters over the measured window (a client cannot see hits).",
        "server: API and error figures over its last 5 min (warm-up, login and metrics reads",
        "included; 5xx only), cache and delivery over its lifetime; its delivery runs from a",
        "window's first event to the frame handed to the sockets, not to receipt.",
        "",
        f"achieved: {a['finance_rps']} finance req/s of {a['finance_rps_target']:g} "
        f"({a['http_rps_total']} HTTP req/s in all), {a['events_published_s']} events/s "
        f"published of {a['events_target_s']}, ~{a['events_delivered_s']} event deliveries/s "
        f"and ~{a['frames_s']} frames/s to all subscribers, {a['clients_connected']}/"
        f"{a['clients']} subscribers (connected in {a['connect_s']} s), "
        f"{a['skipped_sends']} sends skipped",
        f"requests: {a['requests_by_kind']}; errors: {a['errors'] or 'none'}; "
        f"readiness probes ok {a['probes_ok']}; replays checked {a['replays_checked']}"
        f" ({a['replays_wrong']} wrong)",
        f"client p95 by kind (ms): {a['latency_by_kind_p95_ms']}; API p50 {a['api_p50_ms']} ms;"
        f" sends left this process up to {a['client_late_p95_ms']} ms late (p95)",
        f"server p95 by route (ms): {a['server_p95_by_route_ms']}",
        f"delivery: quotes p50 {a['quote_p50_ms']} / p99 {a['quote_p99_ms']} ms "
        f"({a['delivery_samples']} samples); finance events p95 {a['finance_event_p95_ms']} ms "
        f"from createdAt ({a['finance_event_samples']} samples)",
        f"cache over the window: {a['cache_window']}; server CPU {a['server_cpu']} cores, "
        f"RSS {a['server_rss_mb']} MB",
        a["consistency"],
        f"server log: {result['log']['levels'] or 'empty'}",
        *(f"  {n} x {line}" for line, n in result["log"]["notable"].items()),
    ]
    return "\n".join(lines)


def _overrun(signum: int, frame: Any) -> None:
    raise TimeoutError("slo_load ran past its time bound")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=30.0, help="measured window (default 30)")
    p.add_argument("--rate", type=float, default=60.0, help="finance requests/s (default 60)")
    p.add_argument("--clients", type=int, default=1000, help="WebSocket subscribers")
    p.add_argument("--events", type=int, default=1000, help="published events/s (default 1000)")
    p.add_argument("--redis", help="also run with REDIS_URL (keys under a prefix of this run)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if not 0 < args.seconds <= 60 or not 0 < args.rate <= 200 or not 0 < args.clients <= 2000:
        p.error("bounded on purpose: --seconds <= 60, --rate <= 200, --clients <= 2000")
    started = time.monotonic()
    # The whole run's bound (90 s with the defaults): past it, the run stops where it is and
    # every process it started is stopped on the way out.
    signal.signal(signal.SIGALRM, _overrun)
    signal.alarm(int(args.seconds + 60))
    try:
        result = measure(run(args), args)
    finally:
        signal.alarm(0)
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(report(result, args))
    print(f"wall time {result['wall_s']} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
