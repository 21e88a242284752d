"""Three hosts (network namespaces, hosts.py), one server each, one Redis, one PostgreSQL.

Facts (non-conflatable events numbered i) are how delivery is judged: every i must arrive at every
subscriber exactly once and in order, whichever host it was published on or connected to.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from hosts import Backing, Hosts, HostsUnavailable, Network, require_namespaces
from support import frames_until, hello, next_frame, open_ws, publish
from waiting import eventually_async
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from streamcore.client import Reset, StreamClient
from streamcore.protocol import FrameKind

pytestmark = [pytest.mark.slow, pytest.mark.redis]

LEASE_S = 2.0
FAST = {"WINDOW_MIN_MS": "20", "WINDOW_MAX_MS": "40", "REALTIME_LEASE_S": str(LEASE_S)}
RESET_REASONS = {
    "history_expired",
    "epoch_changed",
    "unknown_seq",
    "history_unavailable",
    "history_lost",
    "events_lost",
}


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    try:
        net = Network(3)
    except HostsUnavailable as exc:
        pytest.fail(str(exc))  # only raised under CI, where the loopback fallback is refused
    try:
        yield net
    finally:
        net.close()


@pytest.fixture(scope="module")
def backing(network: Network) -> Iterator[Backing]:
    try:
        services = Backing(network)
    except HostsUnavailable as exc:
        if require_namespaces():
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    try:
        yield services
    finally:
        services.stop()


@pytest.fixture
def start_hosts(
    network: Network, backing: Backing, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Hosts]]:
    """Start one server per host with these settings; every server is stopped afterwards."""
    started: list[Hosts] = []
    request.node.user_properties.append(("hosts", network.reason or network.mode))

    def start(**env: Any) -> Hosts:
        assert backing.redis is not None
        if backing.redis.proc is None:
            backing.redis.start()  # a test that killed it failed before it restarted it
        backing.redis.client().flushall()  # each test starts from no shared state
        hosts = Hosts(network, backing, tmp_path, **{**FAST, **env})
        started.append(hosts)
        return hosts

    yield start
    for hosts in started:
        hosts.stop()
        print(hosts.logs())  # captured: shown only when the test failed


def facts(numbers: range) -> list[dict[str, Any]]:
    return [{"type": "t", "conflatable": False, "data": i} for i in numbers]


async def publish_ok(base: str, token: str, events: list[dict[str, Any]]) -> None:
    r = await publish(base, token, events)
    assert r.status_code == 202, r.text


async def control(ws: ClientConnection, timeout: float = 20.0) -> tuple[dict[str, Any], list[Any]]:
    """Read until a control message other than hello; return it and the events read before."""
    before: list[Any] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await next_frame(ws, max(0.01, deadline - loop.time()))
        if frame.kind == FrameKind.EVENTS:
            before += frame.events
            continue
        message = frame.events[0]
        if message["type"] != "hello":
            return message, before


async def collect_facts(ws: ClientConnection, count: int, timeout: float = 20.0) -> list[int]:
    """The fact numbers of the next `count` events, checking the frames are contiguous."""
    frames = await frames_until(ws, count, timeout)
    for a, b in itertools.pairwise(frames):
        assert b.first_seq == a.seq + 1, f"frames not contiguous: {a.seq} then {b.first_seq}"
    return [e["data"] for f in frames for e in f.events]


def test_an_event_published_on_one_host_reaches_every_host(
    start_hosts: Callable[..., Hosts], network: Network
) -> None:
    hosts = start_hosts()
    token = hosts[0].token()
    if network.mode == "netns":
        # Each server really is in a network namespace of its own, at its own address.
        spaces = {os.stat(f"/proc/{h.pid}/ns/net").st_ino for h in hosts}
        assert len(spaces) == 3 and os.stat("/proc/self/ns/net").st_ino not in spaces
        assert len({h.host for h in hosts}) == 3

    async def scenario() -> None:
        conns = [await open_ws(h.ws, token) for h in hosts]
        try:
            for ws in conns:
                await hello(ws)
            for i, h in enumerate(hosts):  # ten facts published through each host in turn
                await publish_ok(h.http, token, facts(range(10 * i, 10 * i + 10)))
            for ws in conns:
                assert await collect_facts(ws, 30) == list(range(30))
        finally:
            for ws in conns:
                await ws.close()

    asyncio.run(scenario())


class FailoverClient(StreamClient):
    """The project's client, moving on to the next host when one refuses to connect (as a load
    balancer would send it elsewhere); its backoff and resume are StreamClient's own."""

    def __init__(self, urls: list[str], token: str, **kw: Any) -> None:
        super().__init__(urls[0], token, **kw)
        self.urls = urls
        self.connected_to: list[str] = []

    async def _connect(self) -> Any:
        try:
            ws = await super()._connect()
        except OSError:
            self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]
            raise
        self.connected_to.append(self.url)
        return ws


