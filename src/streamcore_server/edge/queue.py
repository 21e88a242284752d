"""Purges after commit: batched per window, sent to every edge, retried until they land.

A write only adds its tags to a set (no I/O, no await), so a purge can never fail or slow the
write. One task sends each window's tags; a request that fails is retried on its own (per edge)
with exponential backoff until it succeeds or is moot: once the edge's lifetime for what it
targeted (TTL + stale-while-revalidate) has passed since the write, the edge revalidates with the
app anyway. Each successful purge is sent once more after `repeat_after_s`, which evicts a copy
that a read already in flight at the write stored after the first purge.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from .purge import Purger, PurgeRequest

log = logging.getLogger("streamcore_server.edge")

Send = Callable[[PurgeRequest], Awaitable[bool]]  # True when the edge accepted it


@dataclass
class PurgeStats:
    tags: int = 0  # tags enqueued by writes
    batches: int = 0
    requests: int = 0  # purge requests sent, retries included
    succeeded: int = 0
    failed: int = 0
    retries: int = 0
    repeats: int = 0
    moot: int = 0  # given up on: the edge no longer serves what they targeted unrevalidated


@dataclass(order=True)
class _Job:
    due: float
    seq: int
    request: PurgeRequest = field(compare=False)
    first: float = field(compare=False)  # when the write enqueued it
    attempt: int = field(compare=False, default=0)
    repeat: bool = field(compare=False, default=False)


class PurgeQueue:
    def __init__(
        self,
        purger: Purger,
        send: Send,
        *,
        window_s: float,
        retry_base_s: float,
        retry_max_s: float,
        give_up_after_s: float,
        repeat_after_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.purger = purger
        self.stats = PurgeStats()
        self._send = send
        self._window_s = window_s
        self._retry_base_s = retry_base_s
        self._retry_max_s = retry_max_s
        self._give_up_after_s = give_up_after_s
        self._repeat_after_s = repeat_after_s
        self._clock = clock
        self._pending: set[str] = set()
        self._since: float | None = None  # when the oldest pending tag arrived
        self._later: list[_Job] = []  # retries and repeats, a heap by due time
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._failing = False

    def enqueue(self, tags: Iterable[str]) -> None:
        """Purge these tags soon; returns at once (called after a write's commit)."""
        before = len(self._pending)
        self._pending.update(tags)
        self.stats.tags += len(self._pending) - before
        if self._since is None:
            self._since = self._clock()
        self._wake.set()

    def backlog(self) -> int:
        """Tags and requests not yet purged (a gauge)."""
        return len(self._pending) + sum(1 for j in self._later if not j.repeat)

    async def run(self) -> None:
        """Send batches until cancelled."""
        while True:
            await self._sleep_until_work()
            await self.flush()

    async def _sleep_until_work(self) -> None:
        while True:
            if self._pending:
                # Let the window fill: one request carries every tag of its writes.
                assert self._since is not None
                wait = self._since + self._window_s - self._clock()
                if wait > 0:
                    await asyncio.sleep(wait)
                return
            if self._later and self._later[0].due <= self._clock():
                return
            self._wake.clear()
            timeout = self._later[0].due - self._clock() if self._later else None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    async def flush(self) -> None:
        """Send what is pending now and every retry or repeat that is due."""
        now = self._clock()
        jobs: list[_Job] = []
        if self._pending:
            tags, first = sorted(self._pending), self._since or now
            self._pending, self._since = set(), None
            self.stats.batches += 1
            jobs = [_Job(now, next(self._seq), r, first) for r in self.purger.requests(tags)]
        while self._later and self._later[0].due <= now:
            jobs.append(heapq.heappop(self._later))
        if jobs:
            results = await asyncio.gather(*(self._attempt(job) for job in jobs))
            for job, ok in zip(jobs, results, strict=True):
                self._settle(job, ok)

    async def _attempt(self, job: _Job) -> bool:
        self.stats.requests += 1
        if job.attempt:
            self.stats.retries += 1
        try:
            return await self._send(job.request)
        except Exception as exc:
            if not self._failing:
                log.warning("edge purge failed (%s: %s); retrying", type(exc).__name__, exc)
            return False

    def _settle(self, job: _Job, ok: bool) -> None:
        now = self._clock()
        if ok:
            self.stats.succeeded += 1
            if self._failing:
                log.warning("edge purges succeed again")
                self._failing = False
            if job.repeat:
                self.stats.repeats += 1
            elif self._repeat_after_s > 0:
                self._push(now + self._repeat_after_s, job.request, job.first, repeat=True)
            return
        self.stats.failed += 1
        self._failing = True
        if now - job.first >= self._give_up_after_s:
            self.stats.moot += 1
            return
        delay = min(self._retry_base_s * 2**job.attempt, self._retry_max_s)
        self._push(now + delay, job.request, job.first, job.attempt + 1, job.repeat)

    def _push(
        self,
        due: float,
        request: PurgeRequest,
        first: float,
        attempt: int = 0,
        repeat: bool = False,
    ) -> None:
        heapq.heappush(self._later, _Job(due, next(self._seq), request, first, attempt, repeat))
        self._wake.set()
