"""The readable specification of entity-keyed conflation (never imported by the package itself).

One channel accumulates events during a window; `drain()` hands them out once per window.

- A keyed, conflatable event collapses with earlier events of its key in the window: the latest
  payload wins, and the key keeps the slot where it was first seen in the window.
- An unkeyed (`key=None`) or non-conflatable event always takes a new slot at the end; it neither
  replaces nor is replaced by another event of its key.
- `drain()` returns payloads in slot-creation order. `"7"` and `7` are different keys.
- Merge mode: on a collision the two payloads, both JSON objects, are merged shallowly (later fields
  win) and re-encoded compactly; latest mode never decodes a payload.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from streamcore.errors import StreamcoreTypeError, StreamcoreValueError

Key = str | int | None


def check_key(key: object) -> None:
    """Raise StreamcoreTypeError unless key is a str, an int (not a bool) or None."""
    if key is None or isinstance(key, str):
        return
    # bool is an int subclass, and True == 1 would silently collide with the key 1.
    if isinstance(key, int) and not isinstance(key, bool):
        return
    raise StreamcoreTypeError(f"conflation key must be str, int or None, not {type(key).__name__}")


def check_payload(payload: object) -> None:
    """Raise StreamcoreTypeError unless payload is bytes."""
    if not isinstance(payload, bytes):
        raise StreamcoreTypeError(
            f"payload must be bytes (encoded JSON), not {type(payload).__name__}"
        )


def merge_json_objects(key: object, old: bytes, new: bytes) -> bytes:
    """Merge two encoded JSON objects field by field (later fields win) and re-encode compactly."""
    merged = _decode_object(key, old)
    merged.update(_decode_object(key, new))
    return json.dumps(merged, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _decode_object(key: object, payload: bytes) -> dict[str, object]:
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise StreamcoreValueError(
            f"merge mode: payload for key {key!r} is not valid JSON: {exc}"
        ) from None
    if not isinstance(value, dict):
        raise StreamcoreValueError(
            f"merge mode: payload for key {key!r} is a JSON {type(value).__name__}, not an object"
        )
    return value


class ReferenceConflator:
    """A dict key -> slot index and a list of slots; the specification of `Conflator`."""

    def __init__(self, mode: str = "latest") -> None:
        if not isinstance(mode, str):
            raise StreamcoreTypeError(f"mode must be a str, not {type(mode).__name__}")
        if mode not in ("latest", "merge"):
            raise StreamcoreValueError(f"mode must be 'latest' or 'merge', not {mode!r}")
        self.mode = mode
        self._slots: list[bytes] = []
        self._index: dict[str | int, int] = {}
        self.pending_bytes = 0
        self.events_in = 0
        self.events_out = 0

    def push(self, key: Key, payload: bytes, conflatable: bool = True) -> None:
        """Add one event to the window."""
        check_key(key)
        check_payload(payload)
        slot = self._index.get(key) if key is not None and conflatable else None
        if slot is None:
            if key is not None and conflatable:
                self._index[key] = len(self._slots)
            self._slots.append(payload)
            self.pending_bytes += len(payload)
        else:
            old = self._slots[slot]
            if self.mode == "merge":
                payload = merge_json_objects(key, old, payload)
            self._slots[slot] = payload
            self.pending_bytes += len(payload) - len(old)
        self.events_in += 1

    def push_many(
        self, keys: Sequence[Key], payloads: Sequence[bytes], conflatable: bool = True
    ) -> None:
        """Add events pairwise; every key and payload is checked before any is added."""
        if len(keys) != len(payloads):
            raise StreamcoreValueError(
                f"keys and payloads differ in length: {len(keys)} != {len(payloads)}"
            )
        for key, payload in zip(keys, payloads, strict=True):
            check_key(key)
            check_payload(payload)
        for key, payload in zip(keys, payloads, strict=True):
            self.push(key, payload, conflatable)

    def drain(self) -> list[bytes]:
        """Return the window's payloads in slot order and start a new window."""
        out = self._slots
        self._slots = []
        self._index = {}
        self.pending_bytes = 0
        self.events_out += len(out)
        return out

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def conflation_ratio(self) -> float:
        """events_out / events_in, cumulative; 1.0 before any event."""
        return self.events_out / self.events_in if self.events_in else 1.0


def reference_int_conflate(keys: Sequence[int], refs: Sequence[int]) -> tuple[list[int], list[int]]:
    """Conflate (key, ref) pairs: the latest ref of each key, keys in first-seen order."""
    if len(keys) != len(refs):
        raise StreamcoreValueError(f"keys and refs differ in length: {len(keys)} != {len(refs)}")
    latest: dict[int, int] = {}
    for key, ref in zip(keys, refs, strict=True):
        latest[key] = ref  # a dict keeps first-insertion order, which is first-seen order
    return list(latest), list(latest.values())
