"""Command-line entry point: `python -m app serve`, and commands that create accounts."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

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


def serve(settings: Settings) -> None:
    import uvicorn

    from . import accounts, logs
    from .main import create_app

    logs.configure(settings.log_level)

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
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # keep the JSON handler installed above
        access_log=False,  # the request-context middleware logs one structured line per request
        server_header=False,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="migrate, seed the demo into an empty database, run the server")
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
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        serve(settings)
        return 0
    return _account_command(settings, args)


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
