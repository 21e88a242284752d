"""Batch windows on a grid: when each channel's events are flushed as one frame.

The rule is in docs/WINDOWS.md; reference/window.py is its readable specification with exactly the
same arithmetic. Time always comes in as `now_ms` (a monotonic clock in milliseconds) and flush cost
as `cost_ms`: nothing here reads a clock.
"""

import numbers
import operator


cimport cython
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.math cimport exp, expm1, floor, isfinite, log1p
from libc.stdint cimport INT64_MAX, int32_t, int64_t, uint64_t
from libc.string cimport memcpy, memset

from .errors import StreamcoreError, StreamcoreTypeError, StreamcoreValueError

_DEFAULT_MIN_MS = 30.0
_DEFAULT_MAX_MS = 150.0
_DEFAULT_QUIET_RATE = 10.0
_DEFAULT_ALPHA = 0.9
_DEFAULT_FLUSH_BUDGET = 0.25

__all__ = ["AdaptiveWindow", "WindowScheduler"]

# Slots are int32 with 0 meaning "empty", so at most 2**30 channels (the table holds 4x that).
cdef int64_t MAX_CHANNELS = 1 << 30

# The shared length moves only when its target is more than 10% away (or at a bound): measured
# flush cost is noisy, and every move re-phases the grid, costing each busy channel one short window.
cdef double DEAD_BAND = 1.1

# A flush's cost is spread over at least this much wall time (1 ns): over a subnormal elapsed
# time the sample is infinite while its weight is 0, and 0 * inf made the load NaN for good.
cdef double MIN_ELAPSED_MS = 1e-6

# 2**64 / golden ratio: Fibonacci hashing spreads consecutive ids as evenly as n points can be
cdef uint64_t GOLDEN = <uint64_t>0x9E3779B97F4A7C15


# ---------------------------------------------------------------------------------------------
# The rule, shared by AdaptiveWindow and WindowScheduler


cdef struct Rule:
    double min_ms
    double max_ms
    double quiet_rate
    double alpha
    double budget        # flush CPU per wall time the shared length aims at (1.0 = one core)
    double k             # decay per ms: an EWMA keeps (1 - alpha) of its value per second


cdef struct FlushLoad:
    double load          # EWMA of flush CPU ms per wall ms
    double work_ms       # EWMA of load * length_ms: flush CPU ms per window period
    double length_ms     # the shared window length of channels above quiet_rate


cdef inline double rule_length(const Rule* r, double rate, double shared_ms) noexcept nogil:
    return r.min_ms if rate <= r.quiet_rate else shared_ms


cdef inline double rule_decay(const Rule* r, double rate, double idle_ms) noexcept nogil:
    if idle_ms <= 0.0:
        return rate
    return rate * exp(-r.k * idle_ms)


cdef inline double rule_update(const Rule* r, double rate, int64_t events,
                               double elapsed_ms) noexcept nogil:
    cdef double w
    if elapsed_ms <= 0.0:
        return rate
    # time-weighted: a window of dt ms gets weight 1 - (1 - alpha) ** (dt / 1000)
    w = -expm1(-r.k * elapsed_ms)
    return rate + w * (<double>events * 1000.0 / elapsed_ms - rate)


cdef void flush_update(const Rule* r, FlushLoad* f, double cost_ms,
                       double elapsed_ms) noexcept nogil:
    # cost_ms of flush work spread over elapsed_ms > 0 of wall time
    cdef double w, sample, target
    cdef double cur = f.length_ms
    if elapsed_ms < MIN_ELAPSED_MS:
        elapsed_ms = MIN_ELAPSED_MS
    w = -expm1(-r.k * elapsed_ms)
    sample = cost_ms / elapsed_ms
    f.load = f.load + w * (sample - f.load)
    # work per period barely depends on the period, so smoothing it does not feed back on L
    f.work_ms = f.work_ms + w * (sample * cur - f.work_ms)
    target = f.work_ms / r.budget
    if target < r.min_ms:
        target = r.min_ms
    elif target > r.max_ms:
        target = r.max_ms
    if (target == r.min_ms or target == r.max_ms or target > cur * DEAD_BAND
            or target * DEAD_BAND < cur):
        f.length_ms = target


