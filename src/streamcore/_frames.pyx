"""Frames: one flushed window of encoded JSON payloads -> one wire frame, built once per codec.

The layout is specified in docs/PROTOCOL.md and decoded by streamcore.protocol; the readable
twin of this module is streamcore.reference.frames, which it must match byte for byte.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.sequence cimport PySequence_Fast, PySequence_Fast_GET_SIZE, PySequence_Fast_ITEMS
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy

import zlib

import zstandard

from .errors import StreamcoreError, StreamcoreTypeError, StreamcoreValueError
from .protocol import HEADER_SIZE as _PY_HEADER_SIZE
from .protocol import Codec  # re-exported: `from streamcore._frames import Codec` keeps working

cdef extern from *:
    # The bytes macros on a borrowed PyObject*: plain C, no reference counting in the loops.
    """
    static inline int sc_is_bytes(PyObject *o) { return PyBytes_Check(o); }
    static inline char *sc_bytes_ptr(PyObject *o) { return PyBytes_AS_STRING(o); }
    static inline Py_ssize_t sc_bytes_len(PyObject *o) { return PyBytes_GET_SIZE(o); }
    """
    bint _is_bytes "sc_is_bytes"(PyObject *o) noexcept nogil
    char *_bytes_ptr "sc_bytes_ptr"(PyObject *o) noexcept nogil
    Py_ssize_t _bytes_len "sc_bytes_len"(PyObject *o) noexcept nogil

cdef extern from "Python.h":
    object PyMemoryView_FromMemory(char *mem, Py_ssize_t size, int flags)
    int PyBUF_READ

cdef enum:
    _HEADER_SIZE = 32
cdef Py_ssize_t _MAX_U32 = 0xFFFFFFFF

assert _PY_HEADER_SIZE == _HEADER_SIZE, "protocol.HEADER_SIZE and _frames disagree"

cdef object _zlib_compress = zlib.compress
cdef tuple _CODECS = (Codec.NONE, Codec.ZSTD, Codec.GZIP)
cdef object _MAX_SEQ = (1 << 64) - 1


cdef inline void _put_u32(unsigned char *p, uint32_t v) noexcept nogil:
    p[0] = <unsigned char>(v >> 24)
    p[1] = <unsigned char>(v >> 16)
    p[2] = <unsigned char>(v >> 8)
    p[3] = <unsigned char>v


cdef inline void _put_u64(unsigned char *p, uint64_t v) noexcept nogil:
    _put_u32(p, <uint32_t>(v >> 32))
    _put_u32(p + 4, <uint32_t>v)


cdef inline void _write_header(
    unsigned char *p, uint8_t codec, uint8_t kind, uint64_t seq, uint64_t first_seq,
    uint32_t count, uint32_t raw_len,
) noexcept nogil:
    p[0] = 0x53  # "S"
    p[1] = 0x43  # "C"
    p[2] = 2     # version
    p[3] = codec
    p[4] = kind
    p[5] = 0     # flags
    p[6] = 0     # reserved u16
    p[7] = 0
    _put_u64(p + 8, seq)
    _put_u64(p + 16, first_seq)
    _put_u32(p + 24, count)
    _put_u32(p + 28, raw_len)


cdef inline Py_ssize_t _body_length(
    PyObject **items, Py_ssize_t n, Py_ssize_t *bad, int *why
) noexcept nogil:
    """Sum of "[" + payloads joined by "," + "]", or -1 with the first bad item and why."""
    cdef Py_ssize_t i, size, total = n + 1  # n - 1 commas and two brackets
    for i in range(n):
        if not _is_bytes(items[i]):
            bad[0] = i
            why[0] = 1
            return -1
        size = _bytes_len(items[i])
        if size == 0:
            bad[0] = i
            why[0] = 2
            return -1
        total += size
    return total


cdef inline void _join(PyObject **items, Py_ssize_t n, char *out) noexcept nogil:
    """Write b"[" + b",".join(items) + b"]" into out (sized by _body_length)."""
    cdef Py_ssize_t i, size
    out[0] = 0x5B  # "["
    out += 1
    for i in range(n):
        if i:
            out[0] = 0x2C  # ","
            out += 1
        size = _bytes_len(items[i])
        memcpy(out, _bytes_ptr(items[i]), size)
        out += size
    out[0] = 0x5D  # "]"


cdef int _check_int(str name, object value) except -1:
    if type(value) is bool or not isinstance(value, int):
        raise StreamcoreTypeError(f"{name} must be an int, not {type(value).__name__}")
    return 0


cdef int _check_codec(object codec) except -1:
    _check_int("codec", codec)
    if not 0 <= codec <= 2:
        raise StreamcoreValueError(
            f"unknown codec {int(codec)}: expected 0 (none), 1 (zstd), 2 (gzip)"
        )
    return <int>codec


cdef class FrameEncoder:
    """Build wire frames from windows of already-encoded JSON payloads."""

    cdef readonly Py_ssize_t threshold
    cdef readonly int zstd_level
    cdef readonly int gzip_level
    cdef readonly uint64_t frames
    cdef readonly uint64_t compressed_frames
    cdef readonly uint64_t raw_bytes
    cdef readonly uint64_t wire_bytes
    cdef object _zstd_compress
    cdef char *_buf          # scratch body for compression, reused across frames
    cdef Py_ssize_t _cap
    cdef bint _busy          # the scratch buffer and ZstdCompressor are not shareable

    def __cinit__(self, *args, **kwargs):
        self._cap = 16384
        self._buf = <char *>PyMem_Malloc(self._cap)
        if self._buf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        PyMem_Free(self._buf)

    def __init__(self, threshold=1024, zstd_level=1, gzip_level=6):
        _check_int("threshold", threshold)
        if not 0 <= threshold <= _MAX_U32:
            raise StreamcoreValueError(f"threshold must be in 0..{_MAX_U32}, got {threshold}")
        _check_int("zstd_level", zstd_level)
        if not 1 <= zstd_level <= 22:
            raise StreamcoreValueError(f"zstd_level must be in 1..22, got {zstd_level}")
        _check_int("gzip_level", gzip_level)
        if not 1 <= gzip_level <= 9:
            raise StreamcoreValueError(f"gzip_level must be in 1..9, got {gzip_level}")
        self.threshold = threshold
        self.zstd_level = zstd_level
        self.gzip_level = gzip_level
        self._zstd_compress = zstandard.ZstdCompressor(level=zstd_level).compress

    @property
    def bytes_saved(self):
        """Bytes compression kept off the wire: raw_bytes - wire_bytes."""
        return self.raw_bytes - self.wire_bytes

    def __repr__(self):
        return (
            f"FrameEncoder(threshold={self.threshold}, zstd_level={self.zstd_level}, "
            f"gzip_level={self.gzip_level})"
        )

    cdef object _items(self, object seq, object payloads, object kind, object first_seq):
        """Validate the window's scalars and return payloads as a list or tuple."""
        _check_int("seq", seq)
        if seq < 0 or seq > _MAX_SEQ:
            raise StreamcoreValueError(f"seq must fit an unsigned 64-bit integer, got {seq}")
        _check_int("first_seq", first_seq)
        if first_seq < 0 or first_seq > seq:
            raise StreamcoreValueError(
                f"first_seq must be in 0..seq ({seq}), got {first_seq}"
            )
        _check_int("kind", kind)
        if not 0 <= kind <= 1:
            raise StreamcoreValueError(
                f"unknown frame kind {int(kind)}: expected 0 (events), 1 (control)"
            )
        if isinstance(payloads, (bytes, bytearray, memoryview, str)):
            raise StreamcoreTypeError(
                f"payloads must be a sequence of bytes, not a single {type(payloads).__name__}"
            )
        try:
            items = PySequence_Fast(payloads, b"payloads must be a sequence of bytes")
        except TypeError:
            raise StreamcoreTypeError(
                f"payloads must be a sequence of bytes, not {type(payloads).__name__}"
            ) from None
        cdef Py_ssize_t n = PySequence_Fast_GET_SIZE(items)
        if n == 0:
            raise StreamcoreValueError("empty window: a frame needs at least one payload")
        if n > _MAX_U32:
            raise StreamcoreValueError(f"too many payloads for one frame: {n}")
        return items

    cdef Py_ssize_t _measure(self, object items) except -1:
        cdef Py_ssize_t bad = 0
        cdef int why = 0
        cdef Py_ssize_t n = _body_length(
            PySequence_Fast_ITEMS(items), PySequence_Fast_GET_SIZE(items), &bad, &why
        )
        if n < 0:
            if why == 1:
                raise StreamcoreTypeError(
                    f"payload {bad} is {type(items[bad]).__name__}, expected bytes"
                )
            raise StreamcoreValueError(
                f"payload {bad} is empty: each payload must be a JSON value"
            )
        if n > _MAX_U32:
            raise StreamcoreValueError(f"frame body of {n} bytes does not fit 32 bits")
        return n

    cdef int _reserve(self, Py_ssize_t size) except -1:
        cdef char *grown
        if size <= self._cap:
            return 0
        grown = <char *>PyMem_Realloc(self._buf, size)
        if grown == NULL:
            raise MemoryError()
        self._buf = grown
        self._cap = size
        return 0

    cdef bytes _raw_frame(
        self, uint64_t seq, uint64_t first, object items, uint32_t count, Py_ssize_t n,
        uint8_t kind, bint from_scratch,
    ):
        """Header + uncompressed body in one allocation, copied from the payloads or scratch."""
        cdef bytes frame = PyBytes_FromStringAndSize(NULL, _HEADER_SIZE + n)
        cdef char *p = PyBytes_AS_STRING(frame)
        _write_header(<unsigned char *>p, 0, kind, seq, first, count, <uint32_t>n)
        if from_scratch:
            memcpy(p + _HEADER_SIZE, self._buf, n)
        else:
            _join(PySequence_Fast_ITEMS(items), count, p + _HEADER_SIZE)
        self.frames += 1
        self.raw_bytes += _HEADER_SIZE + n
        self.wire_bytes += _HEADER_SIZE + n
        return frame

    cdef object _compressed_frame(
        self, uint64_t seq, uint64_t first, uint32_t count, Py_ssize_t n, uint8_t kind, int codec
    ):
        """Compress the scratch body; None if that does not make it smaller."""
        view = PyMemoryView_FromMemory(self._buf, n, PyBUF_READ)
        try:
            if codec == 1:
                packed = self._zstd_compress(view)
            else:
                packed = _zlib_compress(view, self.gzip_level, 31)  # 31 = gzip wrapper
        finally:
            view.release()
        cdef Py_ssize_t size = PyBytes_GET_SIZE(packed)
        if size >= n:
            return None
        cdef bytes frame = PyBytes_FromStringAndSize(NULL, _HEADER_SIZE + size)
        cdef char *p = PyBytes_AS_STRING(frame)
        _write_header(<unsigned char *>p, <uint8_t>codec, kind, seq, first, count, <uint32_t>n)
        memcpy(p + _HEADER_SIZE, PyBytes_AS_STRING(packed), size)
        self.frames += 1
        self.compressed_frames += 1
        self.raw_bytes += _HEADER_SIZE + n
        self.wire_bytes += _HEADER_SIZE + size
        return frame

    cdef void _fill_scratch(self, object items, Py_ssize_t n):
        # The GIL stays held: the copy is ~1 us for a 15 KB window, cheaper than a release
        # and reacquire, and it keeps another thread from mutating the list under us.
        _join(PySequence_Fast_ITEMS(items), PySequence_Fast_GET_SIZE(items), self._buf)

    cdef int _enter(self) except -1:
        if self._busy:
            raise StreamcoreError("FrameEncoder is already encoding in another thread")
        self._busy = True
        return 0

    def encode(self, seq, payloads, codec=Codec.ZSTD, kind=0, first_seq=None):
        """Build one frame: compressed with `codec` if the body is above the threshold."""
        cdef int c = _check_codec(codec)
        if first_seq is None:
            first_seq = seq
        items = self._items(seq, payloads, kind, first_seq)
        cdef uint64_t useq = seq
        cdef uint64_t ufirst = first_seq
        cdef uint8_t ukind = kind
        cdef Py_ssize_t n = self._measure(items)
        cdef uint32_t count = <uint32_t>PySequence_Fast_GET_SIZE(items)
        if c == 0 or n <= self.threshold:
            return self._raw_frame(useq, ufirst, items, count, n, ukind, False)
        self._enter()
        try:
            self._reserve(n)
            self._fill_scratch(items, n)
            frame = self._compressed_frame(useq, ufirst, count, n, ukind, c)
            if frame is None:
                frame = self._raw_frame(useq, ufirst, items, count, n, ukind, True)
            return frame
        finally:
            self._busy = False

    def encode_many(self, seq, payloads, codecs, kind=0, first_seq=None):
        """Build the frame once per distinct codec; codecs that end up raw share one frame."""
        if isinstance(codecs, (str, bytes)):
            raise StreamcoreTypeError("codecs must be an iterable of Codec, not a single str")
        cdef list wanted = [_check_codec(each) for each in codecs]
        if first_seq is None:
            first_seq = seq
        items = self._items(seq, payloads, kind, first_seq)
        cdef uint64_t useq = seq
        cdef uint64_t ufirst = first_seq
        cdef uint8_t ukind = kind
        cdef Py_ssize_t n = self._measure(items)
        cdef uint32_t count = <uint32_t>PySequence_Fast_GET_SIZE(items)
        cdef dict out = {}
        cdef bint filled = False
        cdef int c
        raw = None
        self._enter()
        try:
            for c in wanted:
                if _CODECS[c] in out:
                    continue
                frame = None
                if c != 0 and n > self.threshold:
                    if not filled:
                        self._reserve(n)
                        self._fill_scratch(items, n)
                        filled = True
                    frame = self._compressed_frame(useq, ufirst, count, n, ukind, c)
                if frame is None:
                    if raw is None:
                        raw = self._raw_frame(useq, ufirst, items, count, n, ukind, filled)
                    frame = raw
                out[_CODECS[c]] = frame
            return out
        finally:
            self._busy = False


__all__ = ["Codec", "FrameEncoder"]
