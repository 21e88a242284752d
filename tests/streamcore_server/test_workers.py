"""`serve --workers N`: several uvicorn workers behind one port, sharing fan-out through Redis."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx2
import pytest
import redis as sync_redis
from processes import ServeProcess, children, server_env

# tests/streamcore_server/realtime is a directory, not a package: imported as a namespace from
# tests/streamcore_server.
from realtime.support import (
    assert_sigterm_closes_with_1012,
    assert_silent,
    frames_until,
    hello,
    open_ws,
)

from streamcore_server import logs
from streamcore_server.__main__ import main
from streamcore_server.settings import Settings, SettingsError


def test_workers_defaults_to_one_and_is_read() -> None:
    assert Settings.from_env({}).workers == 1
    assert Settings.from_env({"WORKERS": "4"}).workers == 4


@pytest.mark.parametrize("value", ["0", "-2", "two", "1.5"])
def test_a_bad_workers_value_names_the_variable(value: str) -> None:
    with pytest.raises(SettingsError, match="WORKERS"):
        Settings.from_env({"WORKERS": value})


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An environment for `main(["serve", ...])` in this process, with no Redis."""
    for name in ("REDIS_URL", "WORKERS", "JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/app.db")
    monkeypatch.setenv("DATA_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("SEED_DEMO", "0")
    # serve() installs the JSON log handler on the root logger; not in the test process.
    monkeypatch.setattr(logs, "configure", lambda level: None)
    return tmp_path


@pytest.mark.parametrize(
    ("argv", "env"), [(["serve", "--workers", "2"], {}), (["serve"], {"WORKERS": "3"})]
)
def test_several_workers_without_redis_refuse_to_start(
    cli_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    env: dict[str, str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("configuration error: WORKERS=")
    assert "REDIS_URL" in err and "fan-out" in err and "connection caps" in err
    assert not (cli_env / "app.db").exists()  # refused before migrating anything


def test_a_bad_workers_flag_is_a_usage_error(
    cli_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--workers", "0"])
    assert exit_info.value.code == 2
    assert "--workers" in capsys.readouterr().err


def test_the_flag_overrides_workers_and_hands_uvicorn_the_factory(
    cli_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uvicorn

    calls: list[tuple[Any, dict[str, Any]]] = []

    def fake_run(app: Any, **options: Any) -> None:
        # By now the parent has migrated and written the secret the workers will read.
        assert (cli_env / "app.db").exists()
        assert (cli_env / "var" / "jwt_secret").read_text().strip()
        calls.append((app, options))

    monkeypatch.setattr(uvicorn, "run", fake_run)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")  # never contacted by the parent
    monkeypatch.setenv("WORKERS", "5")
    assert main(["serve", "--workers", "2"]) == 0
    ((app, options),) = calls
    assert app == "streamcore_server.main:create_app_from_env"
    assert options["factory"] is True and options["workers"] == 2
    assert options["ws"] == "streamcore_server.realtime.ws_protocol:StreamWebSocketProtocol"
    assert options["ws_per_message_deflate"] is False
    assert options["timeout_graceful_shutdown"] == 5


def worker_pids(parent: int) -> set[int]:
    """The uvicorn workers among the children of `parent` (multiprocessing spawns them)."""
    return {
        child
        for child in children(parent)
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
    }


def aggregated(server: ServeProcess) -> dict[str, Any]:
    # A fresh connection per call: any worker may answer; each merges the other's snapshot.
    r = server.get("/v1/system/metrics/aggregated")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.redis
def test_two_workers_deliver_every_event_to_every_subscriber_once(
    redis_url: str, tmp_path: Path
) -> None:
    prefix = f"test-workers-{uuid.uuid4().hex[:8]}"
    env = server_env(
        tmp_path,
        WORKERS=2,  # the shared launcher runs plain `serve`; the flag is checked above
        REDIS_URL=redis_url,
        REALTIME_REDIS_PREFIX=prefix,
        IDEMPOTENCY_REDIS_PREFIX=f"{prefix}:idem:",
        METRICS_REDIS_PREFIX=f"{prefix}:metrics",
        METRICS_PUBLISH_INTERVAL_S=0.3,
        REALTIME_MAX_CONNECTIONS_PER_USER=100,
        LOG_LEVEL="info",  # the shutdown steps, should one of them hang
    )
    server = ServeProcess(tmp_path, env, "workers")
    client = sync_redis.Redis.from_url(redis_url)
    try:
        token = server.token()  # issued by one worker, verified below by both
        workers = worker_pids(server.proc.pid)
        assert len(workers) == 2

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            subscribers, instances, epochs = [], set(), set()
            # hello names the process serving the stream. The kernel picks the worker per
            # accept: connect until both are seen (the second worker may still be starting).
            deadline = loop.time() + 15
            while len(subscribers) < 6 or len(instances) < 2:
                assert loop.time() < deadline and len(subscribers) < 60, instances
                ws = await open_ws(server.ws, token)
                greeting = await hello(ws)
                instances.add(greeting["instance"])
                epochs.add(greeting["epoch"])
                subscribers.append(ws)
                await asyncio.sleep(0.02)
            assert len(epochs) == 1  # one sequence for the org, whichever worker serves it

            # The aggregated metrics merge both workers through Redis: both pids, every socket.
            deadline = loop.time() + 10
            while True:
                body = await asyncio.to_thread(aggregated, server)
                pids = {int(i["id"].split(":")[-2]) for i in body["source"]["instances"]}
                if pids == workers and body["connections"]["total"] == len(subscribers):
                    break
                assert loop.time() < deadline, (pids, workers, body["connections"])
                await asyncio.sleep(0.2)

            # Ten publishes on fresh connections, so they land on either worker.
            for batch in range(10):
                events = [
                    {"type": "t", "conflatable": False, "data": batch * 3 + i} for i in range(3)
                ]
                async with httpx2.AsyncClient(base_url=server.http, timeout=10) as http:
                    r = await http.post(
                        "/v2/realtime/publish",
                        json={"events": events},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                assert r.status_code == 202, r.text
            for ws in subscribers:
                got = [e["data"] for f in await frames_until(ws, 30, timeout=10) for e in f.events]
                assert got == list(range(30))  # all, in publish order, none twice
            await asyncio.gather(*(assert_silent(ws, 0.3) for ws in subscribers))

            # SIGTERM to the supervisor reaches every worker: each stream gets 1012 at once.
            await assert_sigterm_closes_with_1012(server.proc, subscribers)

        asyncio.run(scenario())
        assert server.wait_exit(15) == 0
        log_text = server.log_path.read_text()
        # The supervisor exits 0 whatever its workers did: each ended on its own, not by the
        # exit watchdog (whose line says where a worker's shutdown hung).
        assert "shutdown has not ended" not in log_text, log_text[-6000:]
        assert client.zcard(f"{prefix}:conns:org:1") == 0  # every lease released
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        server.stop()
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
