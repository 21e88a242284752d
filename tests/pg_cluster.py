"""A private PostgreSQL primary with streaming hot standbys, on free loopback ports.

Made by initdb (wal_level=replica) and pg_basebackup -R, run with pg_ctl as the postgres user
(PostgreSQL refuses to run as root), and removed by stop(). The tests and the replica benchmark
pause, stop and restart its standbys, which they may never do to the shared server.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

DATABASE = "streamcore"


def pg_bin() -> Path | None:
    """The newest PostgreSQL server binaries installed (Debian's /usr/lib/postgresql/N/bin)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_basebackup"),
        key=lambda p: int(Path(p).parts[-3]),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb and shutil.which("pg_basebackup") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One postgres data directory and its port."""

    def __init__(self, cluster: PostgresCluster, name: str) -> None:
        self.cluster = cluster
        self.data = cluster.root / name
        self.port = free_port()
        self.log = cluster.root / f"{name}.log"

    def url(self, driver: str = "postgresql+asyncpg", host: str = "127.0.0.1") -> str:
        return f"{driver}://postgres@{host}:{self.port}/{DATABASE}"

    def start(self) -> None:
        self.cluster.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "start")

    def running(self) -> bool:
        return (
            self.cluster.run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0
        )

    def stop(self, mode: str = "fast") -> None:
        self.cluster.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def _signal_all(self, sig: int) -> None:
        # Each child of the postmaster runs in a session of its own: signal them one by one.
        pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        pids = [pid]
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    pids.append(int(stat.parent.name))
            except (OSError, ValueError):
                continue  # gone meanwhile
        for p in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)

    def hang(self) -> None:
        """Freeze every process of the server: sockets stay open and nothing answers."""
        self._signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal_all(signal.SIGCONT)

    def sql(self, query: str, database: str = DATABASE) -> str:
        """Run one statement with psql and return its unaligned output."""
        done = self.cluster.run(
            *("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"),
            *("-d", database, "-XAtqc", query),
        )
        return done.stdout.strip()


class PostgresCluster:
    """A primary and `standbys` streaming standbys under one temporary directory."""

    def __init__(
        self, standbys: int = 1, listen: tuple[str, ...] = (), trust: tuple[str, ...] = ()
    ):
        """`listen`: addresses besides loopback; `trust`: CIDRs whose clients may connect."""
        bindir = pg_bin()
        if bindir is None:
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_basebackup) are missing")
        self.bin = bindir
        self.listen = ("127.0.0.1", *listen)
        self.trust = trust
        self.as_postgres = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="streamcore-pg-"))
        if self.as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.primary = Server(self, "primary")
        self.standbys: list[Server] = []
        try:
            self._init_primary()
            for i in range(standbys):
                self.add_standby(f"standby{i}")
        except BaseException:
            self.stop()
            raise

    def run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self.as_postgres:
            kwargs = {"user": "postgres", "group": "postgres", "extra_groups": []}
        done = subprocess.run(
            [str(self.bin / program), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.root,
            **kwargs,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed: {done.stdout}{done.stderr}")
        return done

    def _init_primary(self) -> None:
        p = self.primary
        self.run("initdb", "-D", str(p.data), "-U", "postgres", "--auth=trust", "--no-sync")
        # Loopback (and what the caller adds), a socket directory of its own, and WAL a standby
        # can stream. fsync off: a test cluster need not survive a power cut, and the shared
        # machine's disk is slow.
        conf = f"""
listen_addresses = '{",".join(self.listen)}'
port = {p.port}
unix_socket_directories = '{self.root}'
wal_level = replica
max_wal_senders = 10
hot_standby = on
hot_standby_feedback = on
max_connections = 200
shared_buffers = 32MB
fsync = off
synchronous_commit = on
full_page_writes = off
"""
        with open(p.data / "postgresql.conf", "a") as f:
            f.write(conf)
        with open(p.data / "pg_hba.conf", "a") as f:
            f.writelines(f"host all all {cidr} trust\n" for cidr in self.trust)
        p.start()
        p.sql(f"CREATE DATABASE {DATABASE}", database="postgres")

    def add_standby(self, name: str) -> Server:
        """A hot standby streaming from the primary, started and replaying."""
        s = Server(self, name)
        self.run(
            *("pg_basebackup", "-h", "127.0.0.1", "-p", str(self.primary.port), "-U", "postgres"),
            *("-D", str(s.data), "-R", "-X", "stream", "--checkpoint=fast", "--no-sync"),
        )
        with open(s.data / "postgresql.conf", "a") as f:
            f.write(f"port = {s.port}\n")
        s.start()
        self.standbys.append(s)
        return s

    def lsn_behind(self, standby: Server) -> int:
        """WAL bytes the standby has yet to replay of what the primary has written."""
        current = self.primary.sql("SELECT pg_current_wal_lsn()")
        return int(
            float(standby.sql(f"SELECT pg_wal_lsn_diff('{current}', pg_last_wal_replay_lsn())"))
        )

    def wait_caught_up(self, standby: Server, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.lsn_behind(standby) > 0:
            assert time.monotonic() < deadline, f"{standby.data.name} did not catch up"
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop every server and remove the directory."""
        for s in [*self.standbys, self.primary]:
            if (s.data / "postmaster.pid").exists():
                s.resume()  # a hung server must be able to stop
                s.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
