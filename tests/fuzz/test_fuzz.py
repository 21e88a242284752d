"""The fuzz targets: every input that once crashed one stays a test, and each gets a short run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fuzz.seeds import seeds  # noqa: E402
from fuzz.targets import TARGETS  # noqa: E402

CRASHES = sorted(p for p in (ROOT / "fuzz" / "crashes").glob("*/*") if p.is_file())
SECONDS = 2  # per target in `make test`; `make fuzz` runs each for minutes


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_the_seeds_pass_their_target(name: str) -> None:
    for seed in seeds(name):
        TARGETS[name](seed)


def test_every_input_that_once_crashed_a_target_no_longer_does() -> None:
    # A crash the fuzzer saves under fuzz/crashes/TARGET/ is committed with its fix.
    assert (ROOT / "fuzz" / "crashes").is_dir()
    for path in CRASHES:
        TARGETS[path.parent.name](path.read_bytes())


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_short_coverage_guided_run_finds_nothing(name: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    done = subprocess.run(
        [sys.executable, "-m", "fuzz.run", name, str(SECONDS)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    tail = "\n".join(done.stderr.splitlines()[-30:])
    assert done.returncode == 0, f"a crash was saved under fuzz/crashes/{name}/:\n{tail}"
    assert "DONE" in done.stderr, tail
