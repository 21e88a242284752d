"""Stopping the app's background loops for certain.

A loop that retries on errors (a publisher, a heartbeat, a subscription) can outlive one
cancellation: when a library's own timeout races it, the CancelledError can come out as that
library's timeout error, which the loop catches and retries. Awaiting the task after a single
cancel() then waits forever, and so does the shutdown behind it (CI saw exactly that: a metrics
publisher still publishing 8 s into a worker's shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)

RECANCEL_S = 0.1


async def stop(task: asyncio.Task[Any] | None, timeout: float = 5.0) -> None:
    """Cancel task until it has ended (at most timeout seconds); its outcome is discarded."""
    if task is None:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            log.error("a background task did not stop", extra={"task": task.get_name()})
            return
        task.cancel()
        # Not wait_for(task): cancelling this wait must not cancel the task again by proxy.
        await asyncio.wait({task}, timeout=min(RECANCEL_S, left))
    if not task.cancelled() and task.exception() is not None:
        log.warning("a background task failed before it stopped", exc_info=task.exception())
