"""Broadcast: one prepared frame handed to many transports in one call, the loop in C.

Members are any hashable objects, each added with an asyncio transport (anything with `write`,
`get_write_buffer_size` and `is_closing`); the bound methods are taken once, at add(). send()
writes the same bytes to every member whose transport is open and holds less than `limit` bytes,
and returns the others for the caller to queue or close. Not thread-safe: one owner (the event
loop). discard() may be called from inside send() (a transport callback); add() should not be.
"""

from collections.abc import Hashable
from typing import Any, Protocol, final

__all__ = ["Broadcast", "Transport"]

class Transport(Protocol):
    def write(self, data: bytes, /) -> Any: ...
    def get_write_buffer_size(self) -> int: ...
    def is_closing(self) -> bool: ...

@final
class Broadcast:
    """Members that get the same bytes, written by one C loop per send()."""

    def __init__(self) -> None: ...
    @property
    def writes(self) -> int:
        """Writes handed to transports since creation."""
    @property
    def members(self) -> list[Any]:
        """The members, in no particular order."""
    def __len__(self) -> int: ...
    def __contains__(self, member: object) -> bool: ...
    def add(self, member: Hashable, transport: Transport) -> None:
        """Add a member writing to `transport`; a member already present keeps its slot."""
    def discard(self, member: object) -> bool:
        """Remove a member; return whether it was there (safe to call from inside send)."""
    def send(self, data: bytes, limit: int) -> list[Any]:
        """Write `data` to every open member under `limit` buffered bytes; return the others."""
