"""The stream against a real uvicorn: windows, conflation, facts, codecs, auth, publish errors."""

from __future__ import annotations

import itertools
from typing import Any

import httpx2
import pytest
from support import assert_silent, frames_until, hello, next_frame, open_ws, publish
from waiting import eventually_async
from websockets.exceptions import InvalidStatus

from streamcore import Codec
from streamcore.protocol import FrameKind, decode_header

WINDOW = {"window_min_ms": 300.0, "window_max_ms": 300.0}


@pytest.fixture
async def srv(rt_factory: Any) -> Any:
    return await rt_factory(**WINDOW)


async def test_events_inside_one_window_arrive_as_one_frame(rt_factory: Any) -> None:
    # A long window, entered right after a flush: five requests (a few ms each, more on a loaded
    # machine) all land inside it, wherever the window's deadlines fall.
    srv = await rt_factory(window_min_ms=2000.0, window_max_ms=2000.0)
    t = await srv.tenant()
    async with await open_ws(srv.ws, t["token"]) as ws:
        greeting = await hello(ws)
        assert greeting["channel"] == f"org:{t['org']}" and greeting["seq"] == 0
        note = [{"type": "note", "conflatable": False, "data": {"i": -1}}]
        assert (await publish(srv.http, t["token"], note)).status_code == 202
        (marker,) = await frames_until(ws, 1)  # a window just closed
        for i in range(5):
            r = await publish(
                srv.http, t["token"], [{"type": "note", "conflatable": False, "data": {"i": i}}]
            )
            assert r.status_code == 202, r.text
        frames = await frames_until(ws, 5)
        assert len(frames) == 1, [len(f.events) for f in frames]
        assert (frames[0].first_seq, frames[0].seq) == (marker.seq + 1, marker.seq + 5)
        assert [e["data"]["i"] for e in frames[0].events] == [0, 1, 2, 3, 4]
        await assert_silent(ws, 0.3)


async def test_a_hundred_updates_to_one_key_arrive_as_one_event(srv: Any) -> None:
    t = await srv.tenant()
    async with await open_ws(srv.ws, t["token"]) as ws:
        await hello(ws)
        events = [{"type": "price", "key": "sku:1", "data": {"v": v}} for v in range(100)]
        r = await publish(srv.http, t["token"], events)
        assert r.status_code == 202 and r.json() == {"accepted": 100}
        (frame,) = await frames_until(ws, 1)
        assert frame.events == [
            {"type": "price", "orgId": t["org"], "key": "sku:1", "data": {"v": 99}}
        ]
        await assert_silent(ws, 0.3)


async def test_non_conflatable_events_all_arrive_in_order(srv: Any) -> None:
    t = await srv.tenant()
    async with await open_ws(srv.ws, t["token"], codec="gzip") as ws:
        await hello(ws)
        sent = 0
        for batch in range(6):
            events = [
                {"type": "tick", "key": "same", "conflatable": False, "data": {"n": batch * 50 + i}}
                for i in range(50)
            ]
            assert (await publish(srv.http, t["token"], events)).status_code == 202
            sent += 50
        frames = await frames_until(ws, sent)
        got = [e["data"]["n"] for f in frames for e in f.events]
        assert got == list(range(sent))
        # Positions, not windows: the frames cover 1..300 with no hole and no overlap.
        assert frames[0].first_seq == 1 and frames[-1].seq == sent
        assert all(b.first_seq == a.seq + 1 for a, b in itertools.pairwise(frames))


async def test_small_frames_go_raw_and_large_ones_compressed(srv: Any) -> None:
    t = await srv.tenant()
    async with (
        await open_ws(srv.ws, t["token"]) as zs,
        await open_ws(srv.ws, t["token"], codec="gzip") as gz,
        await open_ws(srv.ws, t["token"], codec="none") as raw,
    ):
        for ws in (zs, gz, raw):
            await hello(ws)
        await publish(srv.http, t["token"], [{"type": "s", "key": "a", "data": 1}])
        for ws in (zs, gz, raw):
            (frame,) = await frames_until(ws, 1)
            assert frame.codec == Codec.NONE
        big = [
            {"type": "b", "key": f"k{i}", "data": {"text": "lorem ipsum " * 20}} for i in range(20)
        ]
        await publish(srv.http, t["token"], big)
        expected = {id(zs): Codec.ZSTD, id(gz): Codec.GZIP, id(raw): Codec.NONE}
        for ws in (zs, gz, raw):
            (frame,) = await frames_until(ws, 20)
            assert frame.codec == expected[id(ws)]
            assert frame.wire_length < frame.raw_length or frame.codec == Codec.NONE


