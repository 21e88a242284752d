"""A server process whose shutdown has not ended some seconds after it began ends anyway.

uvicorn bounds the wait for open connections, but nothing bounds what follows: the app's own
shutdown, the cancellation of leftover tasks, the executor's threads. One step that never returns
keeps the process (and, with several workers, the supervisor that joins it) alive until someone
sends SIGKILL. The watchdog logs where each task and thread is waiting, so the step can be found,
and exits with EXIT_HUNG.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import sys
import threading

log = logging.getLogger(__name__)

EXIT_HUNG = 70  # EX_SOFTWARE


def arm(seconds: float, loop: asyncio.AbstractEventLoop) -> threading.Timer:
    """Exit the process unless it has ended within seconds (a daemon timer: exiting stops it)."""
    timer = threading.Timer(seconds, _fire, args=(seconds, loop))
    timer.daemon = True
    timer.start()
    return timer


def _fire(seconds: float, loop: asyncio.AbstractEventLoop) -> None:
    log.error(
        "shutdown has not ended %s s after it began; exiting. Waiting: %s",
        seconds,
        "; ".join(_waiting(loop)) or "no task",
    )
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(EXIT_HUNG)


def _waiting(loop: asyncio.AbstractEventLoop) -> list[str]:
    """Where each of the loop's tasks is suspended (read from this thread: the loop is stuck)."""
    for _ in range(3):  # the set may change while it is read; a hung loop rarely changes it
        try:
            tasks = list(asyncio.all_tasks(loop))
            break
        except RuntimeError:
            continue
    else:
        return ["(the task set kept changing)"]
    return [f"{task.get_name()}: {' -> '.join(_awaits(task.get_coro()))}" for task in tasks]


def _awaits(coro: object) -> list[str]:
    """The chain of awaits from a task's coroutine down to where it is suspended."""
    chain: list[str] = []
    while coro is not None and len(chain) < 50:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            chain.append(type(coro).__name__)  # a future, or a finished coroutine
            break
        chain.append(
            f"{frame.f_code.co_name} ({os.path.basename(frame.f_code.co_filename)}"
            f":{frame.f_lineno})"
        )
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return chain
