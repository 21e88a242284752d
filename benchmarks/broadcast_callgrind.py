"""Instructions per subscriber for one frame sent: streamcore.Broadcast against the Python loop.

Counted by valgrind's callgrind, which counts user-space instructions and so does not move with
the machine's load (the kernel's share of a write is not counted: it is the same for both). Each
way of sending runs K times over the same uvloop transports, called through functools.partial so
that callgrind collects inside those calls only (--toggle-collect): the set-up, the interpreter's
start and the loop around the calls are not counted.

    .venv/bin/python -m benchmarks.broadcast_callgrind [--members 1000] [--sends 50] [--json out]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FRAME = b"\x82\x7e\x01\x90" + b"x" * 400  # a 400-byte binary frame, header included
LIMIT = 1 << 20


def python_send(transports: list[Any], data: bytes, limit: int) -> list[Any]:
    """The baseline: what the hub did per subscriber before the loop moved to C."""
    rest = []
    for t in transports:
        if t.is_closing() or t.get_write_buffer_size() >= limit:
            rest.append(t)
            continue
        t.write(data)
    return rest


def inner(impl: str, members: int, sends: int) -> None:
    import uvloop

    from streamcore._broadcast import Broadcast

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pairs, transports = [], []
        for _ in range(members):
            a, b = socket.socketpair()
            pairs.append((a, b))
            t, _ = await loop.create_connection(asyncio.Protocol, sock=a)
            transports.append(t)
        group = Broadcast()
        for i, t in enumerate(transports):
            group.add(i, t)
        send = (
            functools.partial(group.send)
            if impl == "compiled"
            else functools.partial(python_send, transports)
        )
        # Frames per socket stay well under the kernel's buffer: no write is ever queued.
        for _ in range(sends):
            assert not send(FRAME, LIMIT)
        for t in transports:
            t.abort()
        for _, b in pairs:
            b.close()

    uvloop.run(main())


def count(impl: str, members: int, sends: int, out_dir: Path) -> int:
    out = out_dir / f"callgrind.{impl}"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--toggle-collect=partial_vectorcall",
        f"--callgrind-out-file={out}",
        sys.executable,
        *("-m", "benchmarks.broadcast_callgrind", "--role", "inner", "--impl", impl),
        *("--members", str(members), "--sends", str(sends)),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT / "src")}
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    for line in out.read_text().splitlines():
        m = re.match(r"^(?:summary|totals): (\d+)", line)
        if m:
            return int(m.group(1))
    raise RuntimeError(f"no instruction total in {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--role", default="main", choices=["main", "inner"])
    p.add_argument("--impl", default="compiled", choices=["compiled", "python"])
    p.add_argument("--members", type=int, default=1000)
    p.add_argument("--sends", type=int, default=50)
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.role == "inner":
        inner(args.impl, args.members, args.sends)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: no instruction counts (apt-get install valgrind)")
        return 1
    with tempfile.TemporaryDirectory(prefix="bcast_cg_") as tmp:
        totals = {
            impl: count(impl, args.members, args.sends, Path(tmp))
            for impl in ("compiled", "python")
        }
    per = args.members * args.sends
    compiled = totals["compiled"] / per
    python = totals["python"] / per
    rows = {
        "members": args.members,
        "sends": args.sends,
        "per_member_compiled": round(compiled, 1),
        "per_member_python": round(python, 1),
        "ratio": round(python / compiled, 2),
    }
    print(
        f"broadcast of a {len(FRAME)}-byte frame to {args.members} uvloop transports, "
        f"{args.sends} sends, user-space instructions per member and send (callgrind):\n"
        f"  Python loop (baseline)      {python:8.0f}\n"
        f"  streamcore.Broadcast.send   {compiled:8.0f}   {python / compiled:.2f}x fewer\n"
        "  (the Python loop goes through uvloop's write(); the kernel's part counts for neither)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
