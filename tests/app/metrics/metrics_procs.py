"""`python -m app serve` processes for the metrics tests (stopped by pid)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Serve:
    def __init__(self, workdir: Path, env: dict[str, str], name: str) -> None:
        self.port = free_port()
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/v2/realtime/stream"
        self.log_path = workdir / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "serve"],
            cwd=workdir,
            env={**os.environ, **env, "HOST": "127.0.0.1", "PORT": str(self.port)},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            try:
                if httpx2.get(f"{self.http}/readyz", timeout=1).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)

    def get(self, path: str, **kw: object) -> httpx2.Response:
        return httpx2.get(f"{self.http}{path}", timeout=10, **kw)  # type: ignore[arg-type]

    def token(self) -> str:
        r = httpx2.post(
            f"{self.http}/auth/login",
            json={"email": "user@example.com", "password": "changeme"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return str(r.json()["accessToken"])

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