cdef inline double grid_deadline(int64_t key, double length, double now) noexcept nogil:
    # the first point of phase + k * length strictly after now
    cdef double phase = (<double>((<uint64_t>key * GOLDEN) >> 11) * 1.1102230246251565e-16) * length
    cdef double d = phase + (floor((now - phase) / length) + 1.0) * length
    # the quotient can round across an integer: put d back in (now, now + length]
    if d <= now:
        d = d + length
    elif d - length > now:
        d = d - length
    return d


cdef double _real(object x, str name) except? -1.0:
    cdef double v
    if type(x) is float:
        v = <double>x
    elif type(x) is int or (isinstance(x, numbers.Real) and not isinstance(x, bool)):
        try:
            v = float(x)
        except OverflowError:
            raise StreamcoreValueError(f"{name} must be finite, got {x!r}") from None
    else:
        raise StreamcoreTypeError(f"{name} must be a real number, got {type(x).__name__}")
    if not isfinite(v):
        raise StreamcoreValueError(f"{name} must be finite, got {v!r}")
    return v


cdef double _cost(object x) except? -1.0:
    cdef double v = _real(x, "cost_ms")
    if v < 0.0:
        raise StreamcoreValueError(f"cost_ms must be >= 0, got {v!r}")
    return v


cdef int64_t _int64(object x, str name) except? -1:
    if type(x) is not int:
        if isinstance(x, (bool, float)) or not hasattr(type(x), "__index__"):
            raise StreamcoreTypeError(f"{name} must be an integer, got {type(x).__name__}")
        try:
            x = operator.index(x)
        except TypeError:
            raise StreamcoreTypeError(
                f"{name} must be an integer, got {type(x).__name__}") from None
    if not (-9223372036854775808 <= x <= 9223372036854775807):
        raise StreamcoreValueError(f"{name} must fit in int64, got {x}")
    return <int64_t>x


cdef int64_t _count(object x, str name) except? -1:
    cdef int64_t v = _int64(x, name)
    if v < 0:
        raise StreamcoreValueError(f"{name} must be >= 0, got {v}")
    return v


cdef int _init_rule(Rule* r, FlushLoad* f, object min_ms, object max_ms, object quiet_rate,
                    object alpha, object flush_budget) except -1:
    cdef double lo = _real(min_ms, "min_ms")
    cdef double hi = _real(max_ms, "max_ms")
    cdef double quiet = _real(quiet_rate, "quiet_rate")
    cdef double a = _real(alpha, "alpha")
    cdef double b = _real(flush_budget, "flush_budget")
    if not (0.0 < lo <= hi):
        raise StreamcoreValueError(f"need 0 < min_ms <= max_ms, got min_ms={lo!r}, max_ms={hi!r}")
    if not (0.0 < quiet):
        raise StreamcoreValueError(f"need 0 < quiet_rate, got quiet_rate={quiet!r}")
    if not (0.0 < a < 1.0):
        raise StreamcoreValueError(f"need 0 < alpha < 1, got alpha={a!r}")
    if not (0.0 < b <= 1.0):
        raise StreamcoreValueError(f"need 0 < flush_budget <= 1, got flush_budget={b!r}")
    r.min_ms = lo
    r.max_ms = hi
    r.quiet_rate = quiet
    r.alpha = a
    r.budget = b
    r.k = -log1p(-a) / 1000.0
    if not (r.k > 0.0):  # alpha so small that (1 - alpha) rounds to 1: the EWMA would never move
        raise StreamcoreValueError(f"alpha is too small to move the rate, got alpha={a!r}")
    f.load = 0.0
    f.work_ms = 0.0
    f.length_ms = lo
    return 0


