"""Window length against flush load: simulate the flusher on the compiled WindowScheduler.

`python -m benchmarks.window_curve [--png docs/windows-curve.png]` prints the table in
docs/WINDOWS.md and draws its figure. The model: ORGS orgs at RATE ev/s each, the clients spread
evenly over them, one flusher thread whose pass costs COST_PER_SUB_MS per subscriber per frame
(encode once, write to every socket), ticks of 1 ms as the hub's timer rounds up to whole ms.
Events that arrive while a pass runs are ingested when it ends (the event loop is busy). The
flusher reports each pass with observe_flush(end, cost), as the hub does with thread CPU time.
The previous rule (a window opens at the first event after a flush and lasts 150 ms at these
rates) runs on the same model for comparison.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from streamcore import WindowScheduler

ORGS = 10
RATE = 1000  # events/s per org: one per ms
COST_PER_SUB_MS = 0.009  # 9 us per subscriber per frame
BUDGET = 0.25
SECONDS = 12
WARMUP_S = 4
CLIENTS = (100, 200, 500, 1000, 2000, 3000, 4000, 5000, 7000, 10000)


def simulate(
    clients: int, grid: bool = True, step_to: int | None = None, moves: list | None = None
) -> dict[str, float]:
    """Run SECONDS of traffic; return steady-state length, load, frame rate and latency.

    With step_to, the clients jump to that number at WARMUP_S and `moves` collects every
    (ms, new length) of the shared length.
    """
    frame_ms = COST_PER_SUB_MS * clients / ORGS
    s = WindowScheduler(30.0, 150.0, flush_budget=BUDGET)
    orgs = np.arange(1, ORGS + 1, dtype=np.int64)
    arrivals: dict[int, list[float]] = {int(o): [] for o in orgs}
    deadline = dict.fromkeys(arrivals, math.inf)  # the previous rule's open windows
    latencies: list[np.ndarray] = []
    lengths: list[float] = []
    clock = busy_until = 0.0
    spent = frames = 0.0
    measure_from = WARMUP_S * 1000.0
    for tick in range(SECONDS * 1000):
        clock = max(float(tick), busy_until)
        if step_to is not None and tick == measure_from:
            frame_ms = COST_PER_SUB_MS * step_to / ORGS
        for o in arrivals:
            arrivals[o].append(float(tick))
        if grid:
            s.touch_many(orgs, clock)
            due = s.due(clock).tolist()
        else:
            for o in arrivals:
                if deadline[o] == math.inf:
                    deadline[o] = clock + 150.0
            due = [o for o in arrivals if deadline[o] <= clock]
        if not due:
            continue
        done = clock
        for o in due:
            done += frame_ms
            if tick >= measure_from:
                latencies.append(done - np.array(arrivals[o]))
            arrivals[o].clear()
            deadline[o] = math.inf
        cost = done - clock
        busy_until = done
        before = s.length_ms
        s.observe_flush(done, cost)
        if moves is not None and s.length_ms != before:
            moves.append((round(done), round(s.length_ms, 1)))
        if tick >= measure_from:
            spent += cost
            frames += len(due)
            lengths.append(s.length_ms if grid else 150.0)
    span = SECONDS * 1000.0 - measure_from
    lat = np.concatenate(latencies)
    return {
        "clients": clients,
        "frame_ms": frame_ms,
        "length_ms": float(np.median(lengths)),
        "load": spent / span,
        "frames_per_s": frames / ORGS / (span / 1000.0),
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def table(rows: list[dict[str, float]], old: list[dict[str, float]]) -> str:
    head = (
        "| clients | frame cost | L (ms) | load (cores) | frames/s per client | p50 | p99 "
        "| predicted p99 = L + send | previous rule: p99, load |\n"
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n"
    )
    lines = [
        f"| {r['clients']:,} | {r['frame_ms']:.2f} ms | {r['length_ms']:.1f} | {r['load']:.3f} "
        f"| {r['frames_per_s']:.1f} | {r['p50_ms']:.1f} ms | {r['p99_ms']:.1f} ms "
        f"| {r['length_ms'] + r['frame_ms']:.1f} ms | {o['p99_ms']:.1f} ms, {o['load']:.3f} |"
        for r, o in zip(rows, old, strict=True)
    ]
    return head + "\n".join(lines)


def plot(rows: list[dict[str, float]], old: list[dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["clients"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6.5), sharex=True)
    top.plot(x, [r["length_ms"] for r in rows], "o-", label="window length L")
    top.plot(x, [r["p99_ms"] for r in rows], "s-", label="p99 latency (grid, cost-sized)")
    top.plot(x, [o["p99_ms"] for o in old], "^--", color="grey", label="p99, previous rule")
    top.set_ylabel("ms")
    top.set_ylim(0, 330)
    top.legend(loc="upper left", fontsize=8)
    top.set_title(f"{ORGS} orgs at {RATE:,} ev/s, {COST_PER_SUB_MS * 1000:.0f} us/subscriber/frame")
    bottom.plot(x, [r["load"] for r in rows], "o-", label="flush load (grid, cost-sized)")
    bottom.plot(x, [o["load"] for o in old], "^--", color="grey", label="flush load, previous")
    bottom.axhline(BUDGET, color="red", lw=0.8, ls=":", label=f"flush_budget {BUDGET}")
    bottom.set_ylabel("cores")
    bottom.set_xlabel("clients")
    bottom.set_xscale("log")
    bottom.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--png", help="write the figure here")
    args = parser.parse_args()
    rows = [simulate(c) for c in CLIENTS]
    old = [simulate(c, grid=False) for c in CLIENTS]
    print(table(rows, old))
    for a, b in ((1000, 3000), (3000, 1000)):
        moves: list = []
        simulate(a, step_to=b, moves=moves)
        print(f"\n{a:,} -> {b:,} clients at {WARMUP_S * 1000} ms: length moves (ms, L) {moves}")
    if args.png:
        plot(rows, old, args.png)


if __name__ == "__main__":
    main()
