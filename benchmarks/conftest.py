"""Conventions every benchmark follows, so `make bench` can print ratios.

Each `@pytest.mark.benchmark(group=...)` group pairs a subject with its baseline, run in the same
session. In `benchmark.extra_info`:
  baseline: True on exactly one member of the group (the reference, peer library or naive code)
  items: how many items (events, values, frames) one call processes, for a per-item time
  target_speedup: on a subject, the least baseline_time / subject_time that meets its target
  target: the target in words, as the issue states it
"""
