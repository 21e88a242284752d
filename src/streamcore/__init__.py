"""streamcore: the compiled hot path of a realtime stream.

Conflation by entity key, adaptive batch windows, frames with threshold compression, and
log-bucketed histograms, and the broadcast of one frame to many transports. The core never reads
the clock and never does I/O of its own: callers pass `now` in and take bytes and numbers out
(the broadcast calls the transports it is given).
"""

from typing import TYPE_CHECKING, Any

from .errors import CorruptDataError, StreamcoreError, StreamcoreTypeError, StreamcoreValueError
from .protocol import Codec, DecodedFrame, FrameKind, decode_frame

if TYPE_CHECKING:
    from ._broadcast import Broadcast
    from ._conflation import Conflator, IntConflator
    from ._frames import FrameEncoder
    from ._histogram import Histogram
    from ._window import AdaptiveWindow, WindowScheduler

__version__ = "0.1.0"  # the one place: pyproject.toml reads it from here

# The compiled parts load on first use, so that a subscriber's `streamcore.protocol` and
# `streamcore.client` import without them (and without numpy).
_COMPILED = {
    "Broadcast": "_broadcast",
    "Conflator": "_conflation",
    "IntConflator": "_conflation",
    "FrameEncoder": "_frames",
    "Histogram": "_histogram",
    "AdaptiveWindow": "_window",
    "WindowScheduler": "_window",
}


def __getattr__(name: str) -> Any:
    module = _COMPILED.get(name)
    if module is None:
        raise AttributeError(f"module 'streamcore' has no attribute {name!r}")
    import importlib

    try:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
    except ImportError as exc:  # pragma: no cover - exercised by hand, not in CI
        if not (exc.name or "").startswith("streamcore._"):
            raise
        # No silent pure-Python fallback: a slow engine that looks healthy is worse than a loud
        # error.
        raise ImportError(
            f"streamcore's compiled core is not built ({exc.name} is missing). Build it with "
            "`make build` (or `pip install -e .` / `python setup.py build_ext --inplace`)."
        ) from exc
    globals()[name] = value
    return value


__all__ = [
    "AdaptiveWindow",
    "Broadcast",
    "Codec",
    "Conflator",
    "CorruptDataError",
    "DecodedFrame",
    "FrameEncoder",
    "FrameKind",
    "Histogram",
    "IntConflator",
    "StreamcoreError",
    "StreamcoreTypeError",
    "StreamcoreValueError",
    "WindowScheduler",
    "decode_frame",
]
