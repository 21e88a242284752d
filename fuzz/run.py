"""Fuzz one target: python -m fuzz.run TARGET [SECONDS]. Crashes land in fuzz/crashes/TARGET/."""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

HERE = Path(__file__).resolve().parent

# Coverage feedback from our parsers only; instrumenting SQLAlchemy and pydantic costs minutes.
with atheris.instrument_imports(include=["streamcore_server", "streamcore", "fuzz"]):
    from fuzz.seeds import seeds
    from fuzz.targets import TARGETS


def main() -> None:
    name, seconds = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 60
    crashes = HERE / "crashes" / name
    crashes.mkdir(parents=True, exist_ok=True)
    corpus = HERE / "corpus" / name  # the fuzzer's working set (not in git)
    corpus.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(seeds(name)):
        (corpus / f"seed-{i}").write_bytes(seed)
    args = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={seconds}",
        "-seed=17",  # repeatable from the same corpus
        "-rss_limit_mb=1024",
        "-timeout=10",
        f"-artifact_prefix={crashes}/",
        "-print_final_stats=1",
    ]
    atheris.Setup(args, TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
