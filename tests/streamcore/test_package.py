"""The package itself: what it exports, and how it fails when the extension is not built."""

import importlib.machinery
import shutil
import subprocess
import sys
from pathlib import Path

import streamcore

COMPILED = ("_broadcast", "_conflation", "_frames", "_histogram", "_window")


def test_every_public_name_is_exported() -> None:
    for name in streamcore.__all__:
        assert hasattr(streamcore, name), name


def test_compiled_modules_are_extension_modules() -> None:
    for name in COMPILED:
        module = sys.modules[f"streamcore.{name}"]
        assert module.__file__ is not None
        assert module.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), name


def test_each_compiled_module_has_a_stub() -> None:
    package = Path(streamcore.__file__).parent
    for name in COMPILED:
        assert (package / f"{name}.pyi").is_file(), name
    assert (package / "py.typed").is_file()


def test_unbuilt_package_fails_loudly_with_build_instructions(tmp_path: Path) -> None:
    # A copy of the sources without the compiled .so files: the state of a fresh checkout.
    source = Path(streamcore.__file__).parent
    shutil.copytree(
        source, tmp_path / "streamcore", ignore=shutil.ignore_patterns("*.so", "*.c", "__pycache__")
    )

    def run(code: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", code],
            cwd=tmp_path,
            env={"PYTHONPATH": str(tmp_path)},
            capture_output=True,
            text=True,
            check=False,
        )

    # The protocol needs no compiled part (a subscriber's decoder); the engine does, loudly.
    assert run("import streamcore.protocol").returncode == 0
    result = run("import streamcore; streamcore.Conflator")
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "make build" in result.stderr
