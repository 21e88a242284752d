"""schemathesis, every check on, against a served app: the document and the server agree.

A real `python -m streamcore_server serve` (SQLite, its own data dir) and a real login as the demo
user, then
`schemathesis run --checks all` over /openapi.json with every phase: the document's examples,
coverage of each constraint's edges, fuzzing with valid and invalid data, and the stateful phase
along the links schemathesis infers (a created entry's propertyId into the lists and the
summary). Each answer is checked for its status, content type, headers and body against the
document, valid data accepted, invalid data refused, Allow on 405 and auth. A fixed seed and a
bounded number of examples keep it repeatable and under a minute on two cores.

The CLI rather than the pytest plugin: it runs all four phases, the stateful one with inferred
links, as `schemathesis run` does for anyone, and its lazy-fixture loader does not work with
pytest 9.2 (`Function._nodeid` is gone).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from processes import ServeProcess, server_env

pytestmark = pytest.mark.slow

SEED = 17
MAX_EXAMPLES = 20


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    # A wide throttle window: most generated logins would otherwise get the (documented) 429
    # and never reach the password check.
    server = ServeProcess(tmp_path, server_env(tmp_path, LOGIN_MAX_FAILURES=100_000), "server")
    try:
        token = server.token()  # the seeded demo user, through the real login
        # In a file, not on the command line, where any process could read the token.
        (tmp_path / "schemathesis.toml").write_text(
            f"seed = {SEED}\n"
            # Instants are `format: date-time` plus a pattern for the years 1900-2999;
            # schemathesis draws date-times of any year and discards the rest, which can trip
            # this generator health check: how data is drawn, never an answer of the server's.
            'suppress-health-check = ["filter_too_much"]\n'
            f'headers = {{ Authorization = "Bearer {token}" }}\n'
            "[generation]\n"
            f"max-examples = {MAX_EXAMPLES}\n"
        )
        run = subprocess.run(
            [
                *(sys.executable, "-m", "schemathesis.cli", "--no-color"),
                *("--config-file", str(tmp_path / "schemathesis.toml")),
                *("run", f"{server.http}/openapi.json", "--checks", "all", "--workers", "1"),
                *("--phases", "examples,coverage,fuzzing,stateful"),
            ],
            cwd=tmp_path,  # its .hypothesis and .schemathesis caches stay out of the tree
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.stop()
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    assert "No issues found" in report, report
    # Each generating phase ran (the document has no examples, so that one is skipped), and
    # the stateful one followed every link.
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in report, report
    assert re.search(r"API Links: +(\d+) covered / \1 selected", report), report
