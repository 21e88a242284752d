"""Several hosts on one machine: network namespaces on a bridge, each running one server.

    network = Network(3)            # namespaces h1..h3 at 10.231.X.11-13, the bridge at .1
    backing = Backing(network)      # a private redis-server and PostgreSQL on the bridge address
    hosts = Hosts(network, backing, tmp_path, REALTIME_LEASE_S="2")
    hosts[0].kill()                 # SIGKILL to the server itself, not to `ip netns exec`
    ...
    hosts.stop(); backing.stop(); network.close()

Each namespace has its own loopback and one veth whose peer sits on a bridge in the root
namespace; the test process stays in the root namespace and reaches every host by its address,
and every host reaches Redis and PostgreSQL on the bridge address. Names carry this process's
pid and a random tag, so parallel runs never collide, and the bridge's /24 is one no interface
uses yet (picked under a lock file). close() removes everything; a run killed before it could
is cleaned up by the next one (namespaces named after a pid that is no longer alive).

Without root or `ip` (or when the kernel refuses a namespace) the hosts are several servers on
loopback ports instead: `network.mode` is "loopback" and `network.reason` says why. Under CI
(STREAMCORE_REQUIRE_SERVICES=1) that fallback is an error, so CI always runs the namespace version.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processes import PrivateRedis, ServeProcess, server_env

from pg_cluster import PostgresCluster, pg_bin  # tests/ (the benchmark puts it on sys.path)

PREFIX = "streamcore"  # namespace names: streamcore-<pid>-<tag>-h<i>
SUBNET = "10.231"  # the bridge takes 10.231.X.1/24, hosts 10.231.X.11, .12, ...
SERVER_PORT = 4000
JWT_SECRET = "hosts-test-secret-" + "x" * 32  # one secret: a token from any host works on all
LOCK = Path(tempfile.gettempdir()) / "streamcore-hosts.lock"
_NETNS = re.compile(rf"^{PREFIX}-(\d+)-([0-9a-f]{{6}})-h\d+$")

# Why a run fell back to loopback (the test session's summary lists them).
FALLBACKS: set[str] = set()


class HostsUnavailable(RuntimeError):
    """Namespaces cannot be made here (the message says why)."""


def _ip(*args: str, netns: str | None = None) -> str:
    cmd = ["ip", *(("netns", "exec", netns, "ip") if netns else ()), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise HostsUnavailable(f"`{' '.join(cmd)}` failed: {done.stderr.strip()}")
    return done.stdout


def namespaces_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or None when they can."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux, not {sys.platform}"
    if os.geteuid() != 0:
        return "not root: `ip netns add` needs CAP_SYS_ADMIN and CAP_NET_ADMIN"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    return None


def require_namespaces() -> bool:
    return os.environ.get("STREAMCORE_REQUIRE_SERVICES") == "1"


@dataclass(frozen=True)
class Host:
    """One host: its name, its namespace (None on loopback) and the address its server binds."""

    name: str
    netns: str | None
    address: str

    @property
    def wrap(self) -> tuple[str, ...]:
        """What runs a command inside this host."""
        return ("ip", "netns", "exec", self.netns) if self.netns else ()


class Network:
    """`n` hosts as network namespaces on a bridge of their own, or on loopback (see module doc)."""

    def __init__(self, n: int) -> None:
        self.tag = secrets.token_hex(3)
        self.bridge: str | None = None
        self.hosts: list[Host] = []
        self.mode = "netns"
        self.reason = ""
        why = namespaces_unavailable()
        if why is None:
            try:
                self._create(n)
                return
            except HostsUnavailable as exc:
                self.close()
                why = str(exc)
        if require_namespaces():
            raise HostsUnavailable(f"CI must run the hosts as network namespaces, but {why}")
        self.mode, self.reason = "loopback", f"several servers on loopback ports: {why}"
        self.address = "127.0.0.1"
        self.hosts = [Host(f"h{i + 1}", None, "127.0.0.1") for i in range(n)]
        FALLBACKS.add(self.reason)

    def _create(self, n: int) -> None:
        remove_stale()
        with _locked():
            used = set(re.findall(rf"inet {re.escape(SUBNET)}\.(\d+)\.", _ip("-o", "-4", "addr")))
            used |= set(re.findall(rf"^{re.escape(SUBNET)}\.(\d+)\.", _ip("-4", "route"), re.M))
            free = [x for x in range(1, 255) if str(x) not in used]
            if not free:
                raise HostsUnavailable(f"every {SUBNET}.X.0/24 is in use")
            x = free[secrets.randbelow(len(free))]
            self.address = f"{SUBNET}.{x}.1"
            self.bridge = f"scb{self.tag}"
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        for i in range(n):
            name = f"h{i + 1}"
            netns = f"{PREFIX}-{os.getpid()}-{self.tag}-{name}"
            outside, inside = f"sc{self.tag}v{i + 1}", f"sc{self.tag}p{i + 1}"
            address = f"{SUBNET}.{x}.{11 + i}"
            _ip("netns", "add", netns)
            self.hosts.append(Host(name, netns, address))
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", netns)
            _ip("link", "set", outside, "master", self.bridge, "up")
            _ip("link", "set", "lo", "up", netns=netns)
            _ip("link", "set", inside, "name", "eth0", netns=netns)
            _ip("addr", "add", f"{address}/24", "dev", "eth0", netns=netns)
            _ip("link", "set", "eth0", "up", netns=netns)

    @property
    def cidr(self) -> str:
        return f"{self.address.rsplit('.', 1)[0]}.0/24" if self.mode == "netns" else "127.0.0.1/32"

    def close(self) -> None:
        """Remove the namespaces (their veth pairs go with them) and the bridge."""
        for host in self.hosts:
            if host.netns:
                subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, check=False)
        if self.bridge:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, check=False)
        self.hosts, self.bridge = [], None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    # Serialises picking a free /24 with claiming it, between runs on this machine.
    with open(LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def remove_stale() -> None:
    """Remove the namespaces and bridges of runs whose process is gone (killed before close())."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NETNS.match(name)
        if m is None or Path(f"/proc/{m[1]}").exists():
            continue
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", f"scb{m[2]}"], capture_output=True, check=False)