class Subscriber:
    """A FailoverClient read by a task: its facts, resets, and the facts published at each hello."""

    def __init__(self, urls: list[str], token: str, published: Callable[[], int]) -> None:
        self.facts: list[int] = []
        self.resets: list[Reset] = []
        self.hellos: list[tuple[float, int]] = []  # (when, facts published by then)
        self.client = FailoverClient(
            urls,
            token,
            initial_backoff_s=0.05,
            max_backoff_s=0.5,
            on_hello=lambda _: self.hellos.append((time.monotonic(), published())),
        )
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for item in self.client:
            if isinstance(item, Reset):
                self.resets.append(item)
            elif item.get("type") == "t":
                self.facts.append(item["data"])

    async def close(self) -> None:
        await self.client.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


def test_a_killed_hosts_clients_resume_on_another_host_with_nothing_lost_or_repeated(
    start_hosts: Callable[..., Hosts],
) -> None:
    hosts = start_hosts(REALTIME_MAX_CONNECTIONS_PER_USER="50")
    token = hosts[0].token()
    urls = [h.ws for h in hosts]
    total = 450
    published = 0

    async def scenario() -> None:
        nonlocal published
        # Four subscribers on host 1, which fail over to host 2 or host 3.
        orders = ([urls[0], urls[1], urls[2]], [urls[0], urls[2], urls[1]])
        victims = [Subscriber(orders[i % 2], token, lambda: published) for i in range(4)]
        others = [Subscriber(urls[i:] + urls[:i], token, lambda: published) for i in (1, 2)]
        everyone = victims + others
        try:
            await eventually_async(
                _async(lambda: all(s.hellos for s in everyone)), "every subscriber's hello"
            )
            assert all(s.client.connected_to for s in everyone), (
                "StreamClient no longer connects through _connect: update FailoverClient"
            )
            kill_at = asyncio.Event()

            async def publisher() -> None:
                # One fact per request, each after the previous one was accepted, through hosts
                # 2 and 3 in turn: the facts' order is the order they entered the channel.
                nonlocal published
                auth = {"Authorization": f"Bearer {token}"}
                async with (
                    httpx2.AsyncClient(base_url=hosts[1].http, headers=auth, timeout=10) as h2,
                    httpx2.AsyncClient(base_url=hosts[2].http, headers=auth, timeout=10) as h3,
                ):
                    for i in range(total):
                        body = {"events": facts(range(i, i + 1))}
                        r = await (h2, h3)[i % 2].post("/v2/realtime/publish", json=body)
                        assert r.status_code == 202, r.text
                        published = i + 1
                        if published == total // 3:
                            kill_at.set()

            pub = asyncio.get_running_loop().create_task(publisher())
            await kill_at.wait()
            killed_after = published
            code = await asyncio.to_thread(hosts[0].kill)
            assert code == -signal.SIGKILL
            await asyncio.wait_for(pub, 60)

            def arrived() -> bool:
                for s in everyone:  # a reset can never be repaired: fail at once
                    assert s.resets == [], f"reset instead of a resume: {s.resets}"
                return all(len(s.facts) >= total for s in everyone)

            await eventually_async(_async(arrived), "every fact at every subscriber", timeout=30)
            for s in everyone:
                assert s.resets == []
                assert s.facts == list(range(total)), "a fact was lost, repeated or reordered"
            for s in victims:
                assert len(s.hellos) >= 2 and s.client.connected_to[-1] != urls[0]
            # Facts were published while the victims were away, so the resume really replayed.
            assert max(s.hellos[-1][1] for s in victims) > killed_after
        finally:
            for s in everyone:
                await s.close()

    asyncio.run(scenario())


def _async(check: Callable[[], Any]) -> Callable[[], Any]:
    async def run() -> Any:
        return check()

    return run


