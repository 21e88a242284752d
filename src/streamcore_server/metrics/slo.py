"""The seed's service-level objectives (Task 2.10) and their evaluation against a snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Slo:
    name: str
    description: str
    comparison: str  # "<" or ">": the current value must be strictly below / above the target
    target: float
    unit: str


SLOS = (
    Slo("api_latency_p95", "API p95 latency", "<", 0.300, "seconds"),
    Slo("api_latency_p99", "API p99 latency", "<", 0.800, "seconds"),
    Slo("realtime_delivery_p95", "Realtime delivery p95 latency", "<", 1.0, "seconds"),
    Slo("cache_hit_ratio", "Finance summary cache hit ratio", ">", 0.85, "ratio"),
    Slo("error_rate", "Share of responses that are 5xx", "<", 0.001, "ratio"),
    Slo("availability", "Share of responses that are not 5xx", ">", 0.9995, "ratio"),
)

# Histogram bucket edges (seconds) of the Prometheus export; the SLO thresholds are among them
# so recording rules and alerts can count requests under each threshold exactly.
LATENCY_EDGES = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.5, 0.8, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def evaluate(values: dict[str, tuple[float | None, str, str | None]]) -> list[dict[str, Any]]:
    """values: name -> (current, window, reason when current is None)."""
    out = []
    for slo in SLOS:
        current, window, reason = values.get(slo.name, (None, "", "not measured"))
        met: bool | None = None
        if current is not None:
            met = current < slo.target if slo.comparison == "<" else current > slo.target
        entry: dict[str, Any] = {
            "name": slo.name,
            "description": slo.description,
            "comparison": slo.comparison,
            "target": slo.target,
            "unit": slo.unit,
            "current": current,
            "met": met,
            "window": window,
        }
        if current is None:
            entry["reason"] = reason
        out.append(entry)
    return out
