"""A real varnishd with deploy/varnish/streamcore.vcl, and a TCP gate the tests can close."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx2
import pytest
from processes import free_port

ROOT = Path(__file__).resolve().parents[2]
VCL = ROOT / "deploy" / "varnish" / "streamcore.vcl"
DEFAULT_PORT_LINE = '    .port = "4000";'
DEFAULT_SECRET_LINE = '"/etc/varnish/streamcore_jwt_secret"'


def require_varnish() -> str:
    """The varnishd binary; skips (or fails under STREAMCORE_REQUIRE_SERVICES) without it."""
    found = shutil.which("varnishd") or (
        "/usr/sbin/varnishd" if os.path.exists("/usr/sbin/varnishd") else None
    )
    if found is None:
        msg = "varnishd is not installed"
        msg += " (apt-get install varnish varnish-modules varnish-vmod-digest)"
        if os.environ.get("STREAMCORE_REQUIRE_SERVICES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return found


def edge_vcl(backend_port: int, secret_path: Path) -> str:
    """The deployed VCL with the two lines a deployer changes set for this test."""
    text = VCL.read_text()
    assert text.count(DEFAULT_PORT_LINE) == 1 and text.count(DEFAULT_SECRET_LINE) == 1
    text = text.replace(DEFAULT_PORT_LINE, f'    .port = "{backend_port}";')
    return text.replace(DEFAULT_SECRET_LINE, f'"{secret_path}"')


class VarnishProcess:
    """varnishd -F on a free loopback port in front of the app on backend_port."""

    def __init__(
        self, workdir: Path, backend_port: int, secret_path: Path, port: int | None = None
    ) -> None:
        binary = require_varnish()
        self.port = port or free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        vcl = workdir / "streamcore.vcl"
        vcl.write_text(edge_vcl(backend_port, secret_path))
        self.log_path = workdir / "varnishd.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                *(binary, "-F", "-f", str(vcl), "-a", f"127.0.0.1:{self.port}"),
                *("-n", str(workdir / "varnish"), "-s", "malloc,64m", "-j", "none"),
                *("-T", "none", "-p", "thread_pool_min=10"),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        # A purge of a tag nothing carries is answered by the VCL alone, backend or not.
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                r = httpx2.request("PURGE", self.http, headers={"xkey": "probe"}, timeout=1)
                if r.status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, "varnishd did not answer"
            time.sleep(0.1)

    def get(self, path: str, **kw: object) -> httpx2.Response:
        return httpx2.get(f"{self.http}{path}", timeout=10, **kw)  # type: ignore[arg-type]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


class TcpGate:
    """A loopback TCP forwarder to target that can refuse connections (close) and reopen."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._pipes: list[threading.Thread] = []
        self._open: list[socket.socket] = []

    def open(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        """From now on a connection is refused and none is open, as with an edge that is down."""
        if self._listener is not None:
            self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        for pipe in self._pipes:
            pipe.join(5)
        self._pipes.clear()
        for conn in self._open:
            conn.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                for conn in self._open:  # wakes the pipes' recv, which then finish
                    with contextlib.suppress(OSError):
                        conn.shutdown(socket.SHUT_RDWR)
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                pipe = threading.Thread(target=_pipe, args=(a, b), daemon=True)
                pipe.start()
                self._pipes.append(pipe)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
