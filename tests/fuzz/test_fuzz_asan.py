"""The compiled modules once under AddressSanitizer: a debug build (STREAMCORE_DEBUG=1, bounds
checks on, -O0) with -fsanitize=address runs every fuzz target's seeds and saved crashes and the
compiled modules' own property tests. A heap overflow or a use after free aborts the run here,
where an optimised build would go on with a corrupted window."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPILED_TESTS = ["test_conflation.py", "test_frames.py", "test_histogram.py", "test_window.py"]

pytestmark = pytest.mark.slow


def _libasan() -> str | None:
    cc = shutil.which("gcc")
    if cc is None:
        return None
    path = subprocess.run(
        [cc, "-print-file-name=libasan.so"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return path if path and Path(path).is_file() else None


@pytest.fixture(scope="module")
def asan_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    libasan = _libasan()
    if libasan is None:
        pytest.skip("gcc's libasan is not installed (apt-get install gcc)")
    where = tmp_path_factory.mktemp("asan")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, where / name)
    shutil.copytree(
        ROOT / "src" / "streamcore",
        where / "src" / "streamcore",
        ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__"),
    )
    flags = "-fsanitize=address -fno-omit-frame-pointer"
    build = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
        cwd=where,
        env={**os.environ, "STREAMCORE_DEBUG": "1", "CFLAGS": flags, "LDFLAGS": flags},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    env = {
        **os.environ,
        "LD_PRELOAD": libasan,
        # CPython's own allocations are not ours to judge; a bad access aborts with a report.
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "PYTHONPATH": os.pathsep.join([str(where / "src"), str(ROOT)]),
    }
    return where, env


def test_the_asan_build_is_the_one_loaded(asan_build: tuple[Path, dict[str, str]]) -> None:
    where, env = asan_build
    out = subprocess.run(
        [sys.executable, "-c", "from streamcore import _conflation; print(_conflation.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith(str(where)), out


def test_fuzz_seeds_and_saved_crashes_run_clean_under_asan(
    asan_build: tuple[Path, dict[str, str]],
) -> None:
    _, env = asan_build
    code = (
        "from pathlib import Path\n"
        "from fuzz.seeds import seeds\n"
        "from fuzz.targets import TARGETS\n"
        "n = 0\n"
        "for name, target in sorted(TARGETS.items()):\n"
        "    for seed in seeds(name):\n"
        "        target(seed); n += 1\n"
        f"for path in Path({str(ROOT / 'fuzz' / 'crashes')!r}).glob('*/*'):\n"
        "    if path.is_file():\n"
        "        TARGETS[path.parent.name](path.read_bytes()); n += 1\n"
        "print(n)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert int(done.stdout.strip()) > 0


def test_the_compiled_modules_property_tests_pass_under_asan(
    asan_build: tuple[Path, dict[str, str]],
) -> None:
    _, env = asan_build
    tests = [str(ROOT / "tests" / "streamcore" / name) for name in COMPILED_TESTS]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *tests],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert " passed" in done.stdout
