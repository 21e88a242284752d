"""What the app tells caches about a finance read, and the hook a write calls after commit.

Browsers and any shared cache but ours see `Cache-Control: private, no-cache` and `Vary:
Authorization`: they may keep a copy for the caller but must revalidate it (a cheap 304). The edge
named by EDGE_PROVIDER gets its own lifetime (Surrogate-Control, or CDN-Cache-Control for
Cloudflare) and the tags, because it keys on the verified org (docs/EDGE.md); it strips both.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from contextlib import AsyncExitStack

from starlette.requests import Request
from starlette.responses import Response

from .. import background
from ..settings import Settings
from . import tags, validators
from .purge import CloudflarePurger, FastlyPurger, Purger, PurgeRequest, VarnishPurger
from .queue import PurgeQueue

log = logging.getLogger("streamcore_server.edge")

BROWSER_POLICY = "private, no-cache"
TAG_HEADERS = {"varnish": "xkey", "fastly": "Surrogate-Key", "cloudflare": "Cache-Tag"}
TTL_HEADERS = {
    "varnish": "Surrogate-Control",
    "fastly": "Surrogate-Control",
    "cloudflare": "CDN-Cache-Control",  # RFC 9213
}


class PurgeRefused(Exception):
    """The edge answered a purge with something other than 2xx."""


class Edge:
    """Validators and cache headers for finance reads; purges for writes."""

    def __init__(self, settings: Settings, queue: PurgeQueue | None = None) -> None:
        self.provider = settings.edge_provider
        self.queue = queue
        # Two databases behind one edge never share a tag's version.
        self._db = hashlib.sha256(settings.database_url.encode()).hexdigest()[:12]
        self._edge_policy = (
            f"max-age={settings.edge_ttl_s}, "
            f"stale-while-revalidate={settings.edge_stale_while_revalidate_s}"
        )

    def etag(self, resource: str, org_id: int, *parts: object) -> str:
        return validators.etag(self._db, resource, org_id, *parts)

    def not_modified(self, request: Request, etag: str) -> bool:
        """Whether the caller (or the edge revalidating) already holds this representation."""
        return validators.none_match(request.headers.get("if-none-match"), etag)

    def headers(self, etag: str | None, tag_list: Sequence[str]) -> dict[str, str]:
        """Headers of a finance read's 200 or 304; without an ETag, nobody may store it."""
        if etag is None:
            return {"Cache-Control": "no-store", "Vary": "Authorization"}
        out = {"ETag": etag, "Cache-Control": BROWSER_POLICY, "Vary": "Authorization"}
        if self.provider != "none":
            out[TTL_HEADERS[self.provider]] = self._edge_policy
            sep = ", " if self.provider == "cloudflare" else " "
            out[TAG_HEADERS[self.provider]] = sep.join(tag_list)
        return out

    def unchanged(self, etag: str, tag_list: Sequence[str]) -> Response:
        """304 with the headers the 200 would carry, and no body."""
        return Response(status_code=304, headers=self.headers(etag, tag_list))

    def written(self, org_id: int, kind: str, property_id: int) -> None:
        """A write committed: purge what it made stale (returns at once, never raises)."""
        if self.queue is not None:
            self.queue.enqueue(tags.write_tags(org_id, kind, property_id))

    def counters(self) -> dict[str, int]:
        if self.queue is None:
            return {}
        s = self.queue.stats
        return {
            "edge_purge_tags": s.tags,
            "edge_purge_batches": s.batches,
            "edge_purge_requests": s.requests,
            "edge_purge_succeeded": s.succeeded,
            "edge_purge_failed": s.failed,
            "edge_purge_retries": s.retries,
            "edge_purge_repeats": s.repeats,
            "edge_purge_moot": s.moot,
            "edge_purge_backlog": self.queue.backlog(),
        }


def purger_for(settings: Settings) -> Purger | None:
    """The purger EDGE_PROVIDER names, or None for no edge."""
    if settings.edge_provider == "varnish":
        return VarnishPurger(settings.edge_purge_urls)
    if settings.edge_provider == "fastly":
        assert settings.edge_fastly_service_id and settings.edge_fastly_api_token
        return FastlyPurger(settings.edge_fastly_service_id, settings.edge_fastly_api_token)
    if settings.edge_provider == "cloudflare":
        assert settings.edge_cloudflare_zone_id and settings.edge_cloudflare_api_token
        return CloudflarePurger(
            settings.edge_cloudflare_zone_id, settings.edge_cloudflare_api_token
        )
    return None


async def open_edge(settings: Settings, stack: AsyncExitStack) -> Edge:
    """The app's Edge; with a provider, its purge task runs until the stack closes."""
    purger = purger_for(settings)
    if purger is None:
        return Edge(settings)
    import httpx2  # here: a server without an edge provider never loads an HTTP client

    client = httpx2.AsyncClient(timeout=settings.edge_purge_timeout_s)
    stack.push_async_callback(client.aclose)

    async def send(request: PurgeRequest) -> bool:
        response = await client.request(
            request.method, request.url, headers=list(request.headers), content=request.body
        )
        if response.status_code // 100 != 2:
            raise PurgeRefused(f"{request.edge} answered {response.status_code}")
        return True

    queue = PurgeQueue(
        purger,
        send,
        window_s=settings.edge_purge_window_ms / 1000,
        retry_base_s=settings.edge_purge_retry_base_s,
        retry_max_s=settings.edge_purge_retry_max_s,
        give_up_after_s=settings.edge_ttl_s + settings.edge_stale_while_revalidate_s,
        repeat_after_s=settings.edge_purge_repeat_s,
    )
    task = asyncio.create_task(queue.run(), name="edge-purge")

    async def stop() -> None:
        await background.stop(task)
        # What the last window held still goes out once, so a clean stop loses no purge.
        try:
            async with asyncio.timeout(settings.edge_purge_timeout_s):
                await queue.flush()
        except Exception as exc:
            log.warning("edge purges at shutdown did not all land (%s)", type(exc).__name__)

    stack.push_async_callback(stop)
    return Edge(settings, queue)
