"""The flush timer on a millisecond clock (uvloop's): it fires once per window, never early."""

from __future__ import annotations

import orjson
import pytest
from hub_support import FakeLoop, Subscriber, make_hub, publish, subscribe_now

from streamcore_server.events import Event


@pytest.mark.parametrize("rate_per_ms", [0.2, 1, 5])
def test_each_flush_finds_a_window_due(rate_per_ms: float) -> None:
    loop = FakeLoop(ms_clock=True)
    hub = make_hub(loop)
    for org in (1, 2, 3):
        subscribe_now(hub, Subscriber(org))
    calls = {"empty": 0, "built": 0}
    flush_due = hub.flush_due

    def counted() -> int:
        built = flush_due()
        calls["built" if built else "empty"] += 1
        return built

    hub.flush_due = counted  # type: ignore[method-assign]
    owed = 0.0
    for n in range(2000):  # two simulated seconds, events at a steady rate on 3 channels
        owed += rate_per_ms
        while owed >= 1:
            owed -= 1
            org = n % 3 + 1
            publish(hub, Event(org, "k", True, orjson.dumps({"n": n})))
        loop.run(10, 0.0001)  # timers fire on the exact clock, 0.1 ms apart
    assert calls["built"] > 0
    assert calls["empty"] <= calls["built"] * 0.05, calls


def test_the_flusher_reports_its_cost_and_busy_windows_follow_it() -> None:
    loop = FakeLoop()
    hub = make_hub(loop, window_min_ms=30, window_max_ms=150, flush_budget=1e-6)
    subscribe_now(hub, Subscriber(1))
    assert hub.scheduler.flush_budget == 1e-6 and hub.scheduler.load == 0.0
    for n in range(3000):  # three simulated seconds of a busy org: each flush costs real CPU
        publish(hub, Event(1, f"k{n % 50}", True, orjson.dumps({"n": n, "pad": "x" * 200})))
        loop.tick(0.001)
    assert hub.scheduler.load > 0.0
    # Any real flush is far over a budget of a millionth of a core: the window is at its widest.
    assert hub.scheduler.length_ms == 150.0
