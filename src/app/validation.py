"""Turn request bodies and query strings into models, or into the one error shape.

Bodies must be application/json (415), parse as JSON (400 malformed_json) and then pass
the model (422 validation_failed, listing every bad field at once).
"""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from .errors import MalformedJson, UnsupportedMediaType, ValidationFailed

M = TypeVar("M", bound=BaseModel)


def field_errors(exc: ValidationError) -> list[dict[str, str]]:
    """List one {field, message} per failure, fields named as the client spelled them."""
    details = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"]) or "body"
        message = error["msg"]
        # pydantic prefixes messages of custom validators; the client needs only the reason.
        message = message.removeprefix("Value error, ")
        details.append({"field": field, "message": message})
    return details


async def read_json(request: Request, model: type[M], context: Any = None) -> M:
    """Parse and validate a JSON request body."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType(
            "Request bodies must be sent as application/json.",
            details={"contentType": media_type or None},
        )
    body = await request.body()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(
            "The request body is not valid JSON.", details={"reason": str(exc)}
        ) from None
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ValidationFailed("Some fields are invalid.", details=field_errors(exc)) from None


def read_query(request: Request, model: type[M], context: Any = None) -> M:
    """Validate the query string; a repeated parameter counts by its last value."""
    try:
        return model.model_validate(dict(request.query_params), context=context)
    except ValidationError as exc:
        raise ValidationFailed(
            "Some query parameters are invalid.", details=field_errors(exc)
        ) from None
