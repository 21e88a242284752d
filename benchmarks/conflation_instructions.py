"""Instructions per conflated event, counted by callgrind: figures that machine noise does not move.

Each case runs in its own process under `valgrind --tool=callgrind`, which counts only between two
marker calls around ROUNDS rounds (os.getppid zeroes the counters, os.getpgrp dumps them), after a
first round that caches every str hash and grows every table, as the timed benchmarks' warm-up does.
Every row is divided by its events and set beside the plain-dict baseline of its group:

    python -m benchmarks.conflation_instructions [--json PATH]

The str cases use the events of benchmarks/test_bench_conflation.py (1e5 events over 1e4 keys),
with each event's key a fresh str (as an app formats it per write) or the same str object per key.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ROUNDS = 2
STR_EVENTS, STR_KEYS = 100_000, 10_000
INT_EVENTS, INT_KEYS = 1_000_000, 10_000

Round = Callable[[], object]


def _str_events(repeated: bool) -> tuple[list[str], list[bytes]]:
    import numpy as np

    ids = np.random.default_rng(11).integers(0, STR_KEYS, size=STR_EVENTS).tolist()
    keys = [f"property:{i}:balance" for i in ids]
    if repeated:
        canonical: dict[str, str] = {}
        keys = [canonical.setdefault(k, k) for k in keys]
    payloads = [b'{"id":%d,"balance":"%d.00"}' % (i, n) for n, i in enumerate(ids)]
    for k in keys:
        hash(k)
    return keys, payloads


def _dict_loop(keys: list[str], payloads: list[bytes]) -> Round:
    def run() -> list[bytes]:
        latest = {}
        for key, payload in zip(keys, payloads, strict=True):
            latest[key] = payload
        return list(latest.values())

    return run


def _loop_alone(keys: list[str], payloads: list[bytes]) -> Round:
    """The floor of every per-event loop: the iteration without any work."""

    def run() -> None:
        for _key, _payload in zip(keys, payloads, strict=True):
            pass

    return run


def _noop_call(keys: list[str], payloads: list[bytes]) -> Round:
    """The floor of every per-event call: the loop calling a no-op two-argument builtin."""
    import operator

    def run() -> None:
        is_ = operator.is_
        for key, payload in zip(keys, payloads, strict=True):
            is_(key, payload)

    return run


def _push(keys: list[str], payloads: list[bytes]) -> Round:
    from streamcore import Conflator

    c = Conflator()

    def run() -> list[bytes]:
        push = c.push
        for key, payload in zip(keys, payloads, strict=True):
            push(key, payload)
        return c.drain()

    return run


def _push_many(keys: list[str], payloads: list[bytes]) -> Round:
    from streamcore import Conflator

    c = Conflator()

    def run() -> list[bytes]:
        c.push_many(keys, payloads)
        return c.drain()

    return run


def _reference_push(keys: list[str], payloads: list[bytes]) -> Round:
    from streamcore.reference.conflation import ReferenceConflator

    c = ReferenceConflator()

    def run() -> list[bytes]:
        push = c.push
        for key, payload in zip(keys, payloads, strict=True):
            push(key, payload)
        return c.drain()

    return run


def _int_batch() -> tuple[Any, Any]:
    import numpy as np

    rng = np.random.default_rng(12)
    keys = rng.integers(0, INT_KEYS, size=INT_EVENTS, dtype=np.int64)
    return keys, np.arange(INT_EVENTS, dtype=np.int64)


def _int_dict_loop() -> Round:
    keys, refs = _int_batch()
    keys_list, refs_list = keys.tolist(), refs.tolist()

    def run() -> dict[int, int]:
        d = {}
        for k, r in zip(keys_list, refs_list, strict=True):
            d[k] = r
        return d

    return run


def _int_push_many() -> Round:
    from streamcore import IntConflator

    keys, refs = _int_batch()
    c = IntConflator()

    def run() -> object:
        c.push_many(keys, refs)
        return c.drain()

    return run


# name -> (group, events per round, is the group's baseline, make the round)
CASES: dict[str, tuple[str, int, bool, Callable[[], Round]]] = {}
_STR_ROWS: list[tuple[str, Callable[[list[str], list[bytes]], Round], bool]] = [
    ("dict_loop", _dict_loop, True),
    ("floor_loop_alone", _loop_alone, False),
    ("floor_noop_call", _noop_call, False),
    ("reference_push", _reference_push, False),
    ("push", _push, False),
    ("push_many", _push_many, False),
]
for _shape in ("fresh", "repeated"):
    for _name, _make, _base in _STR_ROWS:
        if _shape == "repeated" and _name.startswith(("floor", "reference")):
            continue  # the same with either kind of key object: counted once, for fresh keys
        CASES[f"{_name}/{_shape}"] = (
            f"str keys, {_shape} str objects",
            STR_EVENTS,
            _base,
            lambda m=_make, r=_shape == "repeated": m(*_str_events(r)),
        )
CASES["int_dict_loop"] = ("int64 keys, batch", INT_EVENTS, True, _int_dict_loop)
CASES["int_push_many"] = ("int64 keys, batch", INT_EVENTS, False, _int_push_many)


def _child(case: str, rounds: int) -> None:
    run = CASES[case][3]()
    run()  # outside the count: first-touch allocations and table growth
    os.getppid()  # callgrind zeroes its counters here
    for _ in range(rounds):
        run()
    os.getpgrp()  # and dumps them here


def _instructions(case: str, rounds: int, out: Path) -> int:
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        "--zero-before=os_getppid",
        "--dump-before=os_getpgrp",
        sys.executable,
        "-m",
        "benchmarks.conflation_instructions",
        "--child",
        case,
        str(rounds),
    ]
    # One BLAS thread: numpy's idle worker threads spin, and callgrind would count their spinning.
    env = {**os.environ, "PYTHONHASHSEED": "0", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    part = out.with_name(out.name + ".1")  # the dump at the second marker
    found = re.search(r"^summary: (\d+)$", part.read_text(), re.M) if part.exists() else None
    if done.returncode or found is None:
        raise RuntimeError(f"no callgrind count for {case}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--child", nargs=2, metavar=("CASE", "ROUNDS"), help=argparse.SUPPRESS)
    parser.add_argument("--only", help="comma-separated case names")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child[0], int(args.child[1]))
        return 0
    names = args.only.split(",") if args.only else list(CASES)
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(max_workers=2) as pool:
        # Counts do not depend on what else runs, so two cases share the two cores.
        counts = pool.map(
            lambda name: _instructions(name, ROUNDS, Path(tmp) / f"{name.replace('/', '-')}.out"),
            names,
        )
        per_event = {
            name: count / (ROUNDS * CASES[name][1])
            for name, count in zip(names, counts, strict=True)
        }
    rows = []
    print(f"callgrind instructions per event (mean over {ROUNDS} rounds)")
    print(f"{'case':<26} {'instr/event':>12} {'ratio vs baseline':>18}")
    for name in names:
        group, _, is_base, _ = CASES[name]
        base = next((n for n in names if CASES[n][0] == group and CASES[n][2]), None)
        ratio = None if base is None or is_base else per_event[base] / per_event[name]
        shown = "baseline" if is_base else ("-" if ratio is None else f"{ratio:.2f}x")
        print(f"{name:<26} {per_event[name]:>12.1f} {shown:>18}")
        rows.append(
            {
                "case": name,
                "group": group,
                "instructions_per_event": per_event[name],
                "ratio": ratio,
            }
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
