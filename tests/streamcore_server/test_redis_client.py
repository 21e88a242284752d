"""The breaker both Redis users share: skip Redis after a failure, log once per incident."""

from __future__ import annotations

import logging

import pytest

from streamcore_server.redis_client import Breaker


def test_a_failure_pauses_redis_and_an_incident_logs_once_each_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.breaker")
    now = [100.0]
    breaker = Breaker(log, "down", "up", clock=lambda: now[0])
    assert breaker.usable()
    with caplog.at_level(logging.WARNING, "test.breaker"):
        breaker.failed(ConnectionError(), 0.05)
        breaker.failed(TimeoutError(), 0.01)  # a shorter pause never shortens the one running
        assert not breaker.usable()
        now[0] += 0.03
        assert not breaker.usable()
        now[0] += 0.03
        assert breaker.usable()
        breaker.ok()
        breaker.ok()
    assert [r.getMessage() for r in caplog.records] == ["down", "up"]
    assert caplog.records[0].error == "ConnectionError"  # type: ignore[attr-defined]
