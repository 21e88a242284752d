"""The OpenAPI 3.1 document, generated from each route's declared Operation and its models.

Routes are built from Operations, so an endpoint cannot exist without its documentation;
schemas come from the same pydantic models that validate requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .settings import Settings

Endpoint = Callable[[Request], Awaitable[Response]]
REF = "#/components/schemas/{model}"

_ERROR_DESCRIPTIONS = {
    400: "Malformed JSON, a bad cursor or query",
    401: "Missing, invalid or expired credentials",
    404: "Not found, or not in the caller's org",
    413: "Body larger than the limit",
    415: "Body is not application/json",
    422: "Field validation failed; details lists every bad field",
    429: "Too many attempts",
    503: "A dependency is not ready",
}


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable error code; see docs/API.md.")
    message: str
    details: Any = Field(description="For validation_failed, a list of {field, message}.")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(title="ErrorResponse")

    error: ErrorDetail


@dataclass(frozen=True)
class Operation:
    """One documented endpoint: the route and everything the document says about it."""

    method: str
    path: str
    endpoint: Endpoint
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: Mapping[int, type[BaseModel]] = field(default_factory=dict)
    errors: tuple[int, ...] = ()
    auth: bool = True

    def route(self) -> Route:
        return Route(self.path, self.endpoint, methods=[self.method])


def routes(operations: Iterable[Operation]) -> list[Route]:
    return [op.route() for op in operations]


def _apply_settings(node: Any, settings: Settings) -> Any:
    # Bounds that are settings are marked in the models (x-maximum-setting) and filled in here,
    # so the document states the limits this deployment enforces.
    if isinstance(node, dict):
        out = {k: _apply_settings(v, settings) for k, v in node.items()}
        if name := out.pop("x-maximum-setting", None):
            out["maximum"] = getattr(settings, name)
        if name := out.pop("x-default-setting", None):
            out["default"] = getattr(settings, name)
        return out
    if isinstance(node, list):
        return [_apply_settings(v, settings) for v in node]
    return node


def build_document(operations: Iterable[Operation], settings: Settings) -> dict[str, Any]:
    """Build the OpenAPI document for these operations."""
    operations = list(operations)
    models: list[tuple[type[BaseModel], Any]] = [(ErrorResponse, "serialization")]
    for op in operations:
        if op.body:
            models.append((op.body, "validation"))
        models.extend((m, "serialization") for m in op.responses.values())
    unique = list(dict.fromkeys(models))
    keys, defs = models_json_schema(unique, ref_template=REF)
    schemas = defs.get("$defs", {})
    ref = {k: v["$ref"] for k, v in keys.items()}

    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        responses: dict[str, Any] = {}
        for status, model in op.responses.items():
            responses[str(status)] = {
                "description": model.__doc__.strip().splitlines()[0] if model.__doc__ else "OK",
                "content": {
                    "application/json": {"schema": {"$ref": ref[(model, "serialization")]}}
                },
            }
        for status in op.errors:
            entry: dict[str, Any] = {
                "description": _ERROR_DESCRIPTIONS.get(status, "Error"),
                "content": {
                    "application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}
                },
            }
            if status == 401:
                entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
            responses[str(status)] = entry
        doc: dict[str, Any] = {
            "operationId": op.endpoint.__name__,
            "summary": op.summary,
            "tags": [op.tag],
            "responses": responses,
        }
        if op.endpoint.__doc__:
            doc["description"] = op.endpoint.__doc__.strip()
        if op.auth:
            doc["security"] = [{"bearerAuth": []}]
        if op.body:
            doc["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": ref[(op.body, "validation")]}}},
            }
        if op.query:
            schema = op.query.model_json_schema(ref_template=REF)
            required = set(schema.get("required", ()))
            doc["parameters"] = [
                {"name": name, "in": "query", "required": name in required, "schema": prop}
                for name, prop in schema["properties"].items()
            ]
        paths.setdefault(op.path, {})[op.method.lower()] = doc

    document = {
        "openapi": "3.1.0",
        "info": {"title": "streamcore API", "version": "1.0.0"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
    return _apply_settings(document, settings)  # type: ignore[no-any-return]
