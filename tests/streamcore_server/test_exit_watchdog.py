"""The exit watchdog: a process whose shutdown hangs ends anyway, saying where it waited."""

from __future__ import annotations

import subprocess
import sys
import textwrap

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
