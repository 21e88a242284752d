"""The OpenAPI 3.1 document, generated from each route's declared Operation and its models.

Routes are built from Operations, so an endpoint cannot exist without its documentation;
schemas come from the same pydantic models that validate requests.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

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
    # Honours Idempotency-Key (streamcore_server.middleware.idempotency); documents its header and
    # answers.
    idempotent: bool = False
    # Read replicas (streamcore_server.replicas): "write" answers with a Consistency-Token, "read"
    # honours one.
    consistency: Literal["read", "write"] | None = None
    # Answers that are not JSON: status -> (media type, description); the body is a string.
    text_responses: Mapping[int, tuple[str, str]] = field(default_factory=dict)

    def route(self) -> Route:
        return Route(self.path, self.endpoint, methods=[self.method])


def body_limit(op: Operation, settings: Settings) -> int:
    """The most bytes this operation's body may have (413 past it, before it is buffered)."""
    if op.auth:
        return settings.max_body_bytes
    return min(settings.max_body_bytes, settings.max_unauthenticated_body_bytes)


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


IDEMPOTENCY_KEY_PATTERN = r'^(?:[!#-~][!-~]{0,254}|"(?:[!#-\[\]-~]|\\["\\]){1,255}")$'
IDEMPOTENCY_KEY_PARAMETER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "1-255 visible ASCII characters (or the IETF draft's quoted form), scoped to the caller. "
        "The same key and request within IDEMPOTENCY_TTL_S replays the stored response with "
        "Idempotent-Replayed: true; see docs/IDEMPOTENCY.md."
    ),
    # Exactly what idempotency.parse_key takes: a bare key, or the sf-string form whose
    # unescaped content (\" and \\ the only escapes) is the key.
    "schema": {"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN},
}


def _document_idempotency(responses: dict[str, Any], settings: Settings) -> None:
    error = {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}
    replayed = {
        "Idempotent-Replayed": {
            "description": "true when this is the stored response of an earlier request",
            "schema": {"type": "string", "enum": ["true"]},
        }
    }
    for status, entry in responses.items():
        if status.startswith("2") or status in ("403", "404"):  # the outcomes that are stored
            entry.setdefault("headers", {}).update(replayed)
    bad = responses.setdefault("400", {"description": "Bad request", "content": error})
    bad["description"] += "; or an invalid Idempotency-Key (idempotency_key_invalid)"
    responses["409"] = {
        "description": (
            "idempotency_request_in_progress: a request with this key is still running "
            "(Retry-After)"
            + (
                "; or idempotency_key_reused: the key was used with another request"
                if settings.idempotency_mismatch_status == 409
                else ""
            )
        ),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        "content": error,
    }
    if settings.idempotency_mismatch_status == 422:
        responses["422"]["description"] += (
            "; or idempotency_key_reused: the key was used with another request"
        )


CONSISTENCY_TOKEN_PARAMETER = {
    "name": "Consistency-Token",
    "in": "header",
    "required": False,
    "description": (
        "A Consistency-Token from an earlier write: the read then sees every write committed "
        "before it was issued (a standby serves it only once it has replayed that far); see "
        "docs/API.md, Read replicas and read-your-writes."
    ),
    "schema": {"type": "string", "pattern": "^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$"},
}


def _document_consistency(op: Operation, doc: dict[str, Any], settings: Settings) -> None:
    if not settings.database_replica_urls or op.consistency is None:
        return  # without replicas no token is issued, and one sent is ignored
    responses = doc["responses"]
    if op.consistency == "write":
        token = {
            "description": "pass it on later reads to see this write (read-your-writes)",
            "schema": {"type": "string"},
        }
        for status, entry in responses.items():
            if status.startswith("2"):
                entry.setdefault("headers", {})["Consistency-Token"] = token
        return
    doc.setdefault("parameters", []).append(CONSISTENCY_TOKEN_PARAMETER)
    error = {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}
    bad = responses.setdefault("400", {"description": "Bad request", "content": error})
    bad["description"] += "; or a malformed Consistency-Token (invalid_consistency_token)"


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
        for status, (media_type, description) in op.text_responses.items():
            responses[str(status)] = {
                "description": description,
                "content": {media_type: {"schema": {"type": "string"}}},
            }
        for status in op.errors:
            entry: dict[str, Any] = {
                "description": _ERROR_DESCRIPTIONS.get(status, "Error"),
                "content": {
                    "application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}
                },
            }
            if status == 413:
                entry["description"] = (
                    f"Body larger than {body_limit(op, settings)} bytes (payload_too_large)"
                )
            if status == 401:
                entry["headers"] = {
                    "WWW-Authenticate": {"required": True, "schema": {"type": "string"}}
                }
            responses[str(status)] = entry
        if op.idempotent:
            _document_idempotency(responses, settings)
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
        if op.idempotent:
            doc.setdefault("parameters", []).append(IDEMPOTENCY_KEY_PARAMETER)
        _document_consistency(op, doc, settings)
        if op.query:
            schema = op.query.model_json_schema(ref_template=REF)
            required = set(schema.get("required", ()))
            doc.setdefault("parameters", []).extend(
                {"name": name, "in": "query", "required": name in required, "schema": prop}
                for name, prop in schema["properties"].items()
            )
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
