"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse

from .openapi import Operation

Check = Callable[[], Awaitable[None]]
READINESS_TIMEOUT_S = 2.0


async def healthz(request: Request) -> JSONResponse:
    """Answer while the process runs; says nothing about dependencies."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """Answer 200 once every dependency answers, else 503 naming the ones that did not."""
    checks: dict[str, Check] = request.app.state.readiness_checks
    results: dict[str, str] = {}

    async def run(name: str, check: Check) -> None:
        try:
            await asyncio.wait_for(check(), READINESS_TIMEOUT_S)
            results[name] = "ok"
        except Exception as exc:  # any failure means not ready; the reason is for operators
            results[name] = f"error: {type(exc).__name__}"

    await asyncio.gather(*(run(name, check) for name, check in checks.items()))
    ready = all(v == "ok" for v in results.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": results},
        status_code=200 if ready else 503,
    )


class Liveness(BaseModel):
    """The process is running."""

    status: str


class Readiness(BaseModel):
    """Every dependency answered ("ready"), or the ones that did not ("not_ready", 503)."""

    status: str
    checks: dict[str, str]


operations = [
    Operation(
        "GET", "/healthz", healthz, "Liveness", "health", responses={200: Liveness}, auth=False
    ),
    Operation(
        "GET",
        "/readyz",
        readyz,
        "Readiness",
        "health",
        responses={200: Readiness, 503: Readiness},
        auth=False,
    ),
]
