"""A real uvicorn serving the app inside the test's event loop, spoken to by real WebSocket clients.

In-process so a test can look at the hub and the caps directly; the sockets, the handshake and
uvicorn's protocol (our prepared-frame subclass by default) are the real ones.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from processes import free_port

from streamcore_server import accounts
from streamcore_server.auth import Principal
from streamcore_server.main import create_app
from streamcore_server.settings import Settings


class Server:
    def __init__(self, app: Any, port: int, uv: uvicorn.Server) -> None:
        self.app = app
        self.port = port
        self.uv = uv
        self.http = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}/v2/realtime/stream"
        self._n = 0

    @property
    def hub(self) -> Any:
        return self.app.state.hub

    async def tenant(self, name: str | None = None, users: int = 1) -> dict[str, Any]:
        """An org with a property and `users` users, made through the real account code."""
        self._n += 1
        name = name or f"Org{self._n}"
        async with self.app.state.db.begin() as conn:
            org = await accounts.create_org(conn, name)
            prop = await accounts.create_property(conn, org, f"{name} House")
            ids = [
                await accounts.create_user(conn, org, f"{name.lower()}{i}@example.com", "pw-123456")
                for i in range(users)
            ]
        tokens = [
            self.app.state.tokens.issue(Principal(uid, org, f"{name.lower()}{i}@example.com"))
            for i, uid in enumerate(ids)
        ]
        return {"org": org, "property": prop, "users": ids, "tokens": tokens, "token": tokens[0]}


async def start_server(
    tmp_path: Path,
    ws: str = "streamcore_server.realtime.ws_protocol:StreamWebSocketProtocol",
    ws_per_message_deflate: bool = False,
    **overrides: Any,
) -> Server:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path}/rt.db",
        data_dir=str(tmp_path / "var"),
        **overrides,
    )
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        ws=ws,
        ws_per_message_deflate=ws_per_message_deflate,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    uv = uvicorn.Server(config)
    uv.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.get_running_loop().create_task(uv.serve())
    for _ in range(200):
        if uv.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    assert uv.started, "uvicorn did not start"
    server = Server(app, port, uv)
    server.task = task  # type: ignore[attr-defined]
    return server


async def stop_server(server: Server) -> None:
    server.uv.should_exit = True
    await asyncio.wait_for(server.task, 15)  # type: ignore[attr-defined]


@pytest.fixture
async def rt_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    servers: list[Server] = []

    async def start(**overrides: Any) -> Server:
        d = tmp_path / f"s{len(servers)}"
        d.mkdir()
        server = await start_server(d, **overrides)
        servers.append(server)
        return server

    yield start
    for server in reversed(servers):
        if not server.task.done():  # type: ignore[attr-defined]
            await stop_server(server)


@pytest.fixture
async def rt(rt_factory: Callable[..., Any]) -> Server:
    return await rt_factory(window_min_ms=30.0, window_max_ms=60.0)  # type: ignore[no-any-return]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say when the multi-host tests ran on loopback instead of network namespaces."""
    from hosts import FALLBACKS

    for reason in sorted(FALLBACKS):
        terminalreporter.write_line(f"hosts fell back to {reason}")
