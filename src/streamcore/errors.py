"""The one error hierarchy of streamcore."""


class StreamcoreError(Exception):
    """Base class of every error streamcore raises on purpose."""


class StreamcoreValueError(StreamcoreError, ValueError):
    """An argument has the right type but a value streamcore refuses (NaN, out of range, ...)."""


class StreamcoreTypeError(StreamcoreError, TypeError):
    """An argument has a type streamcore does not accept."""


class CorruptDataError(StreamcoreValueError):
    """A serialised blob or frame is truncated, malformed or from an unknown version."""


__all__ = ["CorruptDataError", "StreamcoreError", "StreamcoreTypeError", "StreamcoreValueError"]
