"""Log-bucketed latency histogram (seconds), HDR-style, with fixed memory.

Layout: a bucket is the top 6 mantissa bits of the IEEE-754 double plus its exponent, i.e.
`bits(v) >> 46`, so 64 linear sub-buckets per power of two and no log() on the hot path. Slot 0
counts values below `lowest`, the last slot values above `highest`. See docs/HISTOGRAM.md.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_Check, PyFloat_CheckExact
from cpython.long cimport PyLong_Check
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Malloc
from libc.float cimport DBL_MAX, DBL_MIN
from libc.math cimport INFINITY, ceil, ldexp
from libc.stdint cimport uint8_t, uint64_t, int64_t
from libc.string cimport memcpy, memset

cimport cython

from array import array

import sys

from .errors import CorruptDataError, StreamcoreTypeError, StreamcoreValueError

cdef enum:
    SUB_BITS = 6            # 64 sub-buckets per octave: relative error <= 1/128 at the midpoint
    SUB_MASK = 63
    KEY_SHIFT = 52 - 6
    MAX_OCTAVES = 64        # highest/lowest <= 2**64 keeps memory fixed (<= 33 KiB)
    NOGIL_MIN = 4096        # below this a batch is cheaper under the GIL than with a scratch array
    HEADER_SIZE = 4 + 1 + 1 + 6 * 8

MAGIC = b"SCHG"
VERSION = 1


cdef inline uint64_t _key(double v) noexcept nogil:
    cdef uint64_t b
    memcpy(&b, &v, 8)
    return b >> KEY_SHIFT


cdef inline bint _bad(double v) noexcept nogil:
    # One comparison pair rejects NaN, negatives and both infinities.
    return not (v >= 0.0 and v <= DBL_MAX)


cdef inline uint64_t _rd_u64(const uint8_t* p) noexcept nogil:
    cdef uint64_t x = 0
    cdef int i
    for i in range(7, -1, -1):
        x = (x << 8) | p[i]
    return x


cdef inline double _rd_f64(const uint8_t* p) noexcept nogil:
    cdef uint64_t x = _rd_u64(p)
    cdef double d
    memcpy(&d, &x, 8)
    return d


cdef inline void _wr_u64(uint8_t* p, uint64_t x) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = <uint8_t>(x & 0xFF)
        x >>= 8


cdef inline void _wr_f64(uint8_t* p, double d) noexcept nogil:
    cdef uint64_t x
    memcpy(&x, &d, 8)
    _wr_u64(p, x)


cdef inline Py_ssize_t _wr_varint(uint8_t* p, uint64_t x) noexcept nogil:
    cdef Py_ssize_t n = 0
    while x >= 0x80:
        p[n] = <uint8_t>((x & 0x7F) | 0x80)
        x >>= 7
        n += 1
    p[n] = <uint8_t>x
    return n + 1


cdef inline Py_ssize_t _rd_varint(const uint8_t* p, Py_ssize_t pos, Py_ssize_t end,
                                  uint64_t* out) noexcept nogil:
    """Return the position after the varint, or -1 if truncated or longer than 64 bits."""
    cdef uint64_t x = 0
    cdef int shift = 0
    cdef uint8_t b
    while pos < end:
        b = p[pos]
        pos += 1
        if shift == 63 and b > 1:
            return -1
        x |= (<uint64_t>(b & 0x7F)) << shift
        if b < 0x80:
            out[0] = x
            return pos
        shift += 7
        if shift > 63:
            return -1
    return -1


cdef object _layout_error(double lowest, double highest):
    """Return why (lowest, highest) is not a valid layout, or None."""
    if not (lowest == lowest and highest == highest) or lowest > DBL_MAX or highest > DBL_MAX:
        return f"lowest and highest must be finite, got lowest={lowest!r}, highest={highest!r}"
    if not (0.0 < lowest < highest):
        return f"need 0 < lowest < highest, got lowest={lowest!r}, highest={highest!r}"
    if lowest < DBL_MIN:
        return f"lowest must be a normal float (>= {DBL_MIN!r}), got {lowest!r}"
    if highest / lowest > ldexp(1.0, MAX_OCTAVES):
        return (f"highest/lowest must be at most 2**{MAX_OCTAVES} to keep memory fixed, "
                f"got {highest / lowest:.3g}")
    return None


cdef bint _numpy_number(object value):
    # A numpy scalar exists only once numpy is imported, and the engine does not import it.
    np = sys.modules.get("numpy")
    return np is not None and isinstance(value, (np.floating, np.integer))


cdef double _as_float(object value, str what) except? -1.0:
    """Convert a real number to a double; StreamcoreTypeError for anything else."""
    if PyFloat_Check(value) or (PyLong_Check(value) and not isinstance(value, bool)) or \
            _numpy_number(value):
        try:
            return float(value)
        except OverflowError:
            raise StreamcoreValueError(f"{what} is too large for a float: {value!r}") from None
    raise StreamcoreTypeError(f"{what} must be a real number, got {type(value).__name__}")


cdef list _iterate(object items, str what):
    try:
        return list(items)
    except TypeError:
        raise StreamcoreTypeError(
            f"{what} must be an iterable of numbers, got {type(items).__name__}") from None


cdef class Histogram:
    """Log-bucketed histogram of non-negative values (seconds), relative error <= 1/128."""

    cdef uint64_t* _counts
    cdef Py_ssize_t _nslots      # underflow + buckets + overflow
    cdef uint64_t _base          # key of the bucket holding `lowest`
    cdef double _lowest
    cdef double _highest
    cdef uint64_t _count
    cdef double _sum
    cdef double _min             # +inf while empty
    cdef double _max             # -inf while empty

    def __cinit__(self, lowest=1e-6, highest=3600.0):
        cdef double lo = _as_float(lowest, "lowest")
        cdef double hi = _as_float(highest, "highest")
        err = _layout_error(lo, hi)
        if err is not None:
            raise StreamcoreValueError(err)
        self._lowest = lo
        self._highest = hi
        self._base = _key(lo)
        self._nslots = <Py_ssize_t>(_key(hi) - self._base) + 3
        self._counts = <uint64_t*>PyMem_Calloc(self._nslots, sizeof(uint64_t))
        if self._counts == NULL:
            raise MemoryError()
        self._clear_stats()

    def __dealloc__(self):
        PyMem_Free(self._counts)

    cdef inline void _clear_stats(self) noexcept nogil:
        self._count = 0
        self._sum = 0.0
        self._min = INFINITY
        self._max = -INFINITY

    cdef inline Py_ssize_t _slot(self, double v) noexcept nogil:
        if v < self._lowest:
            return 0
        if v > self._highest:
            return self._nslots - 1
        return <Py_ssize_t>(_key(v) - self._base) + 1

    cdef inline void _add(self, double v) noexcept nogil:
        self._counts[self._slot(v)] += 1
        self._count += 1
        self._sum += v
        if v < self._min:
            self._min = v
        if v > self._max:
            self._max = v

    cdef double _rep(self, Py_ssize_t slot) noexcept nogil:
        """The value reported for a slot: midpoint of the bucket within [lowest, highest],
        clamped to the exact [min, max]."""
        cdef double r, lo, hi
        cdef uint64_t key
        cdef int e
        if slot == 0:
            r = self._lowest
        elif slot == self._nslots - 1:
            r = self._max
        else:
            key = self._base + <uint64_t>(slot - 1)
            e = <int>(key >> SUB_BITS) - 1023 - SUB_BITS
            lo = ldexp(<double>((1 << SUB_BITS) + (key & SUB_MASK)), e)
            hi = ldexp(<double>((1 << SUB_BITS) + 1 + (key & SUB_MASK)), e)
            if lo < self._lowest:
                lo = self._lowest
            if hi > self._highest:
                hi = self._highest
            r = (lo + hi) * 0.5
        if r < self._min:
            r = self._min
        if r > self._max:
            r = self._max
        return r

    cdef object _bad_value_error(self, double v, str where):
        return StreamcoreValueError(
            f"{where} must be a finite, non-negative number of seconds, got {v!r}")

    # -- recording -------------------------------------------------------------------------

    @cython.always_allow_keywords(False)
    def record(self, value):
        """Record one value (seconds) in O(1)."""
        cdef double v
        if PyFloat_CheckExact(value):
            v = PyFloat_AS_DOUBLE(value)
        else:
            v = _as_float(value, "value")
        if _bad(v):
            raise self._bad_value_error(v, "value")
        self._add(v + 0.0)   # + 0.0 turns -0.0 into 0.0

    def record_many(self, values):
        """Record every value of a float64 buffer; records nothing if any value is bad."""
        cdef const double[::1] view
        if isinstance(values, (list, tuple)):
            try:
                values = array("d", values)   # unlike numpy, refuses None instead of making NaN
            except (TypeError, ValueError, OverflowError) as exc:
                raise StreamcoreTypeError(
                    f"record_many expects real numbers, got an element it cannot convert: {exc}"
                ) from None
        try:
            view = values
        except (TypeError, ValueError, BufferError) as exc:
            raise StreamcoreTypeError(
                "record_many expects a C-contiguous 1-D float64 buffer (or a list of floats), "
                f"got {type(values).__name__}: {exc}") from None
        cdef Py_ssize_t n = view.shape[0]
        cdef Py_ssize_t i, bad = -1
        if n == 0:
            return
        if n < NOGIL_MIN:
            for i in range(n):
                if _bad(view[i]):
                    bad = i
                    break
            if bad >= 0:
                raise self._bad_value_error(view[bad], f"values[{bad}]")
            for i in range(n):
                self._add(view[i] + 0.0)
            return
        # Large batch: accumulate into a scratch array with the GIL released, then commit with
        # the GIL held, so a bad value discards the batch and other threads never see half of it.
        cdef uint64_t* scratch = <uint64_t*>PyMem_Calloc(self._nslots, sizeof(uint64_t))
        if scratch == NULL:
            raise MemoryError()
        cdef double s = 0.0, mn = INFINITY, mx = -INFINITY, v
        cdef double lowest = self._lowest, highest = self._highest
        cdef uint64_t base = self._base
        cdef Py_ssize_t top = self._nslots - 1
        try:
            with nogil:
                for i in range(n):
                    v = view[i]
                    if _bad(v):
                        bad = i
                        break
                    v = v + 0.0
                    if v < lowest:
                        scratch[0] += 1
                    elif v > highest:
                        scratch[top] += 1
                    else:
                        scratch[<Py_ssize_t>(_key(v) - base) + 1] += 1
                    s += v
                    mn = v if v < mn else mn
                    mx = v if v > mx else mx
            if bad >= 0:
                raise self._bad_value_error(view[bad], f"values[{bad}]")
            for i in range(self._nslots):
                self._counts[i] += scratch[i]
            self._count += <uint64_t>n
            self._sum += s
            if mn < self._min:
                self._min = mn
            if mx > self._max:
                self._max = mx
        finally:
            PyMem_Free(scratch)

    def merge(self, other):
        """Add another histogram with the same layout into this one, in place."""
        if not isinstance(other, Histogram):
            raise StreamcoreTypeError(f"merge expects a Histogram, got {type(other).__name__}")
        cdef Histogram o = <Histogram>other
        if o._lowest != self._lowest or o._highest != self._highest:
            raise StreamcoreValueError(
                f"cannot merge histograms with different layouts: "
                f"({self._lowest!r}, {self._highest!r}) vs ({o._lowest!r}, {o._highest!r})")
        if o._count > <uint64_t>0xFFFFFFFFFFFFFFFF - self._count:
            raise StreamcoreValueError("merge would overflow the 64-bit count")
        cdef Py_ssize_t i
        for i in range(self._nslots):
            self._counts[i] += o._counts[i]
        self._count += o._count
        self._sum += o._sum
        if o._min < self._min:
            self._min = o._min
        if o._max > self._max:
            self._max = o._max

    def reset(self):
        """Forget every recorded value; keep the layout."""
        memset(self._counts, 0, self._nslots * sizeof(uint64_t))
        self._clear_stats()

    def copy(self):
        """Return an independent copy."""
        cdef Histogram h = Histogram(self._lowest, self._highest)
        memcpy(h._counts, self._counts, self._nslots * sizeof(uint64_t))
        h._count = self._count
        h._sum = self._sum
        h._min = self._min
        h._max = self._max
        return h

    # -- reading ---------------------------------------------------------------------------

    @property
    def count(self):
        """Number of recorded values."""
        return self._count

    @property
    def sum(self):
        """Sum of recorded values (exact float accumulation, not bucketed)."""
        return self._sum

    @property
    def min(self):
        """Exact smallest recorded value, 0.0 if empty."""
        return self._min if self._count else 0.0

    @property
    def max(self):
        """Exact largest recorded value, 0.0 if empty."""
        return self._max if self._count else 0.0

    @property
    def mean(self):
        """sum / count, 0.0 if empty."""
        return self._sum / <double>self._count if self._count else 0.0

    @property
    def nbytes(self):
        """Bytes held by the bucket counts (fixed by the layout)."""
        return self._nslots * <Py_ssize_t>sizeof(uint64_t)

    @property
    def lowest(self):
        """Smallest value resolved to 1/128; smaller ones go to the underflow bucket."""
        return self._lowest

    @property
    def highest(self):
        """Largest value resolved to 1/128; larger ones go to the overflow bucket."""
        return self._highest

    cdef double _check_q(self, object q) except? -1.0:
        cdef double x = _as_float(q, "q")
        if not (0.0 <= x <= 100.0):
            raise StreamcoreValueError(f"q must be in [0, 100], got {q!r}")
        return x

    cdef inline uint64_t _rank(self, double q) noexcept nogil:
        # Nearest rank ceil(q/100 * n), at least 1. A product within 1e-12 of an integer is that
        # integer: 99.9 * 3000 / 100 is 2997.0000000000005 in floats, and its rank is 2997.
        cdef double x = q * <double>self._count / 100.0
        cdef double r = ceil(x)
        if r - x > 1.0 - 1e-12 * x:
            r -= 1.0
        if r < 1.0:
            return 1
        if r >= <double>self._count:
            return self._count
        return <uint64_t>r

    @cython.always_allow_keywords(False)
    def percentile(self, q):
        """Return the nearest-rank q-th percentile (q in [0, 100]); 0.0 if empty."""
        cdef double x = self._check_q(q)
        if self._count == 0:
            return 0.0
        cdef uint64_t rank = self._rank(x), cum = 0
        cdef Py_ssize_t i
        if rank == 1:
            return self._min   # the extreme ranks are known exactly
        if rank == self._count:
            return self._max
        for i in range(self._nslots):
            cum += self._counts[i]
            if cum >= rank:
                return self._rep(i)
        return self._max  # unreachable: counts sum to count

    def percentiles(self, qs):
        """Return several percentiles in one pass over the buckets, in the order given."""
        cdef list qlist = [self._check_q(q) for q in _iterate(qs, "qs")]
        cdef Py_ssize_t m = len(qlist)
        out = [0.0] * m
        if self._count == 0 or m == 0:
            return out
        order = sorted(range(m), key=qlist.__getitem__)
        cdef uint64_t cum = 0, rank
        cdef Py_ssize_t i = 0, j
        for j in order:
            rank = self._rank(qlist[j])
            if rank == 1 or rank == self._count:
                out[j] = self._min if rank == 1 else self._max
                continue
            while i < self._nslots:
                if cum + self._counts[i] >= rank:
                    break
                cum += self._counts[i]
                i += 1
            out[j] = self._rep(i if i < self._nslots else self._nslots - 1)
        return out

    def cumulative_counts(self, edges):
        """For each ascending edge, count values whose bucket representative is <= edge."""
        cdef list e = [_as_float(x, "edge") for x in _iterate(edges, "edges")]
        cdef Py_ssize_t m = len(e), k
        for k in range(m):
            if e[k] != e[k]:
                raise StreamcoreValueError(f"edges[{k}] is NaN")
            if k and not (e[k] > e[k - 1]):
                raise StreamcoreValueError(
                    f"edges must be strictly increasing, got edges[{k - 1}]={e[k - 1]!r} "
                    f"then edges[{k}]={e[k]!r}")
        out = [0] * m
        cdef uint64_t cum = 0
        cdef Py_ssize_t i = 0
        cdef double edge
        for k in range(m):
            edge = e[k]
            while i < self._nslots and (self._counts[i] == 0 or self._rep(i) <= edge):
                cum += self._counts[i]
                i += 1
            out[k] = cum
        return out

    def buckets(self):
        """Return (upper bounds, counts) of the non-empty buckets, ascending."""
        cdef Py_ssize_t i, j = 0, nz = 0
        for i in range(self._nslots):
            if self._counts[i]:
                nz += 1
        import numpy as np

        uppers = np.empty(nz, dtype=np.float64)
        counts = np.empty(nz, dtype=np.uint64)
        cdef double[::1] u = uppers
        cdef uint64_t[::1] c = counts
        cdef uint64_t key
        cdef double hi
        for i in range(self._nslots):
            if not self._counts[i]:
                continue
            if i == 0:
                hi = self._lowest
            elif i == self._nslots - 1:
                hi = INFINITY
            else:
                key = self._base + <uint64_t>(i - 1)
                hi = ldexp(<double>((1 << SUB_BITS) + 1 + (key & SUB_MASK)),
                           <int>(key >> SUB_BITS) - 1023 - SUB_BITS)
                if hi > self._highest:
                    hi = self._highest
            u[j] = hi
            c[j] = self._counts[i]
            j += 1
        return uppers, counts

    # -- serialisation ---------------------------------------------------------------------

    def to_bytes(self):
        """Serialise to the versioned sparse blob described in docs/HISTOGRAM.md."""
        cdef Py_ssize_t cap = HEADER_SIZE + 10 + self._nslots * 20, pos, i, prev = -1, nz = 0
        cdef uint8_t* buf = <uint8_t*>PyMem_Malloc(cap)
        if buf == NULL:
            raise MemoryError()
        try:
            memcpy(buf, b"SCHG", 4)
            buf[4] = VERSION
            buf[5] = SUB_BITS
            _wr_f64(buf + 6, self._lowest)
            _wr_f64(buf + 14, self._highest)
            _wr_u64(buf + 22, self._count)
            _wr_f64(buf + 30, self._sum)
            _wr_f64(buf + 38, self._min if self._count else 0.0)
            _wr_f64(buf + 46, self._max if self._count else 0.0)
            for i in range(self._nslots):
                if self._counts[i]:
                    nz += 1
            pos = HEADER_SIZE + _wr_varint(buf + HEADER_SIZE, <uint64_t>nz)
            for i in range(self._nslots):
                if self._counts[i]:
                    pos += _wr_varint(buf + pos, <uint64_t>(i - prev - 1))
                    pos += _wr_varint(buf + pos, self._counts[i])
                    prev = i
            return PyBytes_FromStringAndSize(<char*>buf, pos)
        finally:
            PyMem_Free(buf)

    @classmethod
    def from_bytes(cls, data):
        """Decode a blob from to_bytes(); CorruptDataError names what is wrong."""
        cdef const uint8_t[::1] view
        try:
            view = data
        except (TypeError, ValueError, BufferError):
            raise StreamcoreTypeError(
                f"from_bytes expects bytes, got {type(data).__name__}") from None
        cdef Py_ssize_t n = view.shape[0]
        if n < HEADER_SIZE + 1:
            raise CorruptDataError(f"histogram blob truncated: {n} bytes, header needs "
                                   f"{HEADER_SIZE + 1}")
        cdef const uint8_t* p = &view[0]
        if bytes(view[:4]) != MAGIC:
            raise CorruptDataError(f"not a histogram blob: magic {bytes(view[:4])!r} != {MAGIC!r}")
        if p[4] != VERSION:
            raise CorruptDataError(f"unknown histogram blob version {p[4]} (this build reads "
                                   f"{VERSION})")
        if p[5] != SUB_BITS:
            raise CorruptDataError(f"unsupported sub-bucket bits {p[5]} (expected {SUB_BITS})")
        cdef double lowest = _rd_f64(p + 6), highest = _rd_f64(p + 14)
        err = _layout_error(lowest, highest)
        if err is not None:
            raise CorruptDataError(f"bad layout in histogram blob: {err}")
        cdef uint64_t count = _rd_u64(p + 22)
        cdef double s = _rd_f64(p + 30), mn = _rd_f64(p + 38), mx = _rd_f64(p + 46)
        if count == 0:
            if not (s == 0.0 and mn == 0.0 and mx == 0.0):
                raise CorruptDataError("empty histogram blob with non-zero sum/min/max")
        elif _bad(mn) or _bad(mx) or mn > mx or not (s >= 0.0):
            raise CorruptDataError(
                f"bad statistics in histogram blob: min={mn!r}, max={mx!r}, sum={s!r}")
        cdef Histogram h = Histogram(lowest, highest)
        cdef uint64_t nz, gap, c, total = 0
        cdef Py_ssize_t pos = _rd_varint(p, HEADER_SIZE, n, &nz), slot = -1, first = -1, k
        if pos < 0:
            raise CorruptDataError("histogram blob truncated in the bucket count")
        if nz > <uint64_t>h._nslots:
            raise CorruptDataError(f"histogram blob claims {nz} buckets, layout has {h._nslots}")
        for k in range(<Py_ssize_t>nz):
            pos = _rd_varint(p, pos, n, &gap)
            if pos < 0:
                raise CorruptDataError(f"histogram blob truncated at bucket entry {k}")
            pos = _rd_varint(p, pos, n, &c)
            if pos < 0:
                raise CorruptDataError(f"histogram blob truncated at bucket entry {k}")
            if gap >= <uint64_t>(h._nslots - slot - 1):
                raise CorruptDataError(f"histogram blob bucket entry {k} is past the last bucket")
            slot += <Py_ssize_t>gap + 1
            if c == 0:
                raise CorruptDataError(f"histogram blob bucket entry {k} has a zero count")
            if c > <uint64_t>0xFFFFFFFFFFFFFFFF - total:
                raise CorruptDataError("histogram blob bucket counts overflow 64 bits")
            total += c
            h._counts[slot] = c
            if first < 0:
                first = slot
        if pos != n:
            raise CorruptDataError(f"histogram blob has {n - pos} trailing bytes")
        if total != count:
            raise CorruptDataError(
                f"histogram blob bucket counts sum to {total}, header says count={count}")
        if count and (h._slot(mn) != first or h._slot(mx) != slot):
            raise CorruptDataError("histogram blob min/max do not fall in its first/last buckets")
        h._count = count
        if count:
            h._sum = s
            h._min = mn
            h._max = mx
        return h

    def __reduce__(self):
        return (Histogram.from_bytes, (self.to_bytes(),))

    def __eq__(self, other):
        if not isinstance(other, Histogram):
            return NotImplemented
        cdef Histogram o = <Histogram>other
        if (o._lowest != self._lowest or o._highest != self._highest or o._count != self._count
                or (self._count and (o._min != self._min or o._max != self._max))):
            return False
        cdef Py_ssize_t i
        for i in range(self._nslots):
            if o._counts[i] != self._counts[i]:
                return False
        return True

    __hash__ = None

    def __repr__(self):
        return (f"Histogram(lowest={self._lowest!r}, highest={self._highest!r}, "
                f"count={self._count})")
