"""Every harness `make bench` runs imports: a helper renamed in one module breaks no other unseen.

The harnesses take minutes and real services, so the default test run cannot run them; their
imports are what a change elsewhere in benchmarks/ breaks first.
"""

from __future__ import annotations

import importlib

import pytest
from benchmarks.run import HARNESSES

MODULES = sorted({module.split(":", 1)[0] for _, module, _ in HARNESSES})


@pytest.mark.parametrize("name", MODULES)
def test_the_harness_imports_and_has_a_main(name: str) -> None:
    module = importlib.import_module(name)
    assert callable(module.main), name
