"""Command line (`python -m streamcore_server`, `streamcore`): serve, watch, create accounts."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .settings import Settings, SettingsError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

T = TypeVar("T")


async def _with_db(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    from . import storage

    engine = storage.create_engine(settings.database_url)
    try:
        await storage.migrate(engine)
        return await work(engine)
    finally:
        await engine.dispose()


def login_hint(settings: Settings) -> str:
    host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0", "::") else settings.host
    return (
        f'Log in: curl -s -X POST "http://{host}:{settings.port}/auth/login" '
        '-H "Content-Type: application/json" '
        '-d \'{"email":"user@example.com","password":"changeme"}\''
    )


def check_workers(settings: Settings) -> None:
    """Refuse several workers without Redis, where each would serve as if it were alone."""
    if settings.workers > 1 and not settings.redis_url:
        raise SettingsError(
            f"WORKERS={settings.workers} needs REDIS_URL: without Redis every worker process keeps "
            "its own realtime fan-out and connection caps, so a subscriber would miss the events "
            "published through another worker and the caps would count per process. "
            "Set REDIS_URL, or run one worker."
        )


class CannotListen(Exception):
    """The configured host and port cannot be bound (in use, or not an address of this host)."""


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen on host:port as uvicorn would, or raise CannotListen saying why."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise CannotListen(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


WS_MAX_MESSAGE_BYTES = 64 * 1024


def serve(settings: Settings) -> None:
    import uvicorn

    from . import accounts, auth, logs
    from .main import create_app

    logs.configure(settings.log_level)
    # Bound first: a port in use fails the start at once, before migrations or any lifespan
    # (uvicorn binds after the app's startup, then waits on its shutdown deaf to SIGTERM).
    sock = listen(settings.host, settings.port)

    async def prepare(engine: AsyncEngine) -> tuple[bool, bool]:
        # Migrate and seed here, once, before any worker starts serving.
        seeded = False
        if settings.seed_demo and await accounts.is_empty(engine):
            seeded = await accounts.seed_demo(engine)
        return seeded, await accounts.find_user(engine, accounts.DEMO_EMAIL) is not None

    seeded, has_demo = asyncio.run(_with_db(settings, prepare))
    if seeded:
        print(
            "Seeded demo org 'Demo', property 1 and user user@example.com / changeme.", flush=True
        )
    if has_demo:
        print(login_hint(settings), flush=True)
    if settings.jwt_secret is None:
        # Made here, before any worker starts, so workers only ever read the file.
        auth.load_or_create_secret(settings.data_dir)
    options: dict[str, Any] = dict(
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # keep the JSON handler installed above (workers install their own)
        access_log=False,  # the request-context middleware logs one structured line per request
        server_header=False,
        # header and body read timeouts
        http="streamcore_server.http_protocol:TimedHttpToolsProtocol",
        # Our protocol class writes a prepared frame to every socket without ASGI's per-message
        # cost; the frames are zstd/gzip already, so permessage-deflate would only burn CPU.
        ws="streamcore_server.realtime.ws_protocol:StreamWebSocketProtocol",
        ws_per_message_deflate=False,
        # A stream's client has nothing to send (docs/REALTIME.md): a message over this is
        # refused with 1009 at its header, before its payload is buffered (the default, 16 MiB,
        # let one socket hold that much).
        ws_max_size=WS_MAX_MESSAGE_BYTES,
        timeout_graceful_shutdown=5,  # SIGTERM: clients get 1012 at once; stragglers are cut
    )
    if settings.workers == 1:
        app = create_app(settings, own_process=True)
        server = uvicorn.Server(uvicorn.Config(app, **options))
        server.run(sockets=[sock])
        if not server.started:
            raise SystemExit(3)  # what uvicorn.run answers for a start that failed
        return
    sock.close()  # uvicorn's parent binds the port itself and hands it to the workers
    # uvicorn spawns fresh interpreters sharing the bound socket; each imports this factory and
    # builds its app from the same environment. On SIGTERM the parent passes it to every worker.
    uvicorn.run(
        "streamcore_server.main:create_app_from_env",
        factory=True,
        workers=settings.workers,
        **options,
    )


def _worker_count(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an integer > 0")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streamcore_server", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "serve", help="migrate, seed the demo into an empty database, run the server"
    )
    p.add_argument(
        "--workers",
        type=_worker_count,
        help="worker processes (default: WORKERS, else 1); more than one needs REDIS_URL",
    )
    p = sub.add_parser("create-org", help="create an organisation")
    p.add_argument("--name", required=True)
    p = sub.add_parser("create-user", help="create a user in an org")
    p.add_argument("--email", required=True)
    p.add_argument("--org", required=True, help="org id or name")
    p.add_argument("--password", help="omit to be prompted (the prompt does not echo)")
    p = sub.add_parser("create-property", help="create a property in an org")
    p.add_argument("--org", required=True, help="org id or name")
    p.add_argument("--name", required=True)
    sub.add_parser("seed-demo", help="create the demo org, property and user (idempotent)")
    p = sub.add_parser("watch", help="log in, subscribe to the org's stream, print events")
    p.add_argument("--url", help="server base URL (default: http://localhost:PORT)")
    p.add_argument("--email", default="user@example.com")
    p.add_argument(
        "--password", help="default: WATCH_PASSWORD, the demo's for the demo user, else a prompt"
    )
    p.add_argument("--token", help="a bearer token instead of email and password (WATCH_TOKEN)")
    p.add_argument("--codec", default="zstd", choices=["zstd", "gzip", "none"])
    p.add_argument("--properties", help="comma-separated property ids to narrow to")
    p.add_argument("--max-events", type=int, help="exit after this many events (for scripts)")
    sub.add_parser("settings-table", help="print every setting as the Markdown table of the docs")
    args = parser.parse_args(argv)
    if args.command == "settings-table":
        from .settings_doc import table

        print(table(), end="")
        return 0
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        try:
            if args.workers is not None:
                settings = settings.replace(workers=args.workers)
            check_workers(settings)
        except SettingsError as exc:
            print(f"configuration error: {exc}", file=sys.stderr)
            return 2
        try:
            serve(settings)
        except CannotListen as exc:
            print(f"error: {exc} (set HOST/PORT, or stop what holds the port)", file=sys.stderr)
            return 1
        return 0
    if args.command == "watch":
        return watch(settings, args)
    return _account_command(settings, args)


def watch_password(settings: Settings, email: str, given: str | None) -> str | None:
    """The password to log in with: given, WATCH_PASSWORD, the demo's, or asked on a terminal."""
    from .accounts import DEMO_EMAIL, DEMO_PASSWORD

    if given:
        return given
    if settings.watch_password:
        return settings.watch_password
    if email == DEMO_EMAIL:
        return DEMO_PASSWORD  # what `make watch` promises: the demo user, no prompt
    if sys.stdin.isatty():
        try:
            return getpass.getpass(f"Password for {email}: ")
        except (EOFError, KeyboardInterrupt):
            return None
    return None


