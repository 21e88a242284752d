"""Run the benchmark suite and write BENCHMARKS.md from its results.

`make bench` calls this; `make bench BENCH_ARGS="--only benchmarks.api_load"` reruns named
harnesses and replaces only their sections of BENCHMARKS.md (marked as rerun alone). Each
benchmark group pairs a subject with the baseline it is measured against in the same run (see
benchmarks/conftest.py); the table shows both and their ratio, because on a shared 2-core machine
absolute times move from run to run while ratios hold.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
REPORT = ROOT / "BENCHMARKS.md"
COMMAND = "make bench"

# End-to-end load harnesses: (title, module, args), or (title, "module:variant", args) for a second
# run of one module. Each starts its own servers on loopback, bounds its load in count and time,
# prints a report that compares with its same-run baseline, and writes its rows as JSON (--json).
WS_SERVERS = "streamcore,encode_once,floor,floor_bare"
HARNESSES: list[tuple[str, str, list[str]]] = [
    ("HTTP API on loopback: writes against a minimal insert endpoint", "benchmarks.api_load", []),
    ("Idempotency layer: latency added to a POST", "benchmarks.idempotency_load", []),
    (
        "Realtime stream on loopback: 50 ms windows, against encode-once and the floor",
        "benchmarks.ws_load",
        ["--clients", "1000,3000", "--servers", WS_SERVERS],
    ),
    (
        "Realtime stream on loopback: default (adaptive) windows",
        "benchmarks.ws_load:default",
        ["--clients", "1000,3000", "--servers", "streamcore", "--window-ms", "0"],
    ),
    (
        "Realtime stream on loopback: 10,000 clients",
        "benchmarks.ws_load:10k",
        ["--clients", "10000", "--servers", "streamcore,floor,floor_bare", "--seconds", "6"],
    ),
    (
        "Broadcast loop: instructions per subscriber and frame (callgrind)",
        "benchmarks.broadcast_callgrind",
        [],
    ),
    ("The seed's SLO table under load", "benchmarks.slo_load", []),
    ("100,000 orgs: idle channels, connections, hot orgs", "benchmarks.scale_sim", []),
    ("Scaling curves (docs/scaling-clients.png, docs/scaling-rate.png)", "benchmarks.scaling", []),
    ("Several workers with Redis fan-out", "benchmarks.workers_load", []),
    (
        "Three hosts (network namespaces): latency, Redis per event, resume, CPU per org",
        "benchmarks.hosts_load",
        [],
    ),
    ("Read replica: the primary's CPU taken off list reads", "benchmarks.replica_load", []),
    ("Finance reads through a Varnish edge against direct", "benchmarks.edge_load", []),
    ("Conflation: callgrind instructions per event", "benchmarks.conflation_instructions", []),
]
BUDGET_S = 15 * 60  # the whole of `make bench` on the 2-core machine


def run_pytest(json_path: Path, args: list[str]) -> int:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "benchmarks",
        "-q",
        "--benchmark-only",
        "--benchmark-min-rounds=5",
        "--benchmark-warmup=on",
        f"--benchmark-json={json_path}",
        *args,
    ]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


@dataclass
class HarnessRun:
    title: str
    module: str
    args: list[str]
    code: int
    text: str
    seconds: float


def run_harness(title: str, module: str, args: list[str]) -> HarnessRun:
    name = module.rsplit(".", 1)[-1].replace(":", "_")
    cmd = [sys.executable, "-m", module.split(":")[0], *args]
    cmd += ["--json", str(RESULTS / f"{name}.json")]
    print("+", " ".join(cmd), flush=True)
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    print(done.stdout, end="")
    print(done.stderr, end="", file=sys.stderr)
    return HarnessRun(
        title, module, args, done.returncode, done.stdout.strip(), time.monotonic() - start
    )


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _notes(extra: dict[str, Any]) -> str:
    skip = {"baseline", "items", "target_speedup", "target"}
    parts = []
    for key, value in extra.items():
        if key in skip:
            continue
        if isinstance(value, float):
            value = f"{value:.4g}"
        parts.append(f"{key}={value}")
    return "; ".join(str(p) for p in parts)


def render(data: dict[str, Any], elapsed: float, harnesses: list[HarnessRun]) -> str:
    groups: dict[str, list[dict[str, Any]]] = {}
    for bench in data["benchmarks"]:
        groups.setdefault(bench["group"] or bench["name"], []).append(bench)
    machine = data.get("machine_info", {})
    lines = [
        "# Benchmarks",
        "",
        f"Made by `{COMMAND}` on {data.get('datetime', '?')[:19]} UTC in {elapsed:.0f} s "
        f"(budget {BUDGET_S // 60} min: {'within' if elapsed <= BUDGET_S else 'OVER'}).",
        f"Machine: {machine.get('cpu', {}).get('brand_raw', platform.processor() or '?')}, "
        f"{machine.get('cpu', {}).get('count', '?')} cores (shared, noisy), "
        f"Python {machine.get('python_version', platform.python_version())}.",
        "",
        "Every row is measured in the same run as its baseline. Times are medians per item "
        "(one event, value or frame); **ratio** = baseline time / subject time, so above 1 means "
        "faster than the baseline. A target not met says **MISSED** with the measured ratio.",
        "",
    ]
    verdicts: list[str] = []
    for group, members in sorted(groups.items()):
        baseline = next((b for b in members if b.get("extra_info", {}).get("baseline")), None)
        lines += [
            f"## {group}",
            "",
            "| benchmark | per item | ratio vs baseline | target | notes |",
        ]
        lines.append("|---|---|---|---|---|")
        for bench in sorted(members, key=lambda b: not b.get("extra_info", {}).get("baseline")):
            extra = bench.get("extra_info", {})
            items = max(int(extra.get("items", 1)), 1)
            per_item = bench["stats"]["median"] / items
            name = bench["name"].removeprefix("test_")
            if extra.get("baseline"):
                ratio, target = "baseline", ""
            elif baseline is not None:
                base_items = max(int(baseline["extra_info"].get("items", 1)), 1)
                r = (baseline["stats"]["median"] / base_items) / per_item
                ratio = f"{r:.2f}x"
                target = extra.get("target", "")
                want = extra.get("target_speedup")
                if want is not None:
                    ok = r >= float(want)
                    target = f"{target} — {'met' if ok else 'MISSED'}"
                    verdicts.append(
                        f"- {group} / {name}: {r:.2f}x (needs {want}x) {'met' if ok else 'MISSED'}"
                    )
            else:
                ratio, target = "(no baseline)", extra.get("target", "")
            lines.append(
                f"| {name} | {_fmt_time(per_item)} | {ratio} | {target} | {_notes(extra)} |"
            )
        lines.append("")
    if verdicts:
        lines += ["## Targets", "", *verdicts, ""]
    for h in harnesses:
        lines += harness_section(h)
    lines += [
        "Raw results: `benchmarks/results/` (pytest-benchmark's JSON for the micro-benchmarks,",
        "one JSON file per load harness).",
        "",
    ]
    return "\n".join(lines)


def harness_section(h: HarnessRun, note: str = "") -> list[str]:
    status = "" if h.code == 0 else f" (exited {h.code}: see its output)"
    return [
        f"## {h.title}{status}",
        "",
        f"`{' '.join(['python -m', h.module.split(':')[0], *h.args])}` ({h.seconds:.0f} s{note}):",
        "",
        "```",
        h.text,
        "```",
        "",
    ]


def splice(report: str, run: HarnessRun, when: str) -> str:
    """Replace one harness's section of an existing report (or add it before the footer)."""
    lines = report.split("\n")
    new = harness_section(run, f"; rerun alone on {when} UTC, not in the full run above")
    start = next((i for i, ln in enumerate(lines) if ln.startswith(f"## {run.title}")), None)
    if start is None:
        foot = next(i for i, ln in enumerate(lines) if ln.startswith("Raw results:"))
        return "\n".join([*lines[:foot], *new, *lines[foot:]])
    end = start + 1
    fenced = False
    while end < len(lines):
        ln = lines[end]
        if ln.startswith("```"):
            fenced = not fenced
        elif not fenced and (ln.startswith("## ") or ln.startswith("Raw results:")):
            break
        end += 1
    return "\n".join([*lines[:start], *new, *lines[end:]])