class Backing:
    """The services every host shares: a private redis-server and a private PostgreSQL."""

    def __init__(self, network: Network) -> None:
        if pg_bin() is None:
            raise HostsUnavailable("PostgreSQL server binaries (initdb, pg_ctl) are missing")
        self.network = network
        extra = () if network.mode == "loopback" else (network.address,)
        self.postgres = PostgresCluster(standbys=0, listen=extra, trust=(network.cidr,))
        self.database_url = self.postgres.primary.url(host=network.address)
        self.local_database_url = self.postgres.primary.url()  # from the root namespace
        self.redis: PrivateRedis | None = None
        try:
            self.redis = PrivateRedis(host=network.address)
        except BaseException:
            self.postgres.stop()
            raise

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        self.postgres.stop()


class Hosts:
    """One `python -m streamcore_server serve` per host, all on the same Redis and PostgreSQL."""

    def __init__(self, network: Network, backing: Backing, workdir: Path, **env: Any) -> None:
        assert backing.redis is not None
        self.network = network
        self.backing = backing
        self.workdir = workdir
        self.env = {
            "DATABASE_URL": backing.database_url,
            "REDIS_URL": backing.redis.url,
            "JWT_SECRET": JWT_SECRET,
            **{k: str(v) for k, v in env.items()},
        }
        self.servers: list[ServeProcess] = []
        try:
            # The first server migrates and seeds an empty database; the rest start together.
            self.servers.append(self._start(network.hosts[0]))
            self.servers[0].wait_ready()
            rest = [self._start(h) for h in network.hosts[1:]]
            self.servers += rest
            for server in rest:
                server.wait_ready()
        except BaseException:
            self.stop()
            raise

    def _start(self, host: Host) -> ServeProcess:
        d = self.workdir / host.name
        d.mkdir(exist_ok=True)
        port = SERVER_PORT if host.netns else None
        return ServeProcess(
            d,
            server_env(d, **self.env),
            host.name,
            host=host.address,
            port=port,
            wrap=host.wrap,
            wait=False,
        )

    def restart(self, i: int) -> ServeProcess:
        """Start host i's server again (after kill() or stop())."""
        self.servers[i] = self._start(self.network.hosts[i])
        self.servers[i].wait_ready()
        return self.servers[i]

    def __getitem__(self, i: int) -> ServeProcess:
        return self.servers[i]

    def __len__(self) -> int:
        return len(self.servers)

    def __iter__(self) -> Iterator[ServeProcess]:
        return iter(self.servers)

    def logs(self) -> str:
        return "\n".join(
            f"--- {s.log_path.name}\n{s.log_path.read_text(errors='replace')[-3000:]}"
            for s in self.servers
            if s.log_path.exists()
        )

    def stop(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
