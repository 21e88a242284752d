"""Polling with a deadline: how a test waits for something to happen, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

TIMEOUT_S = 20.0  # generous: a loaded machine is slow, a correct system still gets there


def eventually(check: Callable[[], Any], what: str, timeout: float = TIMEOUT_S) -> Any:
    """Return check()'s first truthy value; fail naming `what` once the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def eventually_async(
    check: Callable[[], Awaitable[Any]], what: str, timeout: float = TIMEOUT_S
) -> Any:
    """The same for a coroutine check, without blocking the event loop."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def when(response: Any, status: int) -> Any:
    """The response if it has this status, else None: a check for eventually()."""
    return response if response.status_code == status else None
