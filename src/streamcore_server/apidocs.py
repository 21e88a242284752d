"""The interactive API page at /docs: Swagger UI over /openapi.json, served from the package.

Swagger UI 5 (it renders OpenAPI 3.1) comes from the swagger-ui-bundle-v2 wheel, so the page
needs no CDN and works offline; its Content-Security-Policy lets it load nothing but this origin.
The assets' URL names the bundled version, so browsers may keep them for a year; the page itself
is small and no-store, like every other answer without a policy of its own.
"""

from __future__ import annotations

import hashlib
import html
import mimetypes
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.types import Receive, Scope, Send
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # no py.typed

from .errors import error_response
from .openapi import Operation

BUNDLE = Path(str(swagger_ui_path))
VERSION = BUNDLE.name.removeprefix("swagger-ui-")  # e.g. 5.31.0
ASSETS = f"/docs/assets/{VERSION}"
# Only what the page loads; the wheel's own index.html points at a petstore on the internet.
_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")
# No inline script, so script-src needs nothing but 'self'; Swagger UI styles its elements
# inline and draws icons as data: URIs. Try-it-out requests go to this origin (connect-src).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
IMMUTABLE = "public, max-age=31536000, immutable"

INIT_JS = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "/openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    persistAuthorization: false,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""

# Named by its content: it may be kept as long as the bundle's files, and a change is a new URL.
INIT_NAME = f"init-{hashlib.sha256(INIT_JS.encode()).hexdigest()[:12]}.js"

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>streamcore API</title>
<link rel="stylesheet" href="{html.escape(ASSETS)}/swagger-ui.css">
<link rel="icon" type="image/png" href="{html.escape(ASSETS)}/favicon-32x32.png">
</head>
<body>
<noscript>This page needs JavaScript; the API itself is described at
<a href="/openapi.json">/openapi.json</a>.</noscript>
<div id="swagger-ui"></div>
<script src="{html.escape(ASSETS)}/swagger-ui-bundle.js"></script>
<script src="{html.escape(ASSETS)}/{INIT_NAME}"></script>
</body>
</html>
"""


async def api_docs(request: Request) -> Response:
    """The interactive API page: Swagger UI over /openapi.json, no network beyond this server."""
    return HTMLResponse(PAGE, headers={"Content-Security-Policy": CSP})


class Assets:
    """Serve the page's few files (GET and HEAD) at /docs/assets/VERSION/NAME; 404 otherwise."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        prefix, _, name = scope["path"].removeprefix("/docs/assets/").partition("/")
        response: Response
        if scope["method"] not in ("GET", "HEAD"):
            response = error_response(
                405, "method_not_allowed", "Method Not Allowed", headers={"Allow": "GET, HEAD"}
            )
        elif prefix != VERSION or (name not in _FILES and name != INIT_NAME):
            response = error_response(404, "not_found", f"No API page asset at {scope['path']}.")
        elif name == INIT_NAME:
            response = Response(
                INIT_JS, media_type="text/javascript", headers={"Cache-Control": IMMUTABLE}
            )
        else:
            media_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
            response = FileResponse(
                BUNDLE / name, media_type=media_type, headers={"Cache-Control": IMMUTABLE}
            )
        await response(scope, receive, send)


operations = [
    Operation(
        "GET",
        "/docs",
        api_docs,
        summary="The interactive API page",
        tag="meta",
        text_responses={200: ("text/html", "Swagger UI over /openapi.json")},
        auth=False,
    )
]
