"""Command-line entry point: `python -m app serve`."""

from __future__ import annotations

import argparse
import sys

from .settings import Settings, SettingsError


def serve(settings: Settings) -> None:
    import uvicorn

    from .main import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the HTTP and WebSocket server (HOST, PORT from the environment)")
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