def watch(settings: Settings, args: argparse.Namespace) -> int:
    """Print each event of the org's stream as one JSON line, resets included."""
    import httpx2
    import orjson

    from streamcore.client import Reset, StreamClient, StreamRefused

    host = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0", "::") else settings.host
    base = (args.url or f"http://{host}:{settings.port}").rstrip("/")
    token = args.token or settings.watch_token
    if not token:
        password = watch_password(settings, args.email, args.password)
        if password is None:
            print(
                f"error: no password for {args.email}: give --password, set WATCH_PASSWORD, "
                "or --token / WATCH_TOKEN",
                file=sys.stderr,
            )
            return 1
        try:
            r = httpx2.post(
                f"{base}/auth/login", json={"email": args.email, "password": password}, timeout=10
            )
        except httpx2.TransportError as exc:
            print(f"error: cannot reach {base}: {exc}", file=sys.stderr)
            return 1
        if r.status_code != 200:
            try:
                reason = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                reason = r.text[:200]
            print(
                f"error: cannot log in to {base} as {args.email} ({r.status_code}): {reason}",
                file=sys.stderr,
            )
            return 1
        token = r.json()["accessToken"]
    ws_url = "ws" + base.removeprefix("http") + "/v2/realtime/stream"
    properties = [int(p) for p in args.properties.split(",")] if args.properties else None

    async def run() -> int:
        seen = 0

        def subscribed(hello: dict[str, object]) -> None:
            channel, seq = hello.get("channel"), hello.get("seq")
            print(f"subscribed to {channel} at seq {seq}", file=sys.stderr, flush=True)

        client = StreamClient(
            ws_url, token, codec=args.codec, properties=properties, on_hello=subscribed
        )
        async with client:
            async for item in client:
                if isinstance(item, Reset):
                    line = {"type": "reset", "reason": item.reason, "seq": item.seq}
                    print(orjson.dumps(line).decode(), flush=True)
                    continue
                print(orjson.dumps(item).decode(), flush=True)
                seen += 1
                if args.max_events and seen >= args.max_events:
                    return 0
        return 0

    print(f"watching {ws_url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        return asyncio.run(run())
    except StreamRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _account_command(settings: Settings, args: argparse.Namespace) -> int:
    from . import accounts

    password: str | None = None
    if args.command == "create-user":
        password = args.password or getpass.getpass("Password: ")

    async def run(engine: AsyncEngine) -> str:
        if args.command == "seed-demo":
            created = await accounts.seed_demo(engine)
            return "seeded the demo" if created else "the demo is already there"
        async with engine.begin() as conn:
            if args.command == "create-org":
                return f"org {await accounts.create_org(conn, args.name)}"
            org_id = await accounts.resolve_org(conn, args.org)
            if args.command == "create-user":
                assert password is not None
                return f"user {await accounts.create_user(conn, org_id, args.email, password)}"
            return f"property {await accounts.create_property(conn, org_id, args.name)}"

    try:
        print(asyncio.run(_with_db(settings, run)))
    except accounts.AccountError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
