"""GET /dashboard: a live page of the org's entries, totals and the service's metrics.

Static files, no build step. The page logs in with the API's login endpoint, reads over HTTP and
follows the realtime stream with the JavaScript client (clients/js/src, linked as static/client,
so the page and the package run the same code; fzstd vendored under static/vendor). All of it is
served from the app's own origin, so neither CORS nor a second server is involved.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from os import PathLike
from pathlib import Path

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).parent / "static"
_PAGE = (STATIC / "index.html").read_text(encoding="utf-8")


def _script_hashes(html: str) -> str:
    # The import map must be inline (browsers load no external one): allow exactly its bytes.
    bodies = re.findall(r"<script type=\"importmap\">(.*?)</script>", html, re.S)
    digests = (hashlib.sha256(b.encode()).digest() for b in bodies)
    return " ".join(f"'sha256-{base64.b64encode(d).decode()}'" for d in digests)


# Only this origin's scripts, styles and sockets; nothing may frame the page.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        f"script-src 'self' {_script_hashes(_PAGE)}",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


async def page(request: Request) -> Response:
    """The dashboard's page."""
    return HTMLResponse(_PAGE, headers=SECURITY_HEADERS)


class _Static(StaticFiles):
    """The page's scripts and styles, with the page's headers."""

    def file_response(
        self,
        full_path: PathLike[str] | str,
        stat_result: os.stat_result,
        scope: Scope,
        status_code: int = 200,
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        response.headers.update(SECURITY_HEADERS)
        return response


routes: list[BaseRoute] = [
    # A page, not an operation of the API: kept out of the OpenAPI document.
    Route("/dashboard", page, methods=["GET"], include_in_schema=False),
    # follow_symlink: static/client is the JavaScript package's own src/.
    Mount("/dashboard/static", _Static(directory=STATIC, follow_symlink=True), name="dashboard"),
]
