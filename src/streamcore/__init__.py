"""streamcore: the compiled hot path of a realtime stream.

Conflation by entity key, adaptive batch windows, frames with threshold compression, and
log-bucketed histograms, and the broadcast of one frame to many transports. The core never reads
the clock and never does I/O of its own: callers pass `now` in and take bytes and numbers out
(the broadcast calls the transports it is given).
"""

from .errors import CorruptDataError, StreamcoreError, StreamcoreTypeError, StreamcoreValueError

try:
    from ._broadcast import Broadcast
    from ._conflation import Conflator, IntConflator
    from ._frames import Codec, FrameEncoder
    from ._histogram import Histogram
    from ._window import AdaptiveWindow, WindowScheduler
except ImportError as exc:  # pragma: no cover - exercised by hand, not in CI
    if not (exc.name or "").startswith("streamcore._"):
        raise
    # No silent pure-Python fallback: a slow engine that looks healthy is worse than a loud error.
    raise ImportError(
        f"streamcore's compiled core is not built ({exc.name} is missing). Build it with "
        "`make build` (or `pip install -e .` / `python setup.py build_ext --inplace`)."
    ) from exc

from .protocol import DecodedFrame, FrameKind, decode_frame

__version__ = "0.1.0"

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