cdef class AdaptiveWindow:
    """The length rule for one channel: min_ms while quiet, else the length its flush load buys."""

    cdef Rule _rule
    cdef FlushLoad _flush
    cdef double _rate

    def __init__(self, min_ms=_DEFAULT_MIN_MS, max_ms=_DEFAULT_MAX_MS, *,
                 quiet_rate=_DEFAULT_QUIET_RATE, alpha=_DEFAULT_ALPHA,
                 flush_budget=_DEFAULT_FLUSH_BUDGET):
        _init_rule(&self._rule, &self._flush, min_ms, max_ms, quiet_rate, alpha, flush_budget)
        self._rate = 0.0

    @property
    def length_ms(self):
        """Length of the next window, in ms."""
        return rule_length(&self._rule, self._rate, self._flush.length_ms)

    @property
    def rate(self):
        """EWMA of the event rate, in events per second."""
        return self._rate

    @property
    def load(self):
        """EWMA of the flush load: flush CPU ms per wall ms (1.0 is one core)."""
        return self._flush.load

    def wake(self, idle_ms):
        """Decay the rate by an idle gap (as the channel wakes) and return the new window length."""
        cdef double idle = _real(idle_ms, "idle_ms")
        if idle < 0.0:
            raise StreamcoreValueError(f"idle_ms must be >= 0, got {idle!r}")
        self._rate = rule_decay(&self._rule, self._rate, idle)
        return self.length_ms

    def observe(self, events, elapsed_ms, idle_ms=0.0):
        """Update the rate after a window (after idle_ms of silence); return the next length."""
        cdef int64_t n = _count(events, "events")
        cdef double elapsed = _real(elapsed_ms, "elapsed_ms")
        cdef double idle = _real(idle_ms, "idle_ms")
        if elapsed <= 0.0:
            raise StreamcoreValueError(f"elapsed_ms must be > 0, got {elapsed!r}")
        if idle < 0.0:
            raise StreamcoreValueError(f"idle_ms must be >= 0, got {idle!r}")
        self._rate = rule_decay(&self._rule, self._rate, idle)
        self._rate = rule_update(&self._rule, self._rate, n, elapsed)
        return self.length_ms

    def observe_flush(self, cost_ms, elapsed_ms):
        """Count cost_ms of flush CPU spent over the last elapsed_ms; return the next length."""
        cdef double cost = _cost(cost_ms)
        cdef double elapsed = _real(elapsed_ms, "elapsed_ms")
        if elapsed <= 0.0:
            raise StreamcoreValueError(f"elapsed_ms must be > 0, got {elapsed!r}")
        flush_update(&self._rule, &self._flush, cost, elapsed)
        return self.length_ms

    def __repr__(self):
        return (f"AdaptiveWindow(length_ms={self.length_ms!r}, rate={self._rate!r}, "
                f"load={self._flush.load!r}, min_ms={self._rule.min_ms!r}, "
                f"max_ms={self._rule.max_ms!r})")


# ---------------------------------------------------------------------------------------------
# Many channels: a dense array of channel states, an open-addressing index over it, and a binary
# min-heap of the deadlines of the active ones. Idle channels live only in the array and the index,
# so due() never looks at them.


cdef struct Channel:
    int64_t id
    int64_t events       # events counted in the open window; 0 when idle
    double rate          # EWMA, events/s
    double length_ms     # grid period of the open window, or (idle) the one set at its close
    double t_ms          # when the window opened (active) or last closed (idle)
    double last_ms       # deadline of its last closed window (-inf before the first)
    int32_t heap_pos     # -1 when idle


cdef struct HeapEntry:
    double deadline
    int64_t id           # tie-break, so equal deadlines come out in channel order
    int32_t slot


cdef inline uint64_t _hash(int64_t key) noexcept nogil:
    # splitmix64 finaliser: consecutive org ids must not cluster under linear probing
    cdef uint64_t z = <uint64_t>key + <uint64_t>0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * <uint64_t>0x94D049BB133111EB
    return z ^ (z >> 31)


cdef inline bint _before(const HeapEntry* a, const HeapEntry* b) noexcept nogil:
    return a.deadline < b.deadline or (a.deadline == b.deadline and a.id < b.id)


