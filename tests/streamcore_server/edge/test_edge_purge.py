"""Purgers build the documented requests; the queue batches per window, retries and repeats."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from streamcore_server.edge import (
    CloudflarePurger,
    FastlyPurger,
    PurgeQueue,
    PurgeRequest,
    VarnishPurger,
)
from streamcore_server.edge.tags import list_tags, summary_tags, write_tags


def test_varnish_purges_every_edge_with_an_xkey_header() -> None:
    purger = VarnishPurger(["http://10.0.0.1:6081/", "http://10.0.0.2:6081"])
    reqs = purger.requests(["property:1:summary", "org:1:expenses"])
    assert [(r.method, r.url, dict(r.headers)) for r in reqs] == [
        ("PURGE", "http://10.0.0.1:6081/", {"xkey": "property:1:summary org:1:expenses"}),
        ("PURGE", "http://10.0.0.2:6081/", {"xkey": "property:1:summary org:1:expenses"}),
    ]
    many = purger.requests([f"t{i}" for i in range(VarnishPurger.MAX_TAGS + 1)])
    assert len(many) == 4  # two chunks to each edge
    with pytest.raises(ValueError):
        VarnishPurger([])


def test_fastly_bulk_purge_request() -> None:
    purger = FastlyPurger("SVC123", "tok-secret")
    (req,) = purger.requests(["org:1", "property:2:summary"])
    assert (req.method, req.url) == ("POST", "https://api.fastly.com/service/SVC123/purge")
    headers = dict(req.headers)
    assert headers["Fastly-Key"] == "tok-secret"
    assert headers["Content-Type"] == "application/json"
    assert "Fastly-Soft-Purge" not in headers
    assert orjson.loads(req.body) == {"surrogate_keys": ["org:1", "property:2:summary"]}
    assert len(purger.requests([str(i) for i in range(257)])) == 2  # 256 keys a request
    soft = FastlyPurger("SVC123", "tok", soft=True).requests(["a"])[0]
    assert dict(soft.headers)["Fastly-Soft-Purge"] == "1"


def test_cloudflare_purge_by_tag_request() -> None:
    purger = CloudflarePurger("zone9", "cf-token")
    (req,) = purger.requests(["org:1", "org:1:expenses"])
    assert (req.method, req.url) == (
        "POST",
        "https://api.cloudflare.com/client/v4/zones/zone9/purge_cache",
    )
    assert dict(req.headers)["Authorization"] == "Bearer cf-token"
    assert orjson.loads(req.body) == {"tags": ["org:1", "org:1:expenses"]}
    chunks = purger.requests([str(i) for i in range(250)])
    assert [len(orjson.loads(r.body)["tags"]) for r in chunks] == [100, 100, 50]


def test_tags_name_org_resource_and_property() -> None:
    assert summary_tags(1, 7) == ["org:1", "org:1:summary", "property:7", "property:7:summary"]
    assert list_tags(1, "expenses", None) == ["org:1", "org:1:expenses"]
    assert list_tags(1, "revenues", 7)[-1] == "property:7:revenues"
    # What a write purges is carried by every response it changes, and by no other resource.
    purged = set(write_tags(1, "expense", 7))
    assert purged & set(summary_tags(1, 7))
    assert purged & set(list_tags(1, "expenses", None))
    assert purged & set(list_tags(1, "expenses", 7))
    assert not purged & set(list_tags(1, "revenues", 7))
    assert not purged & set(summary_tags(1, 8))
    assert not purged & set(list_tags(2, "expenses", None))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Edge:
    """Records what reaches it; refuses while down (what a send to a real edge would report)."""

    def __init__(self) -> None:
        self.down = False
        self.seen: list[PurgeRequest] = []

    async def send(self, request: PurgeRequest) -> bool:
        self.seen.append(request)
        if self.down:
            raise ConnectionRefusedError("edge down")
        return True


def queue(edge: Edge, clock: Clock, **kw: float) -> PurgeQueue:
    options = {
        "window_s": 0.02,
        "retry_base_s": 0.1,
        "retry_max_s": 0.4,
        "give_up_after_s": 10.0,
        "repeat_after_s": 0.0,
        **kw,
    }
    return PurgeQueue(VarnishPurger(["http://e1", "http://e2"]), edge.send, clock=clock, **options)


async def test_one_window_is_one_request_per_edge() -> None:
    edge, clock = Edge(), Clock()
    q = queue(edge, clock)
    q.enqueue(["a", "b"])
    q.enqueue(["b", "c"])
    await q.flush()
    assert [(r.url, dict(r.headers)["xkey"]) for r in edge.seen] == [
        ("http://e1/", "a b c"),
        ("http://e2/", "a b c"),
    ]
    assert (q.stats.tags, q.stats.batches, q.stats.succeeded) == (3, 1, 2)
    await q.flush()
    assert len(edge.seen) == 2  # nothing pending, nothing sent


async def test_a_failed_purge_is_retried_with_backoff_until_it_lands() -> None:
    edge, clock = Edge(), Clock()
    q = queue(edge, clock)
    edge.down = True
    q.enqueue(["a"])
    await q.flush()
    assert (q.stats.failed, q.backlog()) == (2, 2)
    clock.now = 0.05
    await q.flush()
    assert q.stats.requests == 2  # not due yet (0.1 s)
    clock.now = 0.1
    await q.flush()
    assert (q.stats.requests, q.stats.retries) == (4, 2)
    clock.now = 0.31  # the second backoff is 0.2 s
    edge.down = False
    await q.flush()
    assert (q.stats.succeeded, q.backlog()) == (2, 0)


async def test_a_purge_is_moot_once_the_edge_has_expired_its_objects() -> None:
    edge, clock = Edge(), Clock()
    q = queue(edge, clock, give_up_after_s=1.0)
    edge.down = True
    q.enqueue(["a"])
    for t in (0.0, 0.1, 0.3, 0.7, 1.1):
        clock.now = t
        await q.flush()
    assert q.stats.moot == 2 and q.backlog() == 0


async def test_a_landed_purge_is_sent_once_more() -> None:
    edge, clock = Edge(), Clock()
    q = queue(edge, clock, repeat_after_s=1.0)
    q.enqueue(["a"])
    await q.flush()
    clock.now = 1.0
    await q.flush()
    clock.now = 5.0
    await q.flush()
    assert len(edge.seen) == 4 and q.stats.repeats == 2


async def test_the_running_queue_batches_a_burst_into_one_window() -> None:
    edge = Edge()
    q = PurgeQueue(
        VarnishPurger(["http://e1"]),
        edge.send,
        window_s=0.05,
        retry_base_s=0.1,
        retry_max_s=0.4,
        give_up_after_s=10.0,
        repeat_after_s=0.0,
    )
    task = asyncio.create_task(q.run())
    try:
        for i in range(20):
            q.enqueue([f"t{i}"])
        async with asyncio.timeout(5):
            while q.stats.succeeded < 1:
                await asyncio.sleep(0.01)
        assert q.stats.batches == 1 and len(dict(edge.seen[0].headers)["xkey"].split()) == 20
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
