"""Processes the tests start and stop by pid: served apps and private redis-servers."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(workdir: Path, **extra: Any) -> dict[str, str]:
    """Environment of a server with its own SQLite database and data dir under workdir."""
    return {
        "DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/var/streamcore.db",
        "DATA_DIR": str(workdir / "var"),
        "LOG_LEVEL": "warning",
        **{k: str(v) for k, v in extra.items()},
    }


def children(pid: int) -> list[int]:
    """pid's child processes (forked by any of its threads); none once it is gone."""
    try:
        return [
            int(child)
            for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()
        ]
    except OSError:
        return []


class ServeProcess:
    """`python -m streamcore_server serve` on a free loopback port, ready once /readyz answers 200.

    `host`/`port` pick another address (a network namespace's); `wrap` goes before the command
    (`ip netns exec NAME`), so `pid` is looked up as the server itself, not the wrapper.
    """

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        name: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        wrap: tuple[str, ...] = (),
        wait: bool = True,
    ) -> None:
        self.host = host
        self.port = port or free_port()
        self.http = f"http://{host}:{self.port}"
        self.ws = f"ws://{host}:{self.port}/v2/realtime/stream"
        self.log_path = workdir / f"{name}.log"  # stderr: the JSON log lines
        self.out_path = workdir / f"{name}.out"  # stdout: what serve prints for its user
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "streamcore_server", "serve"],
            cwd=workdir,
            env={**os.environ, **env, "HOST": host, "PORT": str(self.port)},
            stdout=self._out,
            stderr=self._log,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if httpx2.get(f"{self.http}/readyz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        """The server's own pid: `ip netns exec` execs in place, but a wrapper might fork."""
        pid = self.proc.pid
        for _ in range(3):
            try:
                if os.path.samefile(f"/proc/{pid}/exe", sys.executable):
                    return pid
            except OSError:
                return pid  # gone: nothing left to find
            found = children(pid)
            if len(found) != 1:
                break
            pid = found[0]
        return self.proc.pid

    def kill(self) -> int:
        """SIGKILL the server itself (no shutdown, no lease release) and reap it."""
        os.kill(self.pid, signal.SIGKILL)
        code = self.proc.wait(15)
        self.stop()
        return code

    def wait_exit(self, timeout: float = 15) -> int:
        """The exit code once the server ends; a server still running after timeout fails the
        test with the end of its log, which says which shutdown step it is in."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._log.flush()
            tail = self.log_path.read_text(errors="replace")[-6000:]
            raise AssertionError(f"server still running {timeout} s after; log:\n{tail}") from None

    def get(self, path: str, **kw: object) -> httpx2.Response:
        return httpx2.get(f"{self.http}{path}", timeout=10, **kw)  # type: ignore[arg-type]

    def token(self, email: str = "user@example.com", password: str = "changeme") -> str:
        r = httpx2.post(
            f"{self.http}/auth/login", json={"email": email, "password": password}, timeout=10
        )
        assert r.status_code == 200, r.text
        return str(r.json()["accessToken"])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            os.kill(self.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # Workers first: a supervisor killed alone would leave them holding the port.
                for child in children(self.pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child, signal.SIGKILL)
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        self._out.close()
        return self.proc.returncode


class PrivateRedis:
    """A redis-server of the test's own, which it may stop, restart, hang (SIGSTOP) or flush."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port()
        self.url = f"redis://{host}:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start (or restart) the server on its port and wait until it answers PING."""
        self.proc = subprocess.Popen(
            [
                *("redis-server", "--port", str(self.port), "--bind", self.host),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                # Clients in other network namespaces come from the bridge, not loopback.
                *("--protected-mode", "no"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=0.5)
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.RedisError:
                    assert time.monotonic() < deadline, "private redis-server did not start"
                    time.sleep(0.05)
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(host=self.host, port=self.port, socket_timeout=1)

    def hang(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)  # the socket stays open and never answers

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a hung server must be able to die
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