async def test_finance_writes_reach_the_stream(rt_factory: Any) -> None:
    # Two writes inside one long window, entered right after a flush (see the test above).
    srv = await rt_factory(window_min_ms=2000.0, window_max_ms=2000.0)
    t = await srv.tenant()
    async with await open_ws(srv.ws, t["token"]) as ws:
        await hello(ws)
        note = [{"type": "note", "conflatable": False, "data": {}}]
        assert (await publish(srv.http, t["token"], note)).status_code == 202
        await frames_until(ws, 1)
        async with httpx2.AsyncClient(base_url=srv.http, timeout=10) as client:
            for amount in (100, 250):
                r = await client.post(
                    "/v1/finance/expenses",
                    headers={"Authorization": f"Bearer {t['token']}"},
                    json={
                        "propertyId": t["property"],
                        "category": "maintenance",
                        "amountCents": amount,
                        "currency": "INR",
                        "description": "x",
                        "expenseDate": "2025-12-13T10:00:00Z",
                        "paymentMode": "cash",
                    },
                )
                assert r.status_code == 201, r.text
        frames = await frames_until(ws, 3)
        events = [e for f in frames for e in f.events]
        created = [e for e in events if e["type"] == "expense.created"]
        totals = [e for e in events if e["type"] == "property.totals"]
        assert [e["data"]["amountCents"] for e in created] == [100, 250]
        assert len(totals) == 1  # two totals updates in one window: the latest only
        assert 350 in totals[0]["data"]["totals"][0].values()  # the running total after both


async def test_a_narrowed_subscription_gets_only_its_properties(srv: Any) -> None:
    t = await srv.tenant()
    async with srv.app.state.db.begin() as conn:
        from streamcore_server import accounts

        other = await accounts.create_property(conn, t["org"], "Other")
    async with (
        await open_ws(srv.ws, t["token"], properties=other) as narrow,
        await open_ws(srv.ws, t["token"]) as wide,
    ):
        assert (await hello(narrow))["channel"] == f"org:{t['org']}/properties:{other}"
        await hello(wide)
        await publish(
            srv.http,
            t["token"],
            [
                {"type": "a", "key": "x", "propertyId": t["property"], "data": 1},
                {"type": "b", "key": "y", "propertyId": other, "data": 2},
                {"type": "c", "key": "z", "data": 3},
            ],
        )
        (frame,) = await frames_until(narrow, 1)
        assert [e["type"] for e in frame.events] == ["b"]
        assert [e["type"] for f in await frames_until(wide, 3) for e in f.events] == ["a", "b", "c"]


@pytest.mark.parametrize("where", ["query", "subprotocol"])
async def test_browser_auth_by_query_or_subprotocol(srv: Any, where: str) -> None:
    from websockets.asyncio.client import connect

    t = await srv.tenant()
    if where == "query":
        ws = await connect(f"{srv.ws}?access_token={t['token']}", compression=None)
    else:
        ws = await connect(
            srv.ws, subprotocols=["streamcore.v2", f"bearer.{t['token']}"], compression=None
        )
        assert ws.subprotocol == "streamcore.v2"
    async with ws:
        assert (await hello(ws))["channel"] == f"org:{t['org']}"


async def _refusal(url: str, token: str | None, **query: Any) -> tuple[int, dict[str, Any]]:
    import orjson

    with pytest.raises(InvalidStatus) as info:
        await open_ws(url, token, **query)
    return info.value.response.status_code, orjson.loads(info.value.response.body)


async def test_bad_tokens_and_bad_queries_are_refused_at_the_handshake(srv: Any) -> None:
    t = await srv.tenant()
    status, body = await _refusal(srv.ws, None)
    assert (status, body["error"]["code"]) == (403, "unauthorized")
    status, body = await _refusal(srv.ws, "not-a-jwt")
    assert (status, body["error"]["code"]) == (403, "invalid_token")
    status, body = await _refusal(srv.ws, t["token"], codec="brotli")
    assert (status, body["error"]["code"]) == (400, "invalid_codec")
    status, body = await _refusal(srv.ws, t["token"], last_seq="minus-one")
    assert (status, body["error"]["code"]) == (400, "invalid_query")
    status, body = await _refusal(srv.ws, t["token"], properties="999999")
    assert (status, body["error"]["code"]) == (404, "not_found")
    assert srv.hub.metrics.refused_auth == 2
    assert srv.hub.metrics.refused_bad_request == 3
    assert srv.app.state.caps.total() == 0


async def test_publish_errors_have_the_api_shape(srv: Any) -> None:
    t = await srv.tenant()
    r = await publish(srv.http, "nope", [{"type": "a", "key": "k", "data": 1}])
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_token")
    r = await publish(srv.http, t["token"], [{"type": "a", "data": 1}])
    assert (r.status_code, r.json()["error"]["code"]) == (422, "validation_failed")
    assert r.json()["error"]["details"][0]["field"] == "events.0"
    r = await publish(srv.http, t["token"], [])
    assert r.status_code == 422
    big = "x" * (srv.app.state.settings.realtime_event_max_bytes + 1)
    r = await publish(srv.http, t["token"], [{"type": "a", "key": "k", "data": big}])
    assert (r.status_code, r.json()["error"]["code"]) == (413, "payload_too_large")
    assert r.json()["error"]["details"]["index"] == 0
    r = await publish(
        srv.http, t["token"], [{"type": "a", "key": "k", "propertyId": 999999, "data": 1}]
    )
    assert (r.status_code, r.json()["error"]["code"]) == (404, "not_found")


