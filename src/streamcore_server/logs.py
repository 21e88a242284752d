"""Structured JSON logs, each line carrying the request id of the request it belongs to."""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

import orjson

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else came through `extra=` and is logged as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}
# Last line of defence: a field with one of these names never reaches a log line.
_SECRET_WORDS = ("password", "secret", "token", "authorization", "cookie")
# Secrets inside free text: query parameters that carry credentials, and anything shaped like a
# JWT (three base64url segments, the first a JSON header: "eyJ").
_SECRET_TEXT = re.compile(
    r"(?i)(\b(?:access_token|token|password|api_key)=)[^&\s\"']*"
    r"|eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"|(Bearer\s+)[A-Za-z0-9._~+/=-]+"
)
# uvicorn's handshake lines repeat each WebSocket's full query string; the access middleware
# logs one line per connection instead, path only.
_UVICORN_HANDSHAKE = '%s - "WebSocket %s"'


@functools.lru_cache(maxsize=1024)
def _secret_key(name: str) -> bool:
    # Field names repeat on every line (requestId, path, status...): decided once per name.
    return any(word in name.lower() for word in _SECRET_WORDS)


def redact(text: str) -> str:
    """Replace credentials found in free text (query strings, bearer tokens, JWTs)."""
    return _SECRET_TEXT.sub(lambda m: (m.group(1) or m.group(2) or "") + "[redacted]", text)


class SecretFilter(logging.Filter):
    """Keep secrets and uvicorn's duplicate handshake lines out of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.name.startswith("uvicorn")
            and isinstance(record.msg, str)
            and record.msg.startswith(_UVICORN_HANDSHAKE)
        ):
            return False
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object per line."""

    converter = time.gmtime  # type: ignore[assignment]  # timestamps are UTC, hence the Z

    _second = -1
    _second_text = ""

    def format(self, record: logging.LogRecord) -> str:
        # Every request logs a line through here: strftime once a second, not once a line.
        second = int(record.created)
        if second != self._second:  # the timestamp's text changes once a second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        entry: dict[str, Any] = {
            "ts": f"{self._second_text}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = request_id.get()
        if rid is not None:
            entry["requestId"] = rid
        fields = record.__dict__
        for key in [k for k in fields if k not in _STANDARD]:  # `extra=`, in its order
            if key[0] == "_":
                continue
            entry[key] = "[redacted]" if _secret_key(key) else fields[key]
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(entry, default=str).decode()


def configure(level: str) -> None:
    """Send every logger, uvicorn's included, through one JSON handler on stderr."""
    # The JSON lines never show the caller's file and line, thread or process, so the record
    # need not gather them: the logging HOWTO's "Optimization" switches. Finding the caller
    # walks the stack on every record, a good part of the access line's cost.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(SecretFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Alembic announces each autogenerate plugin at info on every start: noise for operators.
    logging.getLogger("alembic.runtime.plugins").setLevel(max(root.level, logging.WARNING))
