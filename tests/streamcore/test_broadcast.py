"""Broadcast: one frame to many transports, against real uvloop transports and odd ones."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import uvloop

from streamcore import Broadcast, StreamcoreTypeError, StreamcoreValueError


class FakeTransport:
    """A transport whose answers the test sets: closing, buffered bytes, a write that raises."""

    def __init__(self, buffered: int = 0, closing: bool = False, fails: bool = False) -> None:
        self.written: list[bytes] = []
        self.buffered, self.closing, self.fails = buffered, closing, fails
        self.on_write: Any = None

    def write(self, data: bytes) -> None:
        if self.on_write is not None:
            self.on_write()
        if self.fails:
            raise RuntimeError("handle closed")
        self.written.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


def test_every_open_member_under_the_limit_gets_the_bytes_and_the_rest_come_back() -> None:
    group = Broadcast()
    ok, full, closing, failing = (
        FakeTransport(),
        FakeTransport(buffered=100),
        FakeTransport(closing=True),
        FakeTransport(fails=True),
    )
    for name, t in (("ok", ok), ("full", full), ("closing", closing), ("failing", failing)):
        group.add(name, t)
    rest = group.send(b"frame", 100)
    assert sorted(rest) == ["closing", "failing", "full"]
    assert ok.written == [b"frame"] and not full.written and not closing.written
    assert group.writes == 1 and len(group) == 4
    full.buffered = 99  # under the limit now
    assert sorted(group.send(b"next", 100)) == ["closing", "failing"]
    assert full.written == [b"next"] and group.writes == 3


def test_add_is_idempotent_and_discard_reports_membership() -> None:
    group, t = Broadcast(), FakeTransport()
    group.add("a", t)
    group.add("a", t)
    assert len(group) == 1 and "a" in group
    assert group.send(b"x", 10) == [] and t.written == [b"x"]
    assert group.discard("a") and not group.discard("a")
    assert len(group) == 0 and group.send(b"y", 10) == [] and t.written == [b"x"]


def test_many_members_come_and_go_and_each_remaining_one_gets_each_frame_once() -> None:
    group = Broadcast()
    transports = {i: FakeTransport() for i in range(100)}
    for i, t in transports.items():
        group.add(i, t)
    for i in range(0, 100, 3):
        assert group.discard(i)
    assert group.send(b"f", 1) == []
    for i, t in transports.items():
        assert t.written == ([] if i % 3 == 0 else [b"f"]), i
    assert sorted(group.members) == [i for i in range(100) if i % 3]


def test_a_member_removed_from_inside_a_write_is_skipped_and_the_rest_still_get_it() -> None:
    group = Broadcast()
    transports = [FakeTransport() for _ in range(5)]
    for i, t in enumerate(transports):
        group.add(i, t)
    # The first write removes two others (as a transport callback could); one already written.
    transports[0].on_write = lambda: (group.discard(3), group.discard(0))
    assert group.send(b"f", 10) == []
    got = [len(t.written) for t in transports]
    assert got[0] == 1 and got[3] == 0 and got[1] == got[2] == got[4] == 1
    assert len(group) == 3 and sorted(group.members) == [1, 2, 4]
    assert group.send(b"g", 10) == [] and [len(t.written) for t in transports] == [1, 2, 2, 0, 2]


def test_bad_arguments_are_refused() -> None:
    group = Broadcast()
    with pytest.raises(StreamcoreTypeError):
        group.send(bytearray(b"x"), 10)  # type: ignore[arg-type]
    with pytest.raises(StreamcoreValueError):
        group.send(b"x", -1)
    with pytest.raises(AttributeError):
        group.add("a", object())  # type: ignore[arg-type]
    assert len(group) == 0


def test_real_uvloop_transports_receive_the_same_bytes_in_order() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        group, peers = Broadcast(), []
        for i in range(20):
            a, b = socket.socketpair()
            b.setblocking(False)
            transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
            group.add(i, transport)
            peers.append((transport, b))
        for n in range(3):
            assert group.send(b"frame-%d;" % n, 1 << 20) == []
        peers[5][0].close()  # closing: the next send hands it back
        assert group.send(b"last;", 1 << 20) == [5]
        for i, (transport, b) in enumerate(peers):
            want = b"frame-0;frame-1;frame-2;" + (b"" if i == 5 else b"last;")
            got = b""
            deadline = loop.time() + 5
            while len(got) < len(want):
                assert loop.time() < deadline, (i, got)
                try:
                    got += b.recv(1 << 16)
                except BlockingIOError:
                    await asyncio.sleep(0.001)
            assert got == want, i
            transport.abort()
            b.close()

    uvloop.run(main())


def test_a_socket_that_takes_part_of_a_frame_gets_the_rest_through_its_transport_in_order() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        b.setblocking(False)
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        group = Broadcast()
        group.add("peer", transport)
        frames = [bytes([65 + n]) * 50_000 for n in range(6)]
        handed_back = []
        for frame in frames:  # the peer reads nothing yet: the kernel takes part, then none
            rest = group.send(frame, 1 << 30)
            handed_back += rest
        assert not handed_back  # the limit was never reached: all went in, some queued
        assert transport.get_write_buffer_size() > 0  # the transport holds what send() left
        got = bytearray()
        want = b"".join(frames)
        deadline = loop.time() + 10
        while len(got) < len(want):
            assert loop.time() < deadline, len(got)
            try:
                got += b.recv(1 << 16)
            except BlockingIOError:
                await asyncio.sleep(0.001)
        assert bytes(got) == want
        transport.abort()
        b.close()

    uvloop.run(main())


def test_a_full_transport_is_handed_back_once_it_holds_the_limit() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=a)
        group = Broadcast()
        group.add("peer", transport)
        for _ in range(100):
            if group.send(b"x" * 10_000, 64_000):
                break
        else:
            raise AssertionError("never handed back")
        assert transport.get_write_buffer_size() >= 64_000
        transport.abort()
        b.close()

    uvloop.run(main())
