"""The .pyi files say what the compiled modules really are (mypy.stubtest against the build)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MODULES = ["streamcore._conflation", "streamcore._frames", "streamcore._histogram"]
MODULES += ["streamcore._window"]


@pytest.mark.slow
def test_the_stubs_match_the_compiled_modules() -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "mypy.stubtest", *MODULES),
            *("--allowlist", str(HERE / "stubtest_allowlist.txt")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