def run_only(modules: list[str]) -> int:
    """Rerun some harnesses and splice their sections into BENCHMARKS.md (`--only a,b`)."""
    known = {module: (title, args) for title, module, args in HARNESSES}
    unknown = [m for m in modules if m not in known]
    if unknown:
        print(f"unknown harness {unknown}; known: {sorted(known)}", file=sys.stderr)
        return 2
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = REPORT.read_text()
    code = 0
    for module in modules:
        title, args = known[module]
        run = run_harness(title, module, args)
        code = code or run.code
        report = splice(report, run, time.strftime("%Y-%m-%dT%H:%M", time.gmtime()))
    REPORT.write_text(report)
    print(f"updated {REPORT.relative_to(ROOT)}")
    return code


def run_micro(argv: list[str]) -> int:
    """Rerun the pytest-benchmark tables and keep the harness sections as they are (`--micro`)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / "core.json"
    start = time.monotonic()
    code = run_pytest(json_path, argv)
    data = json.loads(json_path.read_text())
    for bench in data["benchmarks"]:
        bench["stats"].pop("data", None)
    json_path.write_text(json.dumps(data, indent=1))
    old = REPORT.read_text().split("\n")
    titles = tuple(f"## {title}" for title, _, _ in HARNESSES)
    first = next((i for i, ln in enumerate(old) if ln.startswith(titles)), None)
    foot = next(i for i, ln in enumerate(old) if ln.startswith("Raw results:"))
    kept = old[first:foot] if first is not None else []
    new = render(data, time.monotonic() - start, []).split("\n")
    at = next(i for i, ln in enumerate(new) if ln.startswith("Raw results:"))
    new[0:1] = [
        "# Benchmarks",
        "",
        "(Micro-benchmark tables rerun alone; harness sections below are"
        " from their own runs, each dated.)",
    ]
    REPORT.write_text("\n".join([*new[: at + 2], *kept, *new[at + 2 :]]))
    print(f"updated {REPORT.relative_to(ROOT)}")
    return code


def main(argv: list[str]) -> int:
    if argv[:1] == ["--only"] and len(argv) == 2:
        return run_only(argv[1].split(","))
    if argv[:1] == ["--micro"]:
        return run_micro(argv[1:])
    RESULTS.mkdir(parents=True, exist_ok=True)
    json_path = RESULTS / "core.json"
    start = time.monotonic()
    code = run_pytest(json_path, argv)
    if not json_path.exists():
        print("no benchmark results were written", file=sys.stderr)
        return code or 1
    harnesses = []
    for title, module, args in HARNESSES:
        harnesses.append(run_harness(title, module, args))
        code = code or harnesses[-1].code
    data = json.loads(json_path.read_text())
    for bench in data["benchmarks"]:
        bench["stats"].pop("data", None)  # every round's timing: megabytes, and the stats suffice
    json_path.write_text(json.dumps(data, indent=1))
    REPORT.write_text(render(data, time.monotonic() - start, harnesses))
    print(f"wrote {REPORT.relative_to(ROOT)}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
