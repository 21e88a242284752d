"""Turn request bodies and query strings into models, or into the one error shape.

Bodies must be application/json (415), parse as JSON (400 malformed_json) and then pass
the model (422 validation_failed, listing every bad field at once).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar

import orjson
from pydantic import BaseModel, BeforeValidator, Field, StrictInt, ValidationError
from starlette.requests import Request

from .errors import MalformedJson, UnsupportedMediaType, ValidationFailed

M = TypeVar("M", bound=BaseModel)

# The one date-time form the API takes: ISO 8601 / RFC 3339 with an explicit offset, years
# 1900-2999. The document publishes this pattern, so a client's validator and ours agree; pydantic
# alone would also take digit strings as Unix times ("100" -> 1970-01-01T00:01:40Z).
INSTANT_PATTERN = (
    r"^(19[0-9]{2}|2[0-9]{3})-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?"
    r"([Zz]|[+-][0-9]{2}:?[0-9]{2})$"
)
_INSTANT = re.compile(INSTANT_PATTERN)

# PostgreSQL's text cannot hold U+0000 (SQLite's can): refused on both alike, and documented, so
# a text that reaches a column never fails in the database.
NO_NUL = r"^[^\x00]*$"


def no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain the character U+0000")
    return value


def iso_instant(value: Any) -> Any:
    """Refuse anything but an ISO 8601 date-time string with an offset (before parsing)."""
    if not isinstance(value, str) or not _INSTANT.match(value):
        raise ValueError(
            "must be an ISO 8601 date-time with an offset between the years 1900 and 2999, "
            "e.g. 2025-12-13T10:00:00Z"
        )
    return value


def json_integer(value: Any) -> Any:
    """Take a JSON number without a fraction (500.0) as the integer it is, as JSON Schema does."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


MAX_ID = 2**63 - 1  # ids are 64-bit signed integers in both databases
# A JSON Schema integer id: 5 and 5.0, never "5", true or 5.5 (pydantic's lax int takes "5").
# The bounds go before the validator, or pydantic documents them as "gt" (not JSON Schema).
JsonId = Annotated[StrictInt, Field(ge=1, le=MAX_ID), BeforeValidator(json_integer)]


def whole_number(low: int, high: int) -> Any:
    """A before-validator naming the bounds when a JSON number is not an integer (1e23, 1.5)."""

    def check(value: Any) -> Any:
        if isinstance(value, float):
            if value.is_integer() and low <= value <= high:
                return int(value)  # 500.0 is the integer 500 to JSON Schema, and so to us
            raise ValueError(f"must be a whole number from {low} to {high}")
        if isinstance(value, int) and not isinstance(value, bool) and value > high:
            raise ValueError(f"must be at most {high}")
        return value

    return check


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