@cython.final  # direct (inlinable) calls to the cdef methods instead of a vtable
cdef class WindowScheduler:
    """Grid windows for many channels keyed by int64 id; flushing costs O(active channels)."""

    cdef Rule _rule
    cdef Channel* _chans
    cdef int64_t _n            # known channels
    cdef int64_t _cap
    cdef int32_t* _table       # slot + 1, 0 = empty; capacity 4 * _cap keeps the load <= 1/4
    cdef uint64_t _mask
    cdef HeapEntry* _heap
    cdef int64_t* _scratch     # due() output, as large as the heap
    cdef int64_t _n_active
    cdef int64_t _heap_cap
    cdef double _now
    cdef int64_t _opened
    cdef int64_t _closed
    cdef bint _busy            # set while touch_many runs without the GIL
    cdef FlushLoad _flush
    cdef double _t_load        # end of the last span the load has seen (first now_ms at start)
    cdef double _pending_ms    # flush cost not yet spread over a span (same-ms observations)

    def __cinit__(self, *args, **kwargs):
        self._cap = 16
        self._heap_cap = 16
        self._mask = 4 * self._cap - 1
        self._chans = <Channel*>PyMem_Malloc(self._cap * sizeof(Channel))
        self._table = <int32_t*>PyMem_Malloc(4 * self._cap * sizeof(int32_t))
        self._heap = <HeapEntry*>PyMem_Malloc(self._heap_cap * sizeof(HeapEntry))
        self._scratch = <int64_t*>PyMem_Malloc(self._heap_cap * sizeof(int64_t))
        if not (self._chans and self._table and self._heap and self._scratch):
            raise MemoryError()
        memset(self._table, 0, 4 * self._cap * sizeof(int32_t))
        self._now = -1.0 / 0.0

    def __dealloc__(self):
        PyMem_Free(self._chans)
        PyMem_Free(self._table)
        PyMem_Free(self._heap)
        PyMem_Free(self._scratch)

    def __init__(self, min_ms=_DEFAULT_MIN_MS, max_ms=_DEFAULT_MAX_MS, *,
                 quiet_rate=_DEFAULT_QUIET_RATE, alpha=_DEFAULT_ALPHA,
                 flush_budget=_DEFAULT_FLUSH_BUDGET):
        _init_rule(&self._rule, &self._flush, min_ms, max_ms, quiet_rate, alpha, flush_budget)

    # -- memory ---------------------------------------------------------------------------------

    cdef int _grow_channels(self) except -1:
        cdef int64_t cap = self._cap * 2
        cdef int64_t i
        cdef uint64_t h, mask
        cdef int32_t* table
        cdef Channel* chans
        if cap > MAX_CHANNELS:
            raise StreamcoreError(f"WindowScheduler holds at most {MAX_CHANNELS} channels")
        chans = <Channel*>PyMem_Realloc(self._chans, cap * sizeof(Channel))
        if chans == NULL:
            raise MemoryError()
        self._chans = chans
        table = <int32_t*>PyMem_Malloc(4 * cap * sizeof(int32_t))
        if table == NULL:
            raise MemoryError()
        memset(table, 0, 4 * cap * sizeof(int32_t))
        mask = <uint64_t>(4 * cap - 1)
        for i in range(self._n):
            h = _hash(chans[i].id) & mask
            while table[h] != 0:
                h = (h + 1) & mask
            table[h] = <int32_t>(i + 1)
        PyMem_Free(self._table)
        self._table = table
        self._mask = mask
        self._cap = cap
        return 0

    cdef int _grow_heap(self) except -1:
        cdef int64_t cap = self._heap_cap * 2
        cdef HeapEntry* heap = <HeapEntry*>PyMem_Realloc(self._heap, cap * sizeof(HeapEntry))
        if heap == NULL:
            raise MemoryError()
        self._heap = heap
        cdef int64_t* scratch = <int64_t*>PyMem_Realloc(self._scratch, cap * sizeof(int64_t))
        if scratch == NULL:
            raise MemoryError()
        self._scratch = scratch
        self._heap_cap = cap
        return 0

    cdef int _reserve_one(self) except -1:
        if self._n == self._cap:
            self._grow_channels()
        if self._n_active == self._heap_cap:
            self._grow_heap()
        return 0

    # -- index ----------------------------------------------------------------------------------

    cdef inline int64_t _find_pos(self, int64_t key) noexcept nogil:
        # the table position holding key, or the empty one where it would go
        cdef uint64_t h = _hash(key) & self._mask
        cdef int32_t s
        while True:
            s = self._table[h]
            if s == 0 or self._chans[s - 1].id == key:
                return <int64_t>h
            h = (h + 1) & self._mask

    cdef inline int64_t _slot(self, int64_t key) noexcept nogil:
        return <int64_t>self._table[self._find_pos(key)] - 1

    cdef void _table_delete(self, uint64_t i) noexcept nogil:
        # backward-shift deletion keeps every probe chain unbroken without tombstones
        cdef uint64_t j = i
        cdef uint64_t k
        cdef uint64_t mask = self._mask
        self._table[i] = 0
        while True:
            j = (j + 1) & mask
            if self._table[j] == 0:
                return
            k = _hash(self._chans[self._table[j] - 1].id) & mask
            if (i <= j and i < k <= j) or (i > j and (i < k or k <= j)):
                continue  # its home lies after the hole: it must stay
            self._table[i] = self._table[j]
            self._table[j] = 0
            i = j

    # -- heap -----------------------------------------------------------------------------------

    cdef inline void _heap_set(self, int64_t pos, HeapEntry e) noexcept nogil:
        self._heap[pos] = e
        self._chans[e.slot].heap_pos = <int32_t>pos

    cdef void _sift_up(self, int64_t pos) noexcept nogil:
        cdef HeapEntry e = self._heap[pos]
        cdef int64_t parent
        while pos > 0:
            parent = (pos - 1) >> 1
            if not _before(&e, &self._heap[parent]):
                break
            self._heap_set(pos, self._heap[parent])
            pos = parent
        self._heap_set(pos, e)

    cdef void _sift_down(self, int64_t pos) noexcept nogil:
        cdef HeapEntry e = self._heap[pos]
        cdef int64_t n = self._n_active
        cdef int64_t child
        while True:
            child = 2 * pos + 1
            if child >= n:
                break
            if child + 1 < n and _before(&self._heap[child + 1], &self._heap[child]):
                child += 1
            if not _before(&self._heap[child], &e):
                break
            self._heap_set(pos, self._heap[child])
            pos = child
        self._heap_set(pos, e)

    cdef void _heap_remove(self, int64_t pos) noexcept nogil:
        cdef int64_t last = self._n_active - 1
        self._chans[self._heap[pos].slot].heap_pos = -1
        self._n_active = last
        if pos == last:
            return
        self._heap_set(pos, self._heap[last])
        if pos > 0 and _before(&self._heap[pos], &self._heap[(pos - 1) >> 1]):
            self._sift_up(pos)
        else:
            self._sift_down(pos)

    # -- the work -------------------------------------------------------------------------------

    cdef inline int _touch_c(self, int64_t key, int64_t events, double now) noexcept nogil:
        # 1 if this opened a window, 0 if not, -1 if memory must grow first (nothing changed)
        cdef int64_t pos = self._find_pos(key)
        cdef int64_t slot = <int64_t>self._table[pos] - 1
        cdef Channel* c
        cdef HeapEntry e
        cdef double after
        if slot < 0:
            if self._n == self._cap or self._n_active == self._heap_cap:
                return -1
            slot = self._n
            self._n += 1
            self._table[pos] = <int32_t>(slot + 1)
            c = &self._chans[slot]
            c.id = key
            c.events = 0
            c.rate = 0.0
            c.length_ms = self._rule.min_ms
            c.t_ms = now
            c.last_ms = -1.0 / 0.0
            c.heap_pos = -1
        else:
            c = &self._chans[slot]
            if c.heap_pos >= 0:
                c.events = INT64_MAX if events > INT64_MAX - c.events else c.events + events
                return 0
            if self._n_active == self._heap_cap:
                return -1
        # wake: the idle gap since the last close decays the rate before this window is sized
        c.rate = rule_decay(&self._rule, c.rate, now - c.t_ms)
        c.length_ms = rule_length(&self._rule, c.rate, self._flush.length_ms)
        c.t_ms = now
        c.events = events
        # never sooner than half a window after the last deadline: when the length has changed
        # the new grid would otherwise cut the next window short (an extra flush per channel)
        after = c.last_ms + 0.5 * c.length_ms
        e.deadline = grid_deadline(key, c.length_ms, now if now > after else after)
        e.id = key
        e.slot = <int32_t>slot
        self._n_active += 1
        self._heap[self._n_active - 1] = e
        self._sift_up(self._n_active - 1)
        self._opened += 1
        return 1

    cdef int64_t _due_c(self, double now) noexcept nogil:
        cdef int64_t k = 0
        cdef Channel* c
        while self._n_active > 0 and self._heap[0].deadline <= now:
            c = &self._chans[self._heap[0].slot]
            c.last_ms = self._heap[0].deadline
            self._heap_remove(0)
            c.rate = rule_update(&self._rule, c.rate, c.events, now - c.t_ms)
            c.length_ms = rule_length(&self._rule, c.rate, self._flush.length_ms)
            c.t_ms = now
            c.events = 0
            self._scratch[k] = c.id
            k += 1
        self._closed += k
        return k

    cdef int _enter(self, double now) except -1:
        if self._busy:
            raise StreamcoreError("WindowScheduler is in use by another thread")
        if now < self._now:
            raise StreamcoreValueError(
                f"now_ms went backwards: {now!r} < {self._now!r} (now_ms must be monotonic)")
        if self._now == -1.0 / 0.0:
            self._t_load = now
        self._now = now
        return 0

    def touch(self, channel, now_ms, events=1):
        """Count events on a channel; open its window if it was idle (then return True)."""
        cdef int64_t key = _int64(channel, "channel")
        cdef double now = _real(now_ms, "now_ms")
        cdef int64_t n = _count(events, "events")
        cdef int r
        self._enter(now)
        if n == 0:
            return False
        r = self._touch_c(key, n, now)
        if r < 0:
            self._reserve_one()
            r = self._touch_c(key, n, now)
        return r == 1

    def touch_many(self, channels, now_ms):
        """Count one event per entry of an int64 array of channel ids; return windows opened."""
        cdef const int64_t[::1] ids
        cdef double now = _real(now_ms, "now_ms")
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t n
        cdef int64_t opened = 0
        cdef int r = 0
        cdef const int64_t* p
        try:
            if channels is None:
                raise TypeError("None is not a buffer")
            ids = channels
        except (TypeError, ValueError, BufferError) as exc:
            raise StreamcoreTypeError(
                "channels must be a C-contiguous int64 buffer (e.g. a numpy.int64 array), "
                f"got {type(channels).__name__}: {exc}") from None
        self._enter(now)
        n = ids.shape[0]
        if n == 0:
            return 0
        p = &ids[0]
        self._busy = True
        try:
            while True:
                with nogil:
                    while i < n:
                        r = self._touch_c(p[i], 1, now)
                        if r < 0:
                            break
                        opened += r
                        i += 1
                if i >= n:
                    break
                self._reserve_one()
        finally:
            self._busy = False
        return opened

    def due(self, now_ms):
        """Close and return (int64, in deadline order) every channel whose deadline is <= now_ms."""
        cdef double now = _real(now_ms, "now_ms")
        cdef int64_t k
        cdef int64_t[::1] view
        import numpy as np  # here, not at import: a server that calls due_list never loads numpy

        self._enter(now)
        if self._n_active == 0 or self._heap[0].deadline > now:
            return np.empty(0, dtype=np.int64)
        with nogil:
            k = self._due_c(now)
        out = np.empty(k, dtype=np.int64)
        view = out
        memcpy(&view[0], self._scratch, k * sizeof(int64_t))
        return out

    def due_list(self, now_ms):
        """Close and return, as a list of ints in deadline order, every channel due by now_ms."""
        cdef double now = _real(now_ms, "now_ms")
        cdef int64_t k, i
        self._enter(now)
        if self._n_active == 0 or self._heap[0].deadline > now:
            return []
        with nogil:
            k = self._due_c(now)
        return [self._scratch[i] for i in range(k)]

    def observe_flush(self, now_ms, cost_ms):
        """Count cost_ms of flush CPU spent up to now_ms; the shared length follows the load."""
        cdef double now = _real(now_ms, "now_ms")
        cdef double cost = _cost(cost_ms)
        cdef double elapsed
        self._enter(now)
        self._pending_ms += cost
        elapsed = now - self._t_load
        if elapsed > 0.0:
            flush_update(&self._rule, &self._flush, self._pending_ms, elapsed)
            self._pending_ms = 0.0
            self._t_load = now

    def next_deadline(self):
        """Return the earliest open deadline (ms), or None when no window is open."""
        if self._n_active == 0:
            return None
        return self._heap[0].deadline

    cdef Channel* _known(self, object channel) except NULL:
        cdef int64_t slot = self._slot(_int64(channel, "channel"))
        if slot < 0:
            raise KeyError(channel)
        return &self._chans[slot]

    def window_ms(self, channel):
        """Return the grid period of its open window, or of its next one (KeyError if unknown)."""
        return self._known(channel).length_ms

    def rate(self, channel):
        """Return the channel's event-rate EWMA in events/s (KeyError if unknown)."""
        return self._known(channel).rate

    def is_active(self, channel):
        """Return True when the channel has an open window (False if unknown)."""
        cdef int64_t slot = self._slot(_int64(channel, "channel"))
        return slot >= 0 and self._chans[slot].heap_pos >= 0

    def forget(self, channel):
        """Drop a channel's state and any open window; return False if it was unknown."""
        cdef int64_t key = _int64(channel, "channel")
        cdef int64_t pos, slot, last, lpos
        if self._busy:
            raise StreamcoreError("WindowScheduler is in use by another thread")
        pos = self._find_pos(key)
        slot = <int64_t>self._table[pos] - 1
        if slot < 0:
            return False
        if self._chans[slot].heap_pos >= 0:
            self._heap_remove(self._chans[slot].heap_pos)
        self._table_delete(<uint64_t>pos)
        last = self._n - 1
        if slot != last:
            # keep the array dense: the last channel moves into the hole
            lpos = self._find_pos(self._chans[last].id)
            self._chans[slot] = self._chans[last]
            self._table[lpos] = <int32_t>(slot + 1)
            if self._chans[slot].heap_pos >= 0:
                self._heap[self._chans[slot].heap_pos].slot = <int32_t>slot
        self._n = last
        return True

    def __len__(self):
        return self._n_active

    @property
    def channels(self):
        """Known channel ids (active or idle), sorted, as an int64 array."""
        cdef int64_t[::1] view
        cdef int64_t i
        import numpy as np

        out = np.empty(self._n, dtype=np.int64)
        view = out
        for i in range(self._n):
            view[i] = self._chans[i].id
        out.sort()
        return out

    @property
    def nbytes(self):
        """Bytes of C memory held (channel array, index, heap and due() buffer)."""
        return (self._cap * (sizeof(Channel) + 4 * sizeof(int32_t))
                + self._heap_cap * (sizeof(HeapEntry) + sizeof(int64_t)))

    @property
    def windows_opened(self):
        """Windows opened since creation."""
        return self._opened

    @property
    def windows_closed(self):
        """Windows closed by due() since creation (forget() drops a window without closing it)."""
        return self._closed

    @property
    def min_ms(self):
        """Shortest window, in ms."""
        return self._rule.min_ms

    @property
    def max_ms(self):
        """Longest window, in ms."""
        return self._rule.max_ms

    @property
    def quiet_rate(self):
        """Rate (events/s) at or below which a window gets min_ms."""
        return self._rule.quiet_rate

    @property
    def flush_budget(self):
        """Flush CPU per wall time (1.0 is one core) the shared length aims at."""
        return self._rule.budget

    @property
    def load(self):
        """EWMA of the flush load: flush CPU ms per wall ms (1.0 is one core)."""
        return self._flush.load

    @property
    def length_ms(self):
        """The shared window length of channels above quiet_rate, in ms."""
        return self._flush.length_ms

    @property
    def alpha(self):
        """Weight of one second of observation in the rate EWMA."""
        return self._rule.alpha

    def __repr__(self):
        return (f"WindowScheduler(active={self._n_active}, known={self._n}, "
                f"length_ms={self._flush.length_ms!r}, load={self._flush.load!r}, "
                f"min_ms={self._rule.min_ms!r}, max_ms={self._rule.max_ms!r})")
