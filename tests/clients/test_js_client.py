"""The JavaScript client (clients/js): its own tests (`npm ci && npm test`, against a real
server they start), its TypeScript types, and `npm pack` giving a package that installs and
imports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import streamcore
from streamcore_server import dashboard

pytestmark = pytest.mark.slow

PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "js"


def _npm() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node and npm:
        return npm
    message = "node and npm are needed for the JavaScript client's tests"
    if os.environ.get("STREAMCORE_REQUIRE_SERVICES") == "1":
        pytest.fail(message)  # CI installs them (.ci/run): a missing one must not hide the tests
    pytest.skip(message)


def _run(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "STREAMCORE_PYTHON": sys.executable, "NO_UPDATE_NOTIFIER": "1"}
    done = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout[-6000:]}\n{done.stderr[-4000:]}"
    return done


@pytest.fixture(scope="module")
def npm() -> str:
    npm = _npm()
    _run([npm, "ci", "--no-audit", "--no-fund"], PACKAGE, timeout=300)
    return npm


def test_npm_test_passes_against_a_real_server(npm: str) -> None:
    done = _run([npm, "test"], PACKAGE, timeout=600)
    # Node's runner closes with its counts: every test ran and none failed.
    assert "# fail 0" in done.stdout
    assert "# pass 0" not in done.stdout


def test_the_typescript_types_describe_the_api(npm: str) -> None:
    # tsc compiles test/types/usage.ts against index.d.ts, its @ts-expect-error lines included.
    _run([npm, "run", "typecheck"], PACKAGE, timeout=120)


def test_the_dashboard_vendors_the_zstd_decoder_the_package_pins(npm: str) -> None:
    lock = json.loads((PACKAGE / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/fzstd"]["version"]
    installed = PACKAGE / "node_modules" / "fzstd"
    assert json.loads((installed / "package.json").read_text())["version"] == pinned
    vendored = dashboard.STATIC / "vendor" / "fzstd.js"
    assert vendored.read_bytes() == (installed / "esm" / "index.mjs").read_bytes()


def test_npm_pack_gives_a_package_that_installs_and_decodes(npm: str, tmp_path: Path) -> None:
    packed = _run([npm, "pack", "--json", "--pack-destination", str(tmp_path)], PACKAGE, 120)
    (info,) = json.loads(packed.stdout)
    files = {f["path"] for f in info["files"]}
    assert {"package.json", "index.d.ts", "src/index.js", "src/frame.js", "src/client.js"} <= files
    assert not any(f.startswith(("test/", "node_modules/")) for f in files)
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "user-app", "private": true, "type": "module"}')
    _run([npm, "install", "--no-audit", "--no-fund", str(tmp_path / info["filename"])], app, 300)
    # A zstd frame as the server sends it: the 32-byte header, then one zstd frame.
    frame = streamcore.FrameEncoder(threshold=0).encode(7, [b"1"] * 200, streamcore.Codec.ZSTD)
    assert frame[3] == streamcore.Codec.ZSTD
    script = (
        "import { decodeFrame, StreamClient } from '@streamcore/client';"
        f"const f = await decodeFrame(Buffer.from('{frame.hex()}', 'hex'));"
        "console.log(JSON.stringify({seq: f.seq, codec: f.codec, items: f.items,"
        " client: typeof StreamClient}));"
    )
    out = _run(["node", "--input-type=module", "-e", script], app, 60)
    decoded = json.loads(out.stdout)
    assert decoded == {"seq": 7, "codec": 1, "items": [1] * 200, "client": "function"}
