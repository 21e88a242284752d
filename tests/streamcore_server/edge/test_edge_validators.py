"""ETags, If-None-Match and the cache headers of finance reads, through the app."""

from __future__ import annotations

from typing import Any

import pytest
from app_support import PASSWORD, Api, expense

from streamcore_server import finance
from streamcore_server.edge.validators import etag, none_match


def test_etag_is_strong_and_names_its_parts() -> None:
    a = etag("summary", 1, 7, "None/None", 3)
    assert a.startswith('"') and a.endswith('"') and not a.startswith("W/")
    assert a == etag("summary", 1, 7, "None/None", 3)
    assert a != etag("summary", 2, 7, "None/None", 3)
    assert a != etag("summary", 1, 7, "None/None", 4)


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ('"abc"', True),
        ('W/"abc"', True),  # If-None-Match compares weakly
        ('"x", "abc"', True),
        ('"x","y"', False),
        ("*", True),
        ("abc", False),  # not an entity-tag: answered in full
        ('"abc', False),
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    assert none_match(header, '"abc"') is matches


def summary_reads(api: Api) -> tuple[int, int]:
    """(summaries computed from the database, lookups of the summary cache)."""
    stats = api.app.state.summary_cache.stats
    return stats.l3_hits, stats.l1_hits + stats.l1_misses


def test_summary_revalidates_with_a_304_that_runs_no_summary_query(api: Api) -> None:
    t = api.tenant("Acme")
    url = f"/v1/finance/summary?propertyId={t.property_id}"
    first = api.client.get(url, headers=t.auth)
    assert first.status_code == 200
    tag = first.headers["etag"]
    assert first.headers["cache-control"] == "private, no-cache"
    assert "Authorization" in first.headers["vary"]
    assert "xkey" not in first.headers  # no edge configured: no tags, no edge lifetime
    reads = summary_reads(api)

    again = api.client.get(url, headers={**t.auth, "If-None-Match": tag})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == tag
    assert summary_reads(api) == reads  # neither the queries nor even the cache

    assert (
        api.client.post("/v1/finance/expenses", json=expense(t), headers=t.auth).status_code == 201
    )
    changed = api.client.get(url, headers={**t.auth, "If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag


def test_another_orgs_etag_gets_no_304(api: Api) -> None:
    a, b = api.tenant("Acme"), api.tenant("Beta")
    url = f"/v1/finance/summary?propertyId={a.property_id}"
    tag = api.client.get(url, headers=a.auth).headers["etag"]
    r = api.client.get(url, headers={**b.auth, "If-None-Match": tag})
    assert r.status_code == 404
    r = api.client.get(url, headers={"If-None-Match": tag})
    assert r.status_code == 401 and r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("kind", ["expenses", "revenues"])
@pytest.mark.parametrize("scoped", [True, False])
def test_lists_revalidate_until_a_write(api: Api, kind: str, scoped: bool) -> None:
    t = api.tenant("Acme")
    url = f"/v1/finance/{kind}" + (f"?propertyId={t.property_id}" if scoped else "")
    first = api.client.get(url, headers=t.auth)
    tag = first.headers["etag"]
    assert api.client.get(url, headers={**t.auth, "If-None-Match": tag}).status_code == 304
    body: dict[str, Any] = expense(t)
    if kind == "revenues":
        body["revenueDate"] = body.pop("expenseDate")
    assert api.client.post(f"/v1/finance/{kind}", json=body, headers=t.auth).status_code == 201
    after = api.client.get(url, headers={**t.auth, "If-None-Match": tag})
    assert after.status_code == 200 and len(after.json()["items"]) == 1


def test_a_list_304_runs_no_page_query(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    t = api.tenant("Acme")
    url = f"/v1/finance/expenses?propertyId={t.property_id}"
    pages: list[object] = []
    page = finance.EXPENSES.page

    async def counted(*args: Any, **kwargs: Any) -> Any:
        pages.append(args)
        return await page(*args, **kwargs)

    def counted_on_sqlite(*args: Any) -> Any:
        pages.append(args)
        return read_rows(*args)

    read_rows = finance.EXPENSES.read_page_rows
    monkeypatch.setattr(finance.EXPENSES, "page", counted)  # through SQLAlchemy
    monkeypatch.setattr(finance.EXPENSES, "read_page_rows", counted_on_sqlite)  # SQLite's job
    tag = api.client.get(url, headers=t.auth).headers["etag"]
    assert len(pages) == 1
    again = api.client.get(url, headers={**t.auth, "If-None-Match": tag})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", tag)
    assert len(pages) == 1  # the version read alone answered it


def test_lists_of_a_foreign_property_are_404_even_when_revalidating(api: Api) -> None:
    a, b = api.tenant("Acme"), api.tenant("Beta")
    r = api.client.get(
        f"/v1/finance/expenses?propertyId={a.property_id}",
        headers={**b.auth, "If-None-Match": "*"},
    )
    assert r.status_code == 404


def test_writes_auth_and_metrics_are_no_store(api: Api) -> None:
    t = api.tenant("Acme")
    r = api.client.post("/v1/finance/expenses", json=expense(t), headers=t.auth)
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    assert api.client.get("/v1/system/metrics/aggregated").headers["cache-control"] == "no-store"
    assert api.client.get("/healthz").headers["cache-control"] == "no-store"
    bad = api.client.post("/auth/login", json={"email": "x@example.com", "password": "nope"})
    assert bad.status_code == 401 and bad.headers["cache-control"] == "no-store"
    good = api.client.post("/auth/login", json={"email": t.email, "password": PASSWORD})
    assert good.status_code == 200 and good.headers["cache-control"] == "no-store"


def test_edge_headers_follow_the_provider(api_factory: Any, sqlite_url: str) -> None:
    api = api_factory(
        sqlite_url,
        edge_provider="cloudflare",
        edge_cloudflare_zone_id="z",
        edge_cloudflare_api_token="t",
        edge_ttl_s=30,
        edge_stale_while_revalidate_s=5,
    )
    t = api.tenant("Acme")
    r = api.client.get(f"/v1/finance/summary?propertyId={t.property_id}", headers=t.auth)
    assert r.headers["cdn-cache-control"] == "max-age=30, stale-while-revalidate=5"
    tags = r.headers["cache-tag"].split(", ")
    assert f"org:{t.org_id}" in tags and f"property:{t.property_id}:summary" in tags
    assert r.headers["cache-control"] == "private, no-cache"  # other shared caches keep nothing
