"""storage.Combiner: writes that queue behind one statement share the next, and each caller gets its
own answer: a refused batch is retried item by item, AGAIN waits for the next statement, and no
waiter is left hanging when the drain is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from streamcore_server.storage import Combiner


class Refused(Exception):
    """Stands for the database refusing a statement (nothing committed)."""


class Recorder:
    """A run() that records each statement's items; ``gate`` holds the first until released."""

    def __init__(self, bad: set[Any] | None = None, again: set[Any] | None = None) -> None:
        self.statements: list[list[Any]] = []
        self.bad, self.again = bad or set(), again or set()
        self.gate = asyncio.Event()

    async def __call__(self, batch: list[Any]) -> list[Any]:
        self.statements.append(list(batch))
        if len(self.statements) == 1:
            await self.gate.wait()  # the others queue meanwhile: they go as the next statement
        if self.bad & set(batch):
            raise Refused(sorted(self.bad & set(batch)))
        out = []
        for item in batch:
            if item in self.again:
                self.again.discard(item)  # next time it is written
                out.append(Combiner.AGAIN)
            else:
                out.append(f"ok:{item}")
        return out


async def _turns_until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the loop until condition holds: each turn lets the tasks take one step."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{what} never happened")


async def _queued(combiner: Combiner, count: int) -> None:
    await _turns_until(lambda: len(combiner._queues.get("p", [])) == count, f"{count} queued")


async def _write_all(combiner: Combiner, run: Recorder, items: list[Any]) -> list[Any]:
    """The first item's statement is in flight while the others queue behind it."""
    tasks = [asyncio.create_task(combiner.write("p", items[0], run))]
    await _turns_until(lambda: bool(run.statements), "the first statement")
    tasks += [asyncio.create_task(combiner.write("p", item, run)) for item in items[1:]]
    await _queued(combiner, len(items) - 1)
    run.gate.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_writes_that_queue_share_one_statement() -> None:
    run, combiner = Recorder(), Combiner()
    out = await _write_all(combiner, run, [1, 2, 3, 4])
    assert out == ["ok:1", "ok:2", "ok:3", "ok:4"]
    assert run.statements == [[1], [2, 3, 4]]


async def test_a_refused_batch_fails_only_the_item_it_refused() -> None:
    run, combiner = Recorder(bad={3}), Combiner(refused=(Refused,))
    out = await _write_all(combiner, run, [1, 2, 3, 4])
    assert out[:2] == ["ok:1", "ok:2"] and out[3] == "ok:4"
    assert isinstance(out[2], Refused)
    assert run.statements == [[1], [2, 3, 4], [2], [3], [4]]


async def test_any_other_failure_fails_the_whole_batch_without_a_retry() -> None:
    # A lost connection may have come after the commit: trying again could write twice.
    run, combiner = Recorder(bad={3}), Combiner(refused=(KeyError,))
    out = await _write_all(combiner, run, [1, 2, 3, 4])
    assert out[0] == "ok:1"
    assert all(isinstance(o, Refused) for o in out[1:])
    assert run.statements == [[1], [2, 3, 4]]


async def test_an_item_answered_again_goes_in_the_next_statement() -> None:
    run, combiner = Recorder(again={3}), Combiner()
    out = await _write_all(combiner, run, [1, 2, 3, 4])
    assert out == ["ok:1", "ok:2", "ok:3", "ok:4"]
    assert run.statements == [[1], [2, 3, 4], [3]]


async def test_a_cancelled_drain_leaves_no_waiter_hanging() -> None:
    run, combiner = Recorder(), Combiner()
    tasks = [asyncio.create_task(combiner.write("p", item, run)) for item in (1, 2)]
    # Both are taken into the first statement, which waits on the gate.
    await _turns_until(lambda: bool(run.statements), "the first statement")
    assert run.statements == [[1, 2]]
    (drain,) = combiner._running.values()
    drain.cancel()
    out = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
    assert all(isinstance(o, Exception) for o in out), out
    assert "p" not in combiner._running
    with pytest.raises(asyncio.CancelledError):
        await drain