def test_a_killed_hosts_connection_caps_are_free_again_within_the_lease(
    start_hosts: Callable[..., Hosts],
) -> None:
    cap = 3
    hosts = start_hosts(
        REALTIME_MAX_CONNECTIONS_PER_USER=str(cap), REALTIME_MAX_CONNECTIONS_PER_ORG=str(cap)
    )
    token = hosts[0].token()

    async def refused(url: str) -> int | None:
        try:
            ws = await open_ws(url, token)
        except InvalidStatus as exc:
            return exc.response.status_code
        await ws.close()
        return None

    async def scenario() -> float:
        on_dead = [await open_ws(hosts[0].ws, token) for _ in range(cap)]
        for ws in on_dead:
            await hello(ws)
        # The caps are shared: another host refuses the user's next connection.
        assert await refused(hosts[1].ws) == 429
        assert await refused(hosts[2].ws) == 429
        killed = time.monotonic()
        await asyncio.to_thread(hosts[0].kill)
        survivors: list[ClientConnection] = []
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + LEASE_S + 10
            while len(survivors) < cap:
                try:
                    survivors.append(await open_ws(hosts[1 + len(survivors) % 2].ws, token))
                except InvalidStatus as exc:
                    assert exc.response.status_code == 429
                    assert loop.time() < deadline, "the dead host's leases were never freed"
                    await asyncio.sleep(0.05)
            freed_after = time.monotonic() - killed
            for ws in survivors:
                await hello(ws)
            return freed_after
        finally:
            for ws in [*survivors, *on_dead]:
                with contextlib.suppress(Exception):
                    await ws.close()

    freed_after = asyncio.run(scenario())
    # A lease is refreshed every lease/3, so it outlives its server by at most lease_s; the
    # slack covers a handshake on a loaded machine.
    assert freed_after <= LEASE_S + 1.5, f"caps freed only after {freed_after:.2f} s"


def test_a_redis_restart_resets_every_host_and_then_streams_on(
    start_hosts: Callable[..., Hosts], backing: Backing
) -> None:
    hosts = start_hosts()
    token = hosts[0].token()
    redis = backing.redis
    assert redis is not None

    async def scenario() -> None:
        conns = [await open_ws(h.ws, token) for h in hosts]
        try:
            epochs = [(await hello(ws))["epoch"] for ws in conns]
            await publish_ok(hosts[0].http, token, facts(range(5)))
            for ws in conns:
                assert await collect_facts(ws, 5) == list(range(5))
            await asyncio.to_thread(redis.stop, signal.SIGKILL)  # a crash; no persistence
            await asyncio.to_thread(redis.start)
            # Probes through every host until every subscriber has had its reset: a server may
            # notice the lost history from its broken subscription or only from the next event.
            resets: list[dict[str, Any] | None] = [None] * len(conns)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while not all(resets):
                assert loop.time() < deadline, f"no reset on some host: {resets}"
                for h in hosts:
                    r = await publish(h.http, token, [{"type": "probe", "data": 0, "key": "p"}])
                    assert r.status_code in (202, 503), r.text  # 503 until it reconnects
                for k, ws in enumerate(conns):
                    with contextlib.suppress(TimeoutError):
                        while resets[k] is None:
                            frame = await next_frame(ws, timeout=0.2)
                            message = frame.events[0] if frame.events else {}
                            if frame.kind == FrameKind.CONTROL and message["type"] == "reset":
                                resets[k] = message
            for message in resets:
                assert message is not None and message.get("reason") in RESET_REASONS, message

            for i, h in enumerate(hosts):
                # Each host's publisher reconnects on its next command: until then, 503.
                async def accepted(h: Any = h, i: int = i) -> bool:
                    r = await publish(h.http, token, facts(range(5 + i, 6 + i)))
                    assert r.status_code in (202, 503), r.text
                    return r.status_code == 202

                await eventually_async(accepted, f"a publish on {h.host} after the restart")
            for i, h in enumerate(hosts):
                await publish_ok(h.http, token, facts(range(8 + 3 * i, 11 + 3 * i)))
            for ws, reset, epoch in zip(conns, resets, epochs, strict=True):
                # Each reset names the position to continue from (a server may send more than
                # one: history unavailable, then lost with a new epoch); frames follow the last.
                assert reset is not None
                position, got = reset, []
                while len(got) < 12:  # the probes after the reset, then the 12 facts
                    frame = await next_frame(ws, timeout=20)
                    if frame.kind == FrameKind.CONTROL:
                        message = frame.events[0]
                        assert message["type"] == "reset", message
                        assert message.get("reason") in RESET_REASONS, message
                        position = message
                        continue
                    assert frame.first_seq == position["seq"] + 1, (position, frame)
                    position = {**position, "seq": frame.seq}
                    got += [e["data"] for e in frame.events if e["type"] == "t"]
                assert got == list(range(5, 17))
                # Redis lost the history: the sequence restarted, and the client was told so.
                assert position["epoch"] != epoch, "a restarted sequence kept its epoch"
        finally:
            for ws in conns:
                await ws.close()

    asyncio.run(scenario())


