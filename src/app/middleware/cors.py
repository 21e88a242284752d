"""Starlette's CORS middleware, with refused preflights answered in the API's error shape."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

from ..errors import error_response


class CorsMiddleware(CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        # Starlette answers plain text naming the failures; keep its headers, reshape the body.
        reasons = bytes(response.body).decode().removeprefix("Disallowed CORS ").split(", ")
        headers = {
            k: v for k, v in response.headers.items() if k not in ("content-type", "content-length")
        }
        return error_response(
            400, "cors_rejected", "CORS preflight refused.", {"disallowed": reasons}, headers
        )