async def test_a_control_frame_header_is_valid(srv: Any) -> None:
    t = await srv.tenant()
    async with await open_ws(srv.ws, t["token"]) as ws:
        header = decode_header(await ws.recv())
        assert header.kind == FrameKind.CONTROL and header.seq == 0
        await publish(srv.http, t["token"], [{"type": "a", "key": "k", "data": 1}])
        frame = await next_frame(ws)
        assert frame.kind == FrameKind.EVENTS and frame.seq == 1


async def test_without_the_prepared_extension_frames_go_through_asgi(rt_factory: Any) -> None:
    srv = await rt_factory(ws="websockets-sansio", **WINDOW)  # uvicorn's own protocol
    t = await srv.tenant()
    async with await open_ws(srv.ws, t["token"], codec="gzip") as ws:
        await hello(ws)
        events = [{"type": "n", "conflatable": False, "data": i} for i in range(50)]
        await publish(srv.http, t["token"], events)
        got = [e["data"] for f in await frames_until(ws, 50) for e in f.events]
        assert got == list(range(50))
        (conn,) = srv.hub.connections
        assert conn._prepared is None
        conn.shutdown(1013, "slow consumer")  # the fallback closes through ASGI
        await ws.wait_closed()
        assert ws.close_code == 1013


async def test_prepared_frames_are_valid_on_a_deflate_connection(rt_factory: Any) -> None:
    """Another deployment may negotiate permessage-deflate: our frames skip it, validly."""
    from websockets.asyncio.client import connect

    srv = await rt_factory(ws_per_message_deflate=True, **WINDOW)
    t = await srv.tenant()
    async with await connect(
        f"{srv.ws}?codec=zstd", additional_headers={"Authorization": f"Bearer {t['token']}"}
    ) as ws:
        assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
        await hello(ws)
        big = [{"type": "b", "key": f"k{i}", "data": "z" * 200} for i in range(20)]
        await publish(srv.http, t["token"], big)
        (frame,) = await frames_until(ws, 20)
        assert frame.codec == Codec.ZSTD


async def test_only_watched_orgs_have_channels_and_they_go_with_their_last_subscriber(
    rt_factory: Any,
) -> None:
    srv = await rt_factory(**WINDOW)
    t = await srv.tenant()
    watcher = await srv.tenant()
    async with await open_ws(srv.ws, watcher["token"]) as ws:
        await hello(ws)
        await publish(srv.http, t["token"], [{"type": "a", "key": "k", "data": 1}])
        await publish(srv.http, watcher["token"], [{"type": "a", "key": "k", "data": 1}])
        await frames_until(ws, 1)
        assert srv.hub.channel((t["org"], None)) is None  # nobody here watches it: no window
        assert srv.hub.channel((watcher["org"], None)) is not None

    async def dropped() -> bool:
        return srv.hub.channel((watcher["org"], None)) is None

    await eventually_async(dropped, "the channel to go with its last subscriber")


@pytest.mark.parametrize("where", ["header", "subprotocol", "query"])
async def test_a_stream_token_is_verified_once_however_it_arrives(srv: Any, where: str) -> None:
    from websockets.asyncio.client import connect

    t = await srv.tenant()
    tokens = srv.app.state.tokens
    calls: list[str] = []
    verify = tokens.verify_token

    def counted(token: str) -> Any:
        calls.append(token)
        return verify(token)

    tokens.verify_token = counted
    try:
        kwargs: dict[str, Any] = {"compression": None}
        url = srv.ws
        if where == "header":
            kwargs["additional_headers"] = {"Authorization": f"Bearer {t['token']}"}
        elif where == "subprotocol":
            kwargs["subprotocols"] = ["streamcore.v2", f"bearer.{t['token']}"]
        else:
            url = f"{srv.ws}?access_token={t['token']}"
        async with await connect(url, **kwargs) as ws:
            await hello(ws)
        assert calls == [t["token"]]  # the middleware's one verification serves the endpoint
    finally:
        tokens.verify_token = verify


async def test_an_idle_stream_is_parked_and_ends_as_a_stream_does(srv: Any) -> None:
    # Parked: no ASGI task per idle stream; the close still unsubscribes and frees the lease.
    t = await srv.tenant()
    user = t["users"][0]

    async def no_task() -> bool:
        return not srv.uv.server_state.tasks

    async def gone() -> bool:
        return not srv.hub.connections and not srv.uv.server_state.tasks

    async with await open_ws(srv.ws, t["token"]) as ws:
        await hello(ws)
        (conn,) = srv.hub.connections
        await eventually_async(no_task, "the stream's ASGI task returned")
        assert conn._send_bytes is None and srv.app.state.caps.counts(user, t["org"]) == (1, 1)
        r = await publish(srv.http, t["token"], [{"type": "n", "conflatable": False, "data": 1}])
        assert r.status_code == 202
        (frame,) = await frames_until(ws, 1)
        assert frame.events[0]["data"] == 1
    await eventually_async(gone, "the parked stream finished")
    assert srv.app.state.caps.counts(user, t["org"]) == (0, 0)
