"""The seed's three idempotency curl commands, as written, against a served app."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
from processes import ServeProcess
from test_server import server  # noqa: F401 - the real-uvicorn fixture

pytestmark = pytest.mark.slow


@pytest.mark.skipif(not (shutil.which("curl") and shutil.which("jq")), reason="needs curl and jq")
def test_the_seed_idempotency_guide_works_as_written(server: ServeProcess) -> None:  # noqa: F811
    script = Path(__file__).with_name("seed_idempotency_guide.sh").read_text()
    script = script.replace("localhost:4000", f"localhost:{server.port}")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    first, rest = result.stdout.split("\n=== second\n")
    second, third = rest.split("\n=== third\n")
    created = orjson.loads(first)
    assert created["amountCents"] == 50000

    head, _, body = second.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 201")
    assert "idempotent-replayed: true" in head.lower()
    assert orjson.loads(body) == created

    head, _, body = third.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 409")
    assert orjson.loads(body)["error"]["code"] == "idempotency_key_reused"
