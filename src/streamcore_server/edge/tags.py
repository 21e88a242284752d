"""Surrogate-key tags: what a response shows, and what a write changes.

Property ids are global, so `property:<id>` names one property of one org. Every response carries
its org (`org:<id>`, to purge an org whole) and its resource at both scopes.
"""

from __future__ import annotations


def summary_tags(org_id: int, property_id: int) -> list[str]:
    """Tags of a property's summary (any period)."""
    return [
        f"org:{org_id}",
        f"org:{org_id}:summary",
        f"property:{property_id}",
        f"property:{property_id}:summary",
    ]


def list_tags(org_id: int, resource: str, property_id: int | None) -> list[str]:
    """Tags of a page of expenses or revenues, for one property or the whole org."""
    tags = [f"org:{org_id}", f"org:{org_id}:{resource}"]
    if property_id is not None:
        tags += [f"property:{property_id}", f"property:{property_id}:{resource}"]
    return tags


def write_tags(org_id: int, kind: str, property_id: int) -> list[str]:
    """Tags a new expense or revenue makes stale: its property's summaries, its org's lists."""
    return [f"property:{property_id}:summary", f"org:{org_id}:{kind}s"]
