"""Frames: one flushed window of encoded JSON payloads -> one wire frame, built once per codec."""

from collections.abc import Iterable, Sequence

from typing_extensions import disjoint_base

from .protocol import Codec as Codec

@disjoint_base  # a cdef class: it cannot share a subclass with another compiled base
class FrameEncoder:
    """Build wire frames (docs/PROTOCOL.md) from windows of already-encoded JSON payloads."""

    @property
    def threshold(self) -> int:
        """Bodies longer than this many bytes are compressed; shorter ones go out raw."""
    @property
    def zstd_level(self) -> int:
        """zstd compression level, 1..22."""
    @property
    def gzip_level(self) -> int:
        """gzip (zlib) compression level, 1..9."""
    @property
    def frames(self) -> int:
        """Frames built so far (a raw frame shared by several codecs counts once)."""
    @property
    def compressed_frames(self) -> int:
        """Frames whose body went out compressed."""
    @property
    def raw_bytes(self) -> int:
        """Total size of the frames built had none been compressed (header included)."""
    @property
    def wire_bytes(self) -> int:
        """Total size of the frames built as they go on the wire (header included)."""
    @property
    def bytes_saved(self) -> int:
        """Bytes compression kept off the wire: raw_bytes - wire_bytes (never negative)."""
    def __init__(self, threshold: int = 1024, zstd_level: int = 1, gzip_level: int = 6) -> None:
        """Validate the settings (threshold 0..2**32-1, zstd 1..22, gzip 1..9)."""
    def encode(
        self,
        seq: int,
        payloads: Sequence[bytes],
        codec: Codec | int = ...,
        kind: int = 0,
        first_seq: int | None = None,
    ) -> bytes:
        """Build one frame covering positions first_seq..seq (first_seq defaults to seq),
        compressed with `codec` when the body exceeds the threshold."""
    def encode_many(
        self,
        seq: int,
        payloads: Sequence[bytes],
        codecs: Iterable[Codec | int],
        kind: int = 0,
        first_seq: int | None = None,
    ) -> dict[Codec, bytes]:
        """Build the frame once per distinct codec; codecs that end up raw share one frame."""

__all__ = ["Codec", "FrameEncoder"]
