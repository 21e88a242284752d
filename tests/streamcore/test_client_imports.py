"""A subscriber's imports: the protocol and the client load without the engine or the server."""

from __future__ import annotations

import subprocess
import sys

import streamcore


def test_protocol_and_client_import_without_the_compiled_core_numpy_or_the_server() -> None:
    code = (
        "import sys\n"
        "import streamcore.client, streamcore.protocol\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in "
        "('numpy', 'starlette', 'sqlalchemy', 'streamcore_server', 'orjson', 'redis')"
        " or m.startswith('streamcore._')]\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_the_engine_still_loads_on_first_use() -> None:
    assert streamcore.Conflator.__module__ == "streamcore._conflation"
    assert "Conflator" in dir(streamcore) or hasattr(streamcore, "Conflator")
