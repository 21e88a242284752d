"""The exit watchdog: a process whose shutdown hangs ends anyway, saying where it waited."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from streamcore_server.exit_watchdog import EXIT_HUNG

HANGS = textwrap.dedent(
    """
    import asyncio, logging
    from streamcore_server import exit_watchdog

    async def close_the_store():
        await asyncio.Event().wait()  # a shutdown step that never returns

    async def main():
        exit_watchdog.arm(0.3, asyncio.get_running_loop())
        await close_the_store()

    logging.basicConfig()
    asyncio.run(main())
    """
)

ENDS = textwrap.dedent(
    """
    import asyncio
    from streamcore_server import exit_watchdog

    async def main():
        exit_watchdog.arm(30, asyncio.get_running_loop())

    asyncio.run(main())
    print("ended")
    """
)


def test_a_hung_shutdown_exits_and_names_the_step() -> None:
    done = subprocess.run([sys.executable, "-c", HANGS], capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_HUNG, done.stderr
    assert "shutdown has not ended 0.3 s after it began" in done.stderr
    assert "main (<string>:10) -> close_the_store (<string>:6)" in done.stderr  # the await chain
    assert "Thread" in done.stderr  # and every thread's stack


def test_a_shutdown_that_ends_is_not_held_by_the_watchdog() -> None:
    # The timer is a daemon thread: a process that ends in time ends at once, exit code its own.
    done = subprocess.run([sys.executable, "-c", ENDS], capture_output=True, text=True, timeout=20)
    assert (done.returncode, done.stdout) == (0, "ended\n"), done.stderr


OWN_PROCESS = textwrap.dedent(
    """
    import gc, sys
    from starlette.testclient import TestClient
    from streamcore_server.main import create_app
    from streamcore_server.settings import Settings

    settings = Settings.from_env({"DATABASE_URL": sys.argv[1], "DATA_DIR": sys.argv[2]})
    before = gc.get_freeze_count()
    with TestClient(create_app(settings, own_process=True)) as client:
        assert client.get("/healthz").status_code == 200
        print(before, gc.get_freeze_count())
    print("ended")
    """
)


def test_a_server_process_freezes_its_start_up_heap_and_still_ends(tmp_path: Path) -> None:
    # Frozen, a full collection no longer walks the start-up heap (a pause of tens of ms per
    # collection under load); the watchdog armed at shutdown does not hold the exit.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            OWN_PROCESS,
            f"sqlite+aiosqlite:///{tmp_path}/app.db",
            str(tmp_path / "var"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    counts, ended = done.stdout.splitlines()
    before, during = map(int, counts.split())
    assert before == 0 and during > 10_000, counts
    assert ended == "ended"
