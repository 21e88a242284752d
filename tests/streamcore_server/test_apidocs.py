"""The API page at /docs: Swagger UI from the package, over /openapi.json, nothing off-site."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from app_support import Api
from processes import ServeProcess, server_env

from streamcore_server import apidocs


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v is not None]


def test_the_page_loads_only_files_of_this_server(sqlite_api: Api) -> None:
    page = sqlite_api.client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # A browser enforces it: nothing from a CDN could load even if the page asked for it.
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp
    assert page.headers["cache-control"] == "no-store"
    links = _Links()
    links.feed(page.text)
    assert links.urls, page.text
    assert all(url.startswith("/") and not url.startswith("//") for url in links.urls), links.urls
    assert "<script>" not in page.text  # no inline script: script-src 'self' suffices
    scripts = [u for u in links.urls if u.endswith(".js")]
    assert len(scripts) == 2
    bodies = {}
    for url in links.urls:
        if url == "/openapi.json":
            continue
        asset = sqlite_api.client.get(url)
        assert asset.status_code == 200, url
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable", url
        bodies[url] = asset
    bundle = next(r for u, r in bodies.items() if u.endswith("swagger-ui-bundle.js"))
    assert bundle.headers["content-type"].startswith("text/javascript")
    assert "SwaggerUIBundle" in bundle.text
    css = next(r for u, r in bodies.items() if u.endswith(".css"))
    assert css.headers["content-type"].startswith("text/css")
    init = bodies[scripts[-1]]
    assert 'url: "/openapi.json"' in init.text
    assert "validatorUrl: null" in init.text  # Swagger UI's badge would call its online validator


def test_the_bundled_viewer_renders_openapi_3_1(sqlite_api: Api) -> None:
    # Swagger UI before 5 cannot show a 3.1 document; the URL names the version served.
    major = int(apidocs.VERSION.split(".")[0])
    assert major >= 5
    assert sqlite_api.client.get("/openapi.json").json()["openapi"].startswith("3.1")
    assert f"/docs/assets/{apidocs.VERSION}/" in sqlite_api.client.get("/docs").text


def test_anything_else_under_assets_is_a_404_json(sqlite_api: Api) -> None:
    base = f"/docs/assets/{apidocs.VERSION}"
    for path in (
        f"{base}/index.html",  # the wheel's own page, which points at a petstore online
        f"{base}/../../../etc/passwd",
        f"{base}/swagger-ui.js.map",
        "/docs/assets/0.0.1/swagger-ui.css",
        "/docs/assets/",
    ):
        r = sqlite_api.client.get(path)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"
    r = sqlite_api.client.post(f"{base}/swagger-ui.css")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, HEAD"
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_the_asset_urls_change_with_their_content() -> None:
    # A year-long cache is safe only if new content gets a new URL.
    assert re.fullmatch(r"init-[0-9a-f]{12}\.js", apidocs.INIT_NAME)
    assert apidocs.INIT_NAME in apidocs.PAGE


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs a headless Chromium")
def test_a_browser_renders_every_operation(tmp_path: Path) -> None:
    # A real server and a real browser, which enforces the page's CSP: had the page needed a
    # file from elsewhere (this machine reaches no CDN anyway), nothing would render.
    server = ServeProcess(tmp_path, server_env(tmp_path), "server")
    try:
        dom = subprocess.run(
            [
                *("chromium", "--headless=new", "--no-sandbox", "--disable-gpu"),
                *("--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}"),
                *("--virtual-time-budget=10000", "--dump-dom", f"{server.http}/docs"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout
        document = server.get("/openapi.json").json()
    finally:
        server.stop()
    rendered = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert rendered == set(document["paths"]), dom[:2000]
