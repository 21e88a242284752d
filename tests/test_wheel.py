"""The wheel a user installs: which packages it puts on their path, and what it leaves out."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(ROOT),
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("streamcore-*.whl")
    return built


def names(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def test_the_wheel_installs_only_the_engine_and_the_server_packages(wheel: Path) -> None:
    # A top-level `app` would shadow (or be shadowed by) the user's own package of that name.
    tops = {name.split("/")[0] for name in names(wheel) if ".dist-info/" not in name}
    assert tops == {"streamcore", "streamcore_server"}


def test_the_wheel_ships_the_built_engine_and_its_stubs_but_no_generated_c(wheel: Path) -> None:
    files = names(wheel)
    for module in ("_broadcast", "_conflation", "_frames", "_histogram", "_window"):
        assert any(f.startswith(f"streamcore/{module}.") and f.endswith(".so") for f in files)
        assert f"streamcore/{module}.pyi" in files
    assert "streamcore/py.typed" in files
    assert not [f for f in files if f.endswith(".c")]


def test_the_wheel_carries_the_dashboard_and_the_migrations(wheel: Path) -> None:
    files = set(names(wheel))
    for page in ("index.html", "dashboard.js", "dashboard.css", "client/index.js"):
        assert f"streamcore_server/dashboard/static/{page}" in files, page
    assert "streamcore_server/migrations/script.py.mako" in files
    assert any(f.startswith("streamcore_server/migrations/versions/0001_") for f in files)


def test_the_console_script_runs_the_server_package(wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        entry_points = next(
            archive.read(n).decode() for n in archive.namelist() if n.endswith("entry_points.txt")
        )
        archive.extractall(tmp_path / "site")
    assert "streamcore = streamcore_server.__main__:main" in entry_points
    # The unpacked wheel alone (not the source tree) answers the command line.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from streamcore_server.__main__ import main; "
            "sys.argv = ['streamcore', '--help']; main()",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path / "site"), "PYTHONSAFEPATH": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout
    assert (
        str(tmp_path / "site")
        in subprocess.run(
            [sys.executable, "-c", "import streamcore_server; print(streamcore_server.__file__)"],
            cwd=tmp_path,
            env={"PYTHONPATH": str(tmp_path / "site")},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
