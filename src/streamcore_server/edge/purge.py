"""Purgers: the HTTP requests that purge tags at each kind of edge.

A purger only builds requests; PurgeQueue sends them, batches and retries. Each splits a batch
into chunks its API accepts, so one request never carries more tags than the edge takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import orjson


@dataclass(frozen=True, slots=True)
class PurgeRequest:
    """One HTTP request; `edge` names where it goes, for logs and per-edge retries."""

    edge: str
    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""


class Purger(Protocol):
    name: str

    def requests(self, tags: Sequence[str]) -> list[PurgeRequest]:
        """The requests that purge these tags everywhere this purger reaches."""
        ...


def _chunks(tags: Sequence[str], size: int) -> list[Sequence[str]]:
    return [tags[i : i + size] for i in range(0, len(tags), size)]


class VarnishPurger:
    """`PURGE /` with an `xkey` header to every edge (deploy/varnish/streamcore.vcl)."""

    name = "varnish"
    # Keeps the header well under Varnish's default http_req_hdr_len (8 KiB).
    MAX_TAGS = 128

    def __init__(self, edges: Sequence[str]) -> None:
        if not edges:
            raise ValueError("the Varnish purger needs at least one edge URL")
        self.edges = [e.rstrip("/") for e in edges]

    def requests(self, tags: Sequence[str]) -> list[PurgeRequest]:
        return [
            PurgeRequest(edge, "PURGE", f"{edge}/", (("xkey", " ".join(chunk)),))
            for edge in self.edges
            for chunk in _chunks(tags, self.MAX_TAGS)
        ]


class FastlyPurger:
    """Fastly's bulk purge: POST /service/{id}/purge with the keys as JSON (256 a request)."""

    name = "fastly"
    MAX_TAGS = 256
    API = "https://api.fastly.com"

    def __init__(self, service_id: str, api_token: str, *, soft: bool = False) -> None:
        self.service_id = service_id
        self._token = api_token
        self.soft = soft

    def requests(self, tags: Sequence[str]) -> list[PurgeRequest]:
        headers = [
            ("Fastly-Key", self._token),
            ("Accept", "application/json"),
            ("Content-Type", "application/json"),
        ]
        if self.soft:
            headers.append(("Fastly-Soft-Purge", "1"))
        url = f"{self.API}/service/{self.service_id}/purge"
        return [
            PurgeRequest(
                "fastly", "POST", url, tuple(headers), orjson.dumps({"surrogate_keys": chunk})
            )
            for chunk in _chunks(list(tags), self.MAX_TAGS)
        ]


class CloudflarePurger:
    """Cloudflare's purge by Cache-Tag: POST /zones/{zone}/purge_cache {"tags": [...]}."""

    name = "cloudflare"
    MAX_TAGS = 100  # the API's "max operations per request" on every plan
    API = "https://api.cloudflare.com/client/v4"

    def __init__(self, zone_id: str, api_token: str) -> None:
        self.zone_id = zone_id
        self._token = api_token

    def requests(self, tags: Sequence[str]) -> list[PurgeRequest]:
        headers = (
            ("Authorization", f"Bearer {self._token}"),
            ("Content-Type", "application/json"),
        )
        url = f"{self.API}/zones/{self.zone_id}/purge_cache"
        return [
            PurgeRequest("cloudflare", "POST", url, headers, orjson.dumps({"tags": chunk}))
            for chunk in _chunks(list(tags), self.MAX_TAGS)
        ]
