"""The edge cache: validators, cache policy, surrogate-key tags and purge by tag (docs/EDGE.md)."""

from .policy import Edge, open_edge
from .purge import CloudflarePurger, FastlyPurger, Purger, PurgeRequest, VarnishPurger
from .queue import PurgeQueue, PurgeStats

__all__ = [
    "CloudflarePurger",
    "Edge",
    "FastlyPurger",
    "PurgeQueue",
    "PurgeRequest",
    "PurgeStats",
    "Purger",
    "VarnishPurger",
    "open_edge",
]
