"""A client must send its headers, then its body, in time: slow sockets are not kept forever."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from processes import ServeProcess, server_env

pytestmark = pytest.mark.slow

HEADER_S, BODY_S = 1.0, 1.5


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    workdir = tmp_path_factory.mktemp("timeouts")
    env = server_env(workdir, HTTP_HEADER_TIMEOUT_S=HEADER_S, HTTP_BODY_TIMEOUT_S=BODY_S)
    proc = ServeProcess(workdir, env, "server")
    try:
        yield proc
    finally:
        proc.stop()


def _until_closed(sock: socket.socket, limit_s: float) -> tuple[bytes, float]:
    """Read until the server closes the socket; return what it sent and how long that took."""
    started = time.monotonic()
    sock.settimeout(limit_s)
    received = b""
    while True:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            pytest.fail(f"the server kept the socket open for {limit_s} s: {received!r}")
        if not chunk:
            return received, time.monotonic() - started
        received += chunk


def _connect(server: ServeProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_a_socket_that_never_sends_is_closed_with_408(server: ServeProcess) -> None:
    with _connect(server) as sock:
        received, _ = _until_closed(sock, 20)
    assert received.startswith(b"HTTP/1.1 408")
    assert b'"request_timeout"' in received


def test_headers_trickled_a_byte_at_a_time_do_not_hold_the_socket(server: ServeProcess) -> None:
    with _connect(server) as sock:
        started = time.monotonic()
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200
        sent = 0
        sock.settimeout(0.3)
        while time.monotonic() - started < 20 and sent < len(request):
            try:
                sock.sendall(request[sent : sent + 1])
                sent += 1
                if sock.recv(4096) == b"":
                    break
            except TimeoutError:
                continue  # nothing from the server yet: send the next byte
            except (BrokenPipeError, ConnectionResetError):
                break
        else:
            pytest.fail("the server kept reading trickled headers")
    assert time.monotonic() - started < 20


def test_a_body_that_stops_arriving_is_cut_off(server: ServeProcess) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"email": "'
        )
        _, took = _until_closed(sock, 20)
    assert took >= BODY_S * 0.5  # not refused at once: it had its time


def test_a_prompt_client_on_a_keep_alive_connection_is_served(
    server: ServeProcess, tmp_path: Path
) -> None:
    with _connect(server) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while b"}" not in answer:  # the JSON body's end; head and body may come apart
                chunk = sock.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200"), answer
