"""Strong ETags from what a response shows, and If-None-Match (RFC 9110 §13.1.2)."""

from __future__ import annotations

import base64
import hashlib
import re

# Part of every ETag: change it when a representation's bytes change for the same data.
REPRESENTATION = "1"

_ENTITY_TAG = re.compile(r'\s*(?:W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def etag(*parts: object) -> str:
    """A strong entity tag naming exactly these parts (resource, org, query, version...)."""
    raw = "\x1f".join([REPRESENTATION, *(str(p) for p in parts)]).encode()
    digest = hashlib.sha256(raw).digest()[:16]
    return '"' + base64.urlsafe_b64encode(digest).rstrip(b"=").decode() + '"'


def none_match(header: str | None, current: str) -> bool:
    """Whether If-None-Match names the current tag (weak comparison, as the RFC asks)."""
    if header is None:
        return False
    if header.strip() == "*":
        return True
    pos = 0
    while pos < len(header):
        found = _ENTITY_TAG.match(header, pos)
        if found is None:
            return False  # malformed: answer in full rather than guess
        if found.group(1) == current:
            return True
        pos = found.end()
    return False