def test_a_resume_on_another_host_replays_what_was_missed(
    start_hosts: Callable[..., Hosts],
) -> None:
    hosts = start_hosts()
    token = hosts[0].token()

    async def scenario() -> None:
        async with await open_ws(hosts[0].ws, token) as ws:
            epoch = (await hello(ws))["epoch"]
            await publish_ok(hosts[0].http, token, facts(range(3)))
            frames = await frames_until(ws, 3)
            last_seq = frames[-1].seq
        await publish_ok(hosts[2].http, token, facts(range(3, 8)))  # while away
        async with await open_ws(hosts[1].ws, token, epoch=epoch, last_seq=last_seq) as ws:
            assert (await hello(ws))["epoch"] == epoch
            replayed = await frames_until(ws, 5)
            assert replayed[0].first_seq == last_seq + 1
            assert [e["data"] for f in replayed for e in f.events] == list(range(3, 8))
            await publish_ok(hosts[2].http, token, facts(range(8, 9)))
            (live,) = await frames_until(ws, 1)
            assert live.first_seq == replayed[-1].seq + 1 and live.events[0]["data"] == 8

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "case",
    [
        "forged_epoch",
        "future_seq",
        "other_orgs_position",
    ],
)
def test_a_bad_resume_on_another_host_gets_a_reset_never_data(
    start_hosts: Callable[..., Hosts], backing: Backing, case: str
) -> None:
    hosts = start_hosts()
    token = hosts[0].token()
    other = asyncio.run(_other_org(backing.local_database_url))
    other_token = hosts[0].token(other["email"], other["password"])
    expected = {
        "forged_epoch": {"epoch_changed"},
        "future_seq": {"unknown_seq"},
        "other_orgs_position": {"epoch_changed", "unknown_seq"},
    }[case]

    async def scenario() -> None:
        async with await open_ws(hosts[0].ws, token) as ws:
            epoch = (await hello(ws))["epoch"]
            await publish_ok(hosts[0].http, token, facts(range(4)))
            seq = (await frames_until(ws, 4))[-1].seq
        query = {
            "forged_epoch": {"epoch": secrets.token_hex(6), "last_seq": 1},
            "future_seq": {"epoch": epoch, "last_seq": seq + 1000},
            "other_orgs_position": {"epoch": epoch, "last_seq": max(0, seq - 2)},
        }[case]
        who = other_token if case == "other_orgs_position" else token
        try:
            ws = await open_ws(hosts[1].ws, who, **query)
        except InvalidStatus as exc:  # a refusal with a code is also an answer, never data
            assert exc.response.status_code == 400, exc
            return
        async with ws:
            first = await hello(ws)
            if case == "other_orgs_position":
                assert first["channel"] != f"org:{1}", first
            message, before = await control(ws, timeout=10)
            assert before == [], "data arrived before the reset"
            assert message["type"] == "reset" and message["reason"] in expected, message
            # After the reset the live stream follows: the org's own, never another org's.
            await publish_ok(hosts[2].http, token, facts(range(100, 102)))
            await publish_ok(hosts[2].http, who, [{"type": "t", "conflatable": False, "data": -1}])
            want = [-1] if who is other_token else [100, 101, -1]
            got = [e["data"] for f in await frames_until(ws, len(want)) for e in f.events]
            assert got == want, "another org's events arrived" if -1 not in got[:1] else got

    asyncio.run(scenario())


async def _other_org(database_url: str) -> dict[str, Any]:
    """A second org with one user, made through the real account code."""
    from streamcore_server import accounts, storage

    name = f"Other{secrets.token_hex(3)}"
    email, password = f"{name.lower()}@example.com", "pw-123456"
    engine = storage.create_engine(database_url)
    try:
        async with engine.begin() as conn:
            org = await accounts.create_org(conn, name)
            await accounts.create_user(conn, org, email, password)
    finally:
        await engine.dispose()
    return {"org": org, "email": email, "password": password}


def test_without_namespaces_the_hosts_are_loopback_servers_that_say_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hosts

    monkeypatch.setattr(hosts, "namespaces_unavailable", lambda: "not root (in this test)")
    monkeypatch.setattr(hosts, "FALLBACKS", set())
    monkeypatch.delenv("STREAMCORE_REQUIRE_SERVICES", raising=False)
    net = Network(2)
    assert net.mode == "loopback" and "not root (in this test)" in net.reason
    assert [h.address for h in net.hosts] == ["127.0.0.1", "127.0.0.1"]
    assert all(h.wrap == () for h in net.hosts)
    assert net.reason in hosts.FALLBACKS  # the session summary lists it
    net.close()
    monkeypatch.setenv("STREAMCORE_REQUIRE_SERVICES", "1")  # CI: refused, never a fallback
    with pytest.raises(HostsUnavailable, match="CI must run the hosts as network namespaces"):
        Network(2)
