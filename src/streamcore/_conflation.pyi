"""Entity-keyed conflation: the latest event per key, keys in first-seen order, once per window.

A keyed, conflatable event replaces the payload of the earlier event of its key in the window
and keeps that event's slot. An unkeyed (None) or non-conflatable event always takes a new slot
at the end and never replaces, nor is replaced by, another event. drain() returns slots in
creation order. The str key "7" and the int key 7 are different keys; bool keys are refused
(True == 1 would collide).

Latest mode never decodes or re-encodes a payload. Merge mode decodes both payloads with the
stdlib json only when a key collides, merges the JSON objects field by field (shallow, later
fields win) and re-encodes the result compactly (separators (",", ":"), ensure_ascii=False);
a payload that is not a JSON object is reported then, on collision, with StreamcoreValueError
naming the key.
"""

from collections.abc import Sequence
from typing import Literal, final

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

@final
class Conflator:
    """One channel's window of bytes payloads, conflated by entity key."""

    def __init__(self, mode: Literal["latest", "merge"] = "latest") -> None:
        """Create an empty window; mode is 'latest' (default) or 'merge'."""
    def push(self, key: str | int | None, payload: bytes, conflatable: bool = True) -> None:
        """Add one event to the window."""
    def push_many(
        self, keys: Sequence[str | int | None], payloads: Sequence[bytes], conflatable: bool = True
    ) -> None:
        """Add events pairwise; every key and payload is checked before any is added."""
    def push_int_many(self, keys: Buffer, payloads: Sequence[bytes]) -> None:
        """Add conflatable events keyed by a C-contiguous int64 buffer; payloads checked first."""
    def drain(self) -> list[bytes]:
        """Return the window's payloads in slot order and start a new window (counters are kept)."""
    def drain_keyed(self) -> tuple[list[bytes], list[str | int | None]]:
        """Return (payloads, keys) in slot order and start a new window; keys[i] is None for an
        event kept as it came (unkeyed or not conflatable)."""
    def __len__(self) -> int:
        """Number of slots waiting in the window."""
    @property
    def mode(self) -> str:
        """'latest' or 'merge'."""
    @property
    def pending_bytes(self) -> int:
        """Sum of the payload lengths waiting in the window."""
    @property
    def events_in(self) -> int:
        """Events pushed since creation."""
    @property
    def events_out(self) -> int:
        """Events handed out by drain() since creation."""
    @property
    def conflation_ratio(self) -> float:
        """events_out / events_in since creation (1.0 before any event)."""

@final
class IntConflator:
    """Latest int64 ref per int64 key, keys in first-seen order, in a C hash table."""

    def __init__(self, capacity_hint: int = 1024) -> None:
        """Create an empty window sized for capacity_hint distinct keys (it grows by doubling)."""
    def push(self, key: int, ref: int) -> None:
        """Record ref as the latest for key."""
    def push_many(self, keys: Buffer, refs: Buffer) -> None:
        """Record refs[i] as the latest for keys[i] (C-contiguous int64 buffers), GIL released."""
    def drain(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Return (keys, refs) as int64 arrays in first-seen order and start a new window."""
    def clear(self) -> None:
        """Discard the window without emitting it (its events stay counted in events_in)."""
    def __len__(self) -> int:
        """Number of distinct keys waiting in the window."""
    @property
    def events_in(self) -> int:
        """Pairs pushed since creation."""
    @property
    def events_out(self) -> int:
        """Pairs handed out by drain() since creation."""
    @property
    def conflation_ratio(self) -> float:
        """events_out / events_in since creation (1.0 before any event)."""
