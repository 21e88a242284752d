# cython: autotestdict=False
"""Entity-keyed conflation: the latest event per key, keys in first-seen order, once per window.

`IntConflator` is the pure-C path (int64 key -> int64 ref). `Conflator` holds bytes payloads in a C
array of references, one per slot, that drain() hands to its list in one pass. Exact str keys go
through a C table keyed by the hash the str caches (identity compared first), int keys through the
IntMap below, ints beyond int64 through a dict; all are emptied at each drain, so memory stays
bounded by one window's distinct keys, and a push allocates no Python object. Latest mode never
decodes a payload; merge mode decodes, merges and re-encodes (stdlib json, compact) only when a key
collides. The semantics are specified by `streamcore.reference.conflation` and restated in
`_conflation.pyi`.
"""

cimport cython
from cpython.bool cimport PyBool_Check
from cpython.bytes cimport PyBytes_Check, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New
from cpython.long cimport PyLong_AsLongLongAndOverflow, PyLong_AsSsize_t, PyLong_Check
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.object cimport PyObject, PyObject_Hash
from cpython.ref cimport Py_DECREF, Py_INCREF
from cpython.sequence cimport PySequence_Check
from cpython.number cimport PyNumber_Index
from cpython.unicode cimport PyUnicode_Check, PyUnicode_CheckExact, PyUnicode_FromObject
from libc.stdint cimport UINT32_MAX, int64_t, uint32_t, uint64_t
from libc.string cimport memset

cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define SC_PREFETCH(p) __builtin_prefetch((p), 1)
    #else
    #define SC_PREFETCH(p) ((void)(p))
    #endif
    """
    void SC_PREFETCH(const void* p) noexcept nogil

import json


from streamcore.errors import StreamcoreError, StreamcoreTypeError, StreamcoreValueError


# ---------------------------------------------------------------------------------------------
# IntMap: int64 key -> int64 value in first-seen order, in C memory. `pairs` holds the entries in
# insertion order; `slots` is an open-addressing (linear probing) index of 4-byte pair numbers.
# The index is kept at most 1/8 full: a displaced key costs a mispredicted branch, which is the
# dominant cost of a lookup, and with 4-byte slots a sparse index is as big as a 1/2-full table of
# 16-byte entries. `homes` records where each pair sits in the index, so emptying a window
# touches only its own keys, never the whole (possibly burst-grown) index.

cdef struct Pair:
    int64_t key
    int64_t value

cdef struct IntMap:
    uint32_t* slots   # capacity entries: a pair number, or _EMPTY
    Pair* pairs       # room for max_fill pairs
    uint32_t* homes   # homes[v]: the index slot that holds pair v
    size_t mask       # capacity - 1 (capacity is a power of two)
    size_t count      # live pairs
    size_t max_fill   # capacity / 8

cdef uint32_t _EMPTY = UINT32_MAX
cdef size_t _MIN_CAPACITY = 64
# Pair numbers are uint32 and _EMPTY is reserved.
cdef size_t _MAX_FILL = <size_t>UINT32_MAX - 1


cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    # Fibonacci hashing: one multiply, then fold the well-mixed high half onto the low bits we mask,
    # so sequential or strided ids spread over the index.
    x *= 0x9e3779b97f4a7c15ULL
    return x ^ (x >> 32)


cdef inline size_t _find(const IntMap* m, int64_t key) noexcept nogil:
    """Return the index slot holding key's pair number, or the empty slot where it belongs."""
    cdef size_t h = <size_t>_mix(<uint64_t>key) & m.mask
    cdef uint32_t v = m.slots[h]
    while v != _EMPTY and m.pairs[v].key != key:
        h = (h + 1) & m.mask
        v = m.slots[h]
    return h


cdef inline Pair* _insert(IntMap* m, size_t h, int64_t key) noexcept nogil:
    """Append key's pair at empty index slot h (the caller checked count < max_fill)."""
    cdef uint32_t v = <uint32_t>m.count
    m.slots[h] = v
    m.homes[v] = <uint32_t>h
    m.pairs[v].key = key
    m.count += 1
    return &m.pairs[v]


cdef size_t _capacity_for(size_t n):
    """The smallest power-of-two capacity whose max_fill holds n keys."""
    cdef size_t cap = _MIN_CAPACITY
    while cap // 8 < n:
        cap <<= 1
    return cap


cdef int _map_alloc(IntMap* m, size_t cap) except -1:
    """Give m an empty index of cap slots and room for cap / 8 pairs (keeping its pairs)."""
    cdef size_t fill = cap // 8
    if fill > _MAX_FILL:
        raise StreamcoreValueError("conflation window holds too many distinct keys; drain it more often")
    cdef uint32_t* slots = <uint32_t*>PyMem_Malloc(cap * sizeof(uint32_t))
    if slots == NULL:
        raise MemoryError(f"conflation index of {cap} slots")
    cdef Pair* pairs = <Pair*>PyMem_Realloc(m.pairs, fill * sizeof(Pair))
    if pairs == NULL:
        PyMem_Free(slots)
        raise MemoryError(f"conflation pairs for {fill} keys")
    m.pairs = pairs
    cdef uint32_t* homes = <uint32_t*>PyMem_Realloc(m.homes, fill * sizeof(uint32_t))
    if homes == NULL:
        PyMem_Free(slots)
        raise MemoryError(f"conflation pairs for {fill} keys")
    m.homes = homes
    memset(slots, 0xFF, cap * sizeof(uint32_t))  # every slot _EMPTY
    PyMem_Free(m.slots)
    m.slots = slots
    m.mask = cap - 1
    m.max_fill = fill
    return 0


cdef int _map_grow(IntMap* m) except -1:
    _map_alloc(m, (m.mask + 1) * 2)
    cdef size_t v, h
    for v in range(m.count):
        h = _find(m, m.pairs[v].key)
        m.slots[h] = <uint32_t>v
        m.homes[v] = <uint32_t>h
    return 0


cdef void _map_free(IntMap* m) noexcept:
    PyMem_Free(m.slots)
    PyMem_Free(m.pairs)
    PyMem_Free(m.homes)
    m.slots = NULL
    m.pairs = NULL
    m.homes = NULL


cdef inline void _map_clear(IntMap* m) noexcept nogil:
    cdef size_t v
    for v in range(m.count):
        m.slots[m.homes[v]] = _EMPTY
    m.count = 0


cdef Py_ssize_t _int_run(IntMap* map, const int64_t* keys, const int64_t* refs,
                         Py_ssize_t start, Py_ssize_t end) noexcept nogil:
    """Conflate keys[start:end]; return where it stopped (end, or the pair that needs a bigger map)."""
    # A local copy: stores through pairs could alias *map and force the compiler to reload it.
    cdef IntMap m = map[0]
    cdef Py_ssize_t i
    cdef size_t h
    cdef uint32_t v
    for i in range(start, end):
        # The index is random access: ask for the slot of a key 16 pushes ahead now.
        if i + 16 < end:
            SC_PREFETCH(&m.slots[<size_t>_mix(<uint64_t>keys[i + 16]) & m.mask])
        h = _find(&m, keys[i])
        v = m.slots[h]
        if v != _EMPTY:
            m.pairs[v].value = refs[i]
        elif m.count < m.max_fill:
            _insert(&m, h, keys[i]).value = refs[i]
        else:
            map.count = m.count
            return i
    map.count = m.count
    return end


# ---------------------------------------------------------------------------------------------
# Argument checks, on the error path only where possible.

cdef object _int64_error(object obj, str name, object exc):
    try:
        m = memoryview(obj)
    except TypeError:
        return StreamcoreTypeError(
            f"{name} must be a C-contiguous int64 buffer (numpy int64 array), not {type(obj).__name__}"
        )
    if m.ndim != 1:
        return StreamcoreValueError(f"{name} must be one-dimensional, not {m.ndim}-dimensional")
    if m.itemsize != 8 or m.format.lstrip("@=<>!") not in ("q", "l"):
        return StreamcoreTypeError(f"{name} must have dtype int64, not buffer format {m.format!r}")
    if not m.c_contiguous:
        return StreamcoreValueError(f"{name} must be C-contiguous (numpy.ascontiguousarray would copy it)")
    return StreamcoreTypeError(f"{name} is not a usable int64 buffer: {exc}")


cdef const int64_t[::1] _as_int64(object obj, str name) except *:
    cdef const int64_t[::1] view
    if obj is None:  # a memoryview variable would accept None silently
        raise StreamcoreTypeError(f"{name} must be a C-contiguous int64 buffer, not None")
    try:
        view = obj
    except (TypeError, ValueError) as exc:
        raise _int64_error(obj, name, exc) from None
    return view


cdef list _as_list(object seq, str name):
    """A private copy: the loop indexes it unchecked, so nobody else may resize it meanwhile."""
    if type(seq) is list:
        return (<list>seq)[:]
    if isinstance(seq, (str, bytes, bytearray, memoryview)) or not PySequence_Check(seq):
        raise StreamcoreTypeError(f"{name} must be a sequence (list or tuple), not {type(seq).__name__}")
    return list(seq)


cdef object _in_use(object obj):
    return StreamcoreError(
        f"{type(obj).__name__} is in use by another thread; give each thread its own or lock around it"
    )


cdef inline int _check_payload(object payload) except -1:
    if not PyBytes_Check(payload):
        raise StreamcoreTypeError(f"payload must be bytes (encoded JSON), not {type(payload).__name__}")
    return 0


cdef inline int _check_key(object key) except -1:
    # bool is an int subclass, and True == 1 would silently collide with the key 1.
    if key is None or PyUnicode_Check(key) or (PyLong_Check(key) and not PyBool_Check(key)):
        return 0
    raise StreamcoreTypeError(f"conflation key must be str, int or None, not {type(key).__name__}")


cdef int64_t _as_c_int64(object value, str name) except? -1:
    cdef int overflow = 0
    cdef long long v
    if not PyLong_Check(value) or PyBool_Check(value):
        raise StreamcoreTypeError(f"{name} must be an int, not {type(value).__name__}")
    v = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow:
        raise StreamcoreValueError(f"{name} {value} is outside the int64 range")
    return v


cdef dict _decode_object(object key, bytes payload):
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise StreamcoreValueError(f"merge mode: payload for key {key!r} is not valid JSON: {exc}") from None
    if type(value) is not dict:
        raise StreamcoreValueError(
            f"merge mode: payload for key {key!r} is a JSON {type(value).__name__}, not an object"
        )
    return <dict>value


cdef bytes _merge_json(object key, bytes old, bytes new):
    cdef dict merged = _decode_object(key, old)
    merged.update(_decode_object(key, new))
    return json.dumps(merged, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------------------------------------

@cython.final
@cython.auto_pickle(False)
cdef class IntConflator:
    """Latest ref per int64 key, keys in first-seen order; a C hash table, no Python objects."""

    cdef IntMap _map
    cdef uint64_t _events_in
    cdef uint64_t _events_out
    cdef bint _busy  # push_many runs without the GIL: nothing else may touch the map meanwhile

    def __cinit__(self, capacity_hint=1024):
        cdef int64_t hint = _as_c_int64(capacity_hint, "capacity_hint")
        if hint < 0:
            raise StreamcoreValueError(f"capacity_hint must be >= 0, not {hint}")
        if hint > (<int64_t>1 << 31):
            raise StreamcoreValueError(f"capacity_hint {hint} is above the limit of 2**31 keys")
        _map_alloc(&self._map, _capacity_for(<size_t>hint))

    def __init__(self, capacity_hint=1024):
        pass  # __cinit__ did the work; this gives the class an introspectable signature

    def __dealloc__(self):
        _map_free(&self._map)

    def push(self, key, ref):
        """Record ref as the latest for key."""
        cdef int64_t k = _as_c_int64(key, "key")
        cdef int64_t r = _as_c_int64(ref, "ref")
        if self._busy:
            raise _in_use(self)
        if _int_run(&self._map, &k, &r, 0, 1) == 0:
            _map_grow(&self._map)
            _int_run(&self._map, &k, &r, 0, 1)
        self._events_in += 1

    def push_many(self, keys, refs):
        """Record refs[i] as the latest for keys[i], in order; the GIL is released for the batch."""
        cdef const int64_t[::1] kv = _as_int64(keys, "keys")
        cdef const int64_t[::1] rv = _as_int64(refs, "refs")
        cdef Py_ssize_t n = kv.shape[0]
        cdef Py_ssize_t done = 0
        cdef Py_ssize_t stop
        if rv.shape[0] != n:
            raise StreamcoreValueError(f"keys and refs differ in length: {n} != {rv.shape[0]}")
        if self._busy:
            raise _in_use(self)
        if n == 0:
            return
        self._busy = True
        try:
            while True:
                with nogil:
                    stop = _int_run(&self._map, &kv[0], &rv[0], done, n)
                self._events_in += <uint64_t>(stop - done)
                done = stop
                if done == n:
                    return
                # PyMem_Malloc wants the GIL: leave the loop to grow, which happens log2(keys) times.
                _map_grow(&self._map)
        finally:
            self._busy = False

    def drain(self):
        """Return (keys, refs) as int64 arrays in first-seen order and start a new window."""
        cdef Py_ssize_t n = <Py_ssize_t>self._map.count
        cdef Py_ssize_t i
        cdef int64_t[::1] kv
        cdef int64_t[::1] rv
        if self._busy:
            raise _in_use(self)
        self._busy = True  # allocating the arrays may run other threads' Python code
        try:
            import numpy as np  # drain's arrays only: importing the engine does not load numpy

            keys = np.empty(n, dtype=np.int64)
            refs = np.empty(n, dtype=np.int64)
            kv = keys
            rv = refs
            for i in range(n):
                kv[i] = self._map.pairs[i].key
                rv[i] = self._map.pairs[i].value
            _map_clear(&self._map)
            self._events_out += <uint64_t>n
        finally:
            self._busy = False
        return keys, refs

    def clear(self):
        """Discard the window without emitting it (the discarded events stay counted in events_in)."""
        if self._busy:
            raise _in_use(self)
        _map_clear(&self._map)

    def __len__(self):
        return <Py_ssize_t>self._map.count

    @property
    def events_in(self):
        """Pairs pushed since creation."""
        return self._events_in

    @property
    def events_out(self):
        """Pairs handed out by drain() since creation."""
        return self._events_out

    @property
    def conflation_ratio(self):
        """events_out / events_in (1.0 before any event)."""
        return self._events_out / <double>self._events_in if self._events_in else 1.0


# ---------------------------------------------------------------------------------------------
# StrMap: exact str key -> window slot, in C memory, in first-seen order. Keyed by the hash the str
# caches in itself (siphash: already well mixed), compared by identity first (the app often passes
# the same str object per entity), then by hash, length, kind and bytes. The map owns a reference
# to each key; `entries` is in insertion order and the index, kept at most 1/4 full, holds entry
# numbers, so emptying a window touches only its own keys, as in IntMap.

cdef struct StrEntry:
    PyObject* key       # an exact, ready str, owned
    Py_hash_t hash
    Py_ssize_t slot     # where the key's payload sits in the window
    size_t home         # the index position that holds this entry

cdef struct StrMap:
    uint32_t* index     # capacity entries: an entry number, or _EMPTY
    StrEntry* entries   # room for max_fill entries
    size_t mask
    size_t count
    size_t max_fill     # capacity / 4


cdef extern from *:
    """
    #define SC_STR_HASH(o) (((PyASCIIObject *)(o))->hash)
    static inline int sc_str_eq(PyObject *a, PyObject *b) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(a);
        int kind = PyUnicode_KIND(a);
        return n == PyUnicode_GET_LENGTH(b) && kind == PyUnicode_KIND(b)
            && memcmp(PyUnicode_DATA(a), PyUnicode_DATA(b), (size_t)n * kind) == 0;
    }
    #if PY_VERSION_HEX < 0x030C0000
    #define SC_STR_READY(o) PyUnicode_READY(o)
    #else
    #define SC_STR_READY(o) 0
    #endif
    #define SC_LIST_SET(l, i, o) PyList_SET_ITEM((l), (i), (o))
    """
    Py_hash_t SC_STR_HASH(PyObject* o) noexcept nogil
    bint sc_str_eq(PyObject* a, PyObject* b) noexcept nogil
    int SC_STR_READY(PyObject* o) except -1
    void SC_LIST_SET(object l, Py_ssize_t i, PyObject* o) noexcept
    # The same macros on borrowed pointers, so the hot path makes no reference-count temporaries.
    void sc_incref "Py_INCREF"(PyObject* o) noexcept nogil
    void sc_decref "Py_DECREF"(PyObject* o) noexcept
    Py_ssize_t sc_bytes_size "PyBytes_GET_SIZE"(PyObject* o) noexcept nogil
    bint sc_is_str "PyUnicode_CheckExact"(PyObject* o) noexcept nogil
    bint sc_is_bytes "PyBytes_CheckExact"(PyObject* o) noexcept nogil


cdef inline size_t _str_find(const StrMap* m, PyObject* key, Py_hash_t h) noexcept nogil:
    """Return the index position holding key's entry number, or the empty one where it belongs."""
    cdef size_t i = <size_t>h & m.mask
    cdef uint32_t v = m.index[i]
    cdef const StrEntry* e
    while v != _EMPTY:
        e = &m.entries[v]
        if e.key == key or (e.hash == h and sc_str_eq(e.key, key)):
            return i
        i = (i + 1) & m.mask
        v = m.index[i]
    return i


cdef int _str_alloc(StrMap* m, size_t cap) except -1:
    """Give m an empty index of cap positions and room for cap / 4 entries (keeping its entries)."""
    cdef size_t fill = cap // 4
    if fill > _MAX_FILL:
        raise StreamcoreValueError("conflation window holds too many distinct keys; drain it more often")
    cdef uint32_t* index = <uint32_t*>PyMem_Malloc(cap * sizeof(uint32_t))
    if index == NULL:
        raise MemoryError(f"conflation index of {cap} slots")
    cdef StrEntry* entries = <StrEntry*>PyMem_Realloc(m.entries, fill * sizeof(StrEntry))
    if entries == NULL:
        PyMem_Free(index)
        raise MemoryError(f"conflation entries for {fill} keys")
    m.entries = entries
    memset(index, 0xFF, cap * sizeof(uint32_t))  # every position _EMPTY
    PyMem_Free(m.index)
    m.index = index
    m.mask = cap - 1
    m.max_fill = fill
    return 0


cdef int _str_grow(StrMap* m) except -1:
    _str_alloc(m, (m.mask + 1) * 2)
    cdef size_t v, i
    for v in range(m.count):
        i = _str_find(m, m.entries[v].key, m.entries[v].hash)
        m.index[i] = <uint32_t>v
        m.entries[v].home = i
    return 0


cdef void _str_clear(StrMap* m) noexcept:
    # Unmark every position before releasing any key: freeing a str runs no Python code, but the
    # map must be whole whatever a release does.
    cdef size_t v, n = m.count
    for v in range(n):
        m.index[m.entries[v].home] = _EMPTY
    m.count = 0
    for v in range(n):
        Py_DECREF(<object>m.entries[v].key)


cdef void _str_free(StrMap* m) noexcept:
    _str_clear(m)
    PyMem_Free(m.index)
    PyMem_Free(m.entries)
    m.index = NULL
    m.entries = NULL


# ---------------------------------------------------------------------------------------------

@cython.final
@cython.auto_pickle(False)
cdef class Conflator:
    """One channel's window of bytes payloads, conflated by entity key (see the module docstring)."""

    # The window: one owned payload reference per slot, in slot order, in C memory.
    cdef PyObject** _slots
    cdef Py_ssize_t _count
    cdef Py_ssize_t _room
    cdef StrMap _strs       # exact str key -> slot
    cdef IntMap _map        # int64 key -> slot
    cdef dict _index        # int beyond int64 -> slot (rare: a dict is enough)
    cdef bint _merge
    cdef str _mode
    cdef Py_ssize_t _pending_bytes
    cdef uint64_t _events_in
    cdef uint64_t _events_out
    # Set while a call mutates the window: a merge allocates, so the garbage collector may run
    # another thread's code mid-push, and that code must not drain or push into this window.
    cdef bint _busy

    def __cinit__(self, mode="latest"):
        if not isinstance(mode, str):
            raise StreamcoreTypeError(f"mode must be a str, not {type(mode).__name__}")
        if mode != "latest" and mode != "merge":
            raise StreamcoreValueError(f"mode must be 'latest' or 'merge', not {mode!r}")
        self._mode = mode
        self._merge = mode == "merge"
        self._index = {}
        _map_alloc(&self._map, _MIN_CAPACITY)
        _str_alloc(&self._strs, _MIN_CAPACITY)
        self._slots = <PyObject**>PyMem_Malloc(_MIN_CAPACITY * sizeof(PyObject*))
        if self._slots == NULL:
            raise MemoryError("conflation window")
        self._room = _MIN_CAPACITY

    def __init__(self, mode="latest"):
        pass  # __cinit__ did the work; this gives the class an introspectable signature

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self._count):
            Py_DECREF(<object>self._slots[i])
        self._count = 0
        PyMem_Free(self._slots)
        _str_free(&self._strs)
        _map_free(&self._map)

    cdef int _reserve(self, Py_ssize_t extra) except -1:
        """Make room for extra more slots (doubling), before any of them is taken."""
        cdef Py_ssize_t room = self._room
        if self._count + extra <= room:
            return 0
        while room < self._count + extra:
            room *= 2
        cdef PyObject** slots = <PyObject**>PyMem_Realloc(self._slots, <size_t>room * sizeof(PyObject*))
        if slots == NULL:
            raise MemoryError(f"conflation window of {room} slots")
        self._slots = slots
        self._room = room
        return 0

    cdef inline Py_ssize_t _append(self, PyObject* payload) except -1:
        """Take a new slot for payload (room reserved by the caller) and return its number."""
        cdef Py_ssize_t slot = self._count
        sc_incref(payload)
        self._slots[slot] = payload
        self._count = slot + 1
        self._pending_bytes += sc_bytes_size(payload)
        return slot

    cdef int _replace(self, Py_ssize_t slot, object key, object payload) except -1:
        cdef PyObject* old = self._slots[slot]
        if self._merge:
            payload = _merge_json(key, <bytes>old, payload)  # raises before anything changes
        self._pending_bytes += PyBytes_GET_SIZE(payload) - PyBytes_GET_SIZE(<object>old)
        Py_INCREF(payload)
        self._slots[slot] = <PyObject*>payload
        Py_DECREF(<object>old)  # last: the window is whole whatever releasing it runs
        return 0

    cdef inline int _push_str(self, PyObject* key, PyObject* payload) except -1:
        """Conflate one event with an exact str key."""
        cdef StrMap* m = &self._strs
        cdef Py_hash_t h = SC_STR_HASH(key)
        if h == -1:
            SC_STR_READY(key)
            h = PyObject_Hash(<object>key)  # an exact str: computed and cached, no user code
        cdef size_t i = _str_find(m, key, h)
        cdef uint32_t v = m.index[i]
        cdef StrEntry* e
        cdef PyObject* old
        cdef Py_ssize_t slot
        if v != _EMPTY:
            slot = m.entries[v].slot
            if self._merge:
                return self._replace(slot, <object>key, <object>payload)
            old = self._slots[slot]
            sc_incref(payload)
            self._slots[slot] = payload
            self._pending_bytes += sc_bytes_size(payload) - sc_bytes_size(old)
            sc_decref(old)  # last: the window is whole whatever releasing it runs
            return 0
        if m.count >= m.max_fill:
            _str_grow(m)
            i = _str_find(m, key, h)
        self._reserve(1)
        v = <uint32_t>m.count
        e = &m.entries[v]
        sc_incref(key)
        e.key = key
        e.hash = h
        e.home = i
        e.slot = self._append(payload)
        m.index[i] = v
        m.count += 1
        return 0

    cdef int _push_object_key(self, object key, object payload) except -1:
        cdef PyObject* found = PyDict_GetItem(self._index, key)
        if found == NULL:
            self._reserve(1)
            self._index[key] = self._count
            self._append(<PyObject*>payload)
            return 0
        return self._replace(PyLong_AsSsize_t(<object>found), key, payload)

    cdef int _push_int64_key(self, int64_t key, object payload) except -1:
        cdef IntMap* m = &self._map
        cdef size_t h = _find(m, key)
        cdef uint32_t v = m.slots[h]
        if v != _EMPTY:
            return self._replace(<Py_ssize_t>m.pairs[v].value, key, payload)
        if m.count >= m.max_fill:
            _map_grow(m)
            h = _find(m, key)
        self._reserve(1)
        _insert(m, h, key).value = self._append(<PyObject*>payload)
        return 0

    cdef int _push_checked(self, object key, object payload, bint conflatable) except -1:
        cdef int overflow = 0
        cdef long long v
        if key is None or not conflatable:
            self._reserve(1)
            self._append(<PyObject*>payload)
        elif PyUnicode_Check(key):
            # A subclass's __eq__/__hash__ could re-enter (drain) during a lookup: use a copy.
            if not PyUnicode_CheckExact(key):
                key = PyUnicode_FromObject(key)
            self._push_str(<PyObject*>key, <PyObject*>payload)
        else:
            v = PyLong_AsLongLongAndOverflow(key, &overflow)
            if overflow:  # beyond int64: the dict keeps it apart from every C map key
                self._push_object_key(PyNumber_Index(key), payload)  # an exact int, as above
            else:
                self._push_int64_key(v, payload)
        self._events_in += 1
        return 0

    # An unbound C method: `c.push` is then a builtin method, whose calls the interpreter
    # specialises, where a cyfunction's go through a generic bound-method call. Positional calls
    # skip even this: see _push_positional below, which takes its place in the type.
    @cython.binding(False)
    def push(self, key, payload, bint conflatable=True):
        """Add one event to the window."""
        _check_payload(payload)
        if self._busy:
            raise _in_use(self)
        self._busy = True
        try:
            if PyUnicode_CheckExact(key) and conflatable:  # the common case, checked in one test
                self._push_str(<PyObject*>key, <PyObject*>payload)
                self._events_in += 1
            else:
                _check_key(key)
                self._push_checked(key, payload, conflatable)
        finally:
            self._busy = False

    @cython.binding(False)
    def push_many(self, keys, payloads, bint conflatable=True):
        """Add events pairwise; every key and payload is checked before any is added."""
        cdef Py_ssize_t n, i
        cdef PyObject* key
        cdef PyObject* payload
        cdef PyObject* ahead
        cdef bint plain = not self._merge
        cdef list ks
        cdef list ps
        if type(keys) is list and type(payloads) is list:
            ks, ps = keys, payloads
        else:
            ks, ps = _as_list(keys, "keys"), _as_list(payloads, "payloads")
        n = PyList_GET_SIZE(ks)
        if PyList_GET_SIZE(ps) != n:
            raise StreamcoreValueError(f"keys and payloads differ in length: {n} != {PyList_GET_SIZE(ps)}")
        for i in range(n):
            key = PyList_GET_ITEM(ks, i)
            payload = PyList_GET_ITEM(ps, i)
            if not sc_is_bytes(payload):
                _check_payload(<object>payload)
                plain = False
            if not sc_is_str(key):
                _check_key(<object>key)
                plain = plain and <object>key is None
        if self._busy:
            raise _in_use(self)
        if not plain and (ks is keys or ps is payloads):
            # Off the plain path (a merge, a subclass, an int key) Python code may run mid-loop
            # (an allocation can start the garbage collector): index private copies, as the loop
            # does not recheck them. The plain path allocates no object and releases only bytes.
            ks, ps = _as_list(keys, "keys"), _as_list(payloads, "payloads")
        self._busy = True
        try:
            if not conflatable:
                self._reserve(n)
            for i in range(n):
                # The index is random access: ask for the position of a key 8 events ahead now
                # (its str object is read anyway, and in list order).
                if i + 8 < n:
                    ahead = PyList_GET_ITEM(ks, i + 8)
                    if sc_is_str(ahead):
                        SC_PREFETCH(&self._strs.index[<size_t>SC_STR_HASH(ahead) & self._strs.mask])
                key = PyList_GET_ITEM(ks, i)
                payload = PyList_GET_ITEM(ps, i)
                if conflatable and sc_is_str(key):
                    self._push_str(key, payload)
                    self._events_in += 1
                else:
                    self._push_checked(<object>key, <object>payload, conflatable)
        finally:
            self._busy = False

    def push_int_many(self, keys, payloads):
        """Add conflatable events with int64 keys from a buffer; payloads are checked before any is added."""
        cdef const int64_t[::1] kv = _as_int64(keys, "keys")
        cdef list ps = _as_list(payloads, "payloads")
        cdef Py_ssize_t n = kv.shape[0]
        cdef Py_ssize_t i
        if PyList_GET_SIZE(ps) != n:
            raise StreamcoreValueError(f"keys and payloads differ in length: {n} != {PyList_GET_SIZE(ps)}")
        for i in range(n):
            _check_payload(ps[i])
        if self._busy:
            raise _in_use(self)
        self._busy = True
        try:
            for i in range(n):
                self._push_int64_key(kv[i], ps[i])
                self._events_in += 1
        finally:
            self._busy = False

    def drain(self):
        """Return the window's payloads in slot order and start a new window."""
        cdef Py_ssize_t n = self._count
        cdef Py_ssize_t i
        cdef list out
        if self._busy:
            raise _in_use(self)
        self._busy = True  # allocating the list may run other threads' Python code
        try:
            out = PyList_New(n)
        finally:
            self._busy = False
        for i in range(n):  # the list takes over the window's references
            SC_LIST_SET(out, i, self._slots[i])
        self._count = 0
        self._pending_bytes = 0
        self._events_out += <uint64_t>n
        _map_clear(&self._map)
        _str_clear(&self._strs)
        if self._index:
            self._index = {}
        return out

    def drain_keyed(self):
        """Return (payloads, keys) in slot order and start a new window.

        keys[i] is the key payloads[i] conflated on, None for the events kept as they came
        (unkeyed or not conflatable): a later re-conflation needs no parsing to find them.
        """
        cdef Py_ssize_t n = self._count
        cdef size_t v
        cdef list keys
        if self._busy:
            raise _in_use(self)
        self._busy = True  # allocating may run other threads' Python code
        try:
            keys = [None] * n
            for v in range(self._strs.count):
                keys[self._strs.entries[v].slot] = <object>self._strs.entries[v].key
            for v in range(self._map.count):
                keys[<Py_ssize_t>self._map.pairs[v].value] = self._map.pairs[v].key
            for key, slot in self._index.items():
                keys[slot] = key
        finally:
            self._busy = False
        return self.drain(), keys

    def __len__(self):
        return self._count

    @property
    def mode(self):
        """'latest' or 'merge'."""
        return self._mode

    @property
    def pending_bytes(self):
        """Sum of the payload lengths waiting in the window."""
        return self._pending_bytes

    @property
    def events_in(self):
        """Events pushed since creation."""
        return self._events_in

    @property
    def events_out(self):
        """Events handed out by drain() since creation."""
        return self._events_out

    @property
    def conflation_ratio(self):
        """events_out / events_in (1.0 before any event)."""
        return self._events_out / <double>self._events_in if self._events_in else 1.0


# ---------------------------------------------------------------------------------------------
# Conflator.push for positional calls, the way the app and any per-event loop call it: a
# METH_FASTCALL entry that reads its arguments straight from the caller's array, with no keyword
# parsing and no argument references taken. A call with keywords goes to the Cython-made method.

from cpython.object cimport PyTypeObject

cdef extern from *:
    """
    #define SC_TYPE_DICT(t) (((PyTypeObject *)(t))->tp_dict)
    """
    PyObject* SC_TYPE_DICT(PyObject* t) noexcept

cdef extern from "Python.h":
    ctypedef struct PyMethodDef:
        const char* ml_name
        void* ml_meth
        int ml_flags
        const char* ml_doc
    int METH_FASTCALL
    int METH_KEYWORDS
    object PyDescr_NewMethod(PyTypeObject* cls, PyMethodDef* meth)
    void PyType_Modified(PyTypeObject* cls)
    int PyObject_IsTrue(PyObject* o) except -1
    Py_ssize_t PyTuple_GET_SIZE(PyObject* t) noexcept

cdef object _push_general = Conflator.__dict__["push"]


cdef object _push_positional(object self, PyObject** args, Py_ssize_t nargs, PyObject* kwnames):
    cdef Conflator c = <Conflator>self  # the descriptor checked the type of self
    cdef bint conflatable = True
    cdef PyObject* key
    cdef PyObject* payload
    if kwnames != NULL or nargs < 2 or nargs > 3:
        return _push_general(self, *[<object>args[i] for i in range(nargs)],
                             **_keywords(args + nargs, kwnames))
    key = args[0]
    payload = args[1]
    if nargs == 3:
        conflatable = PyObject_IsTrue(args[2])
    if not sc_is_bytes(payload):
        _check_payload(<object>payload)
    if c._busy:
        raise _in_use(c)
    c._busy = True
    try:
        if conflatable and sc_is_str(key):
            c._push_str(key, payload)
            c._events_in += 1
        else:
            _check_key(<object>key)
            c._push_checked(<object>key, <object>payload, conflatable)
    finally:
        c._busy = False
    return None


cdef dict _keywords(PyObject** values, PyObject* kwnames):
    cdef dict kw = {}
    cdef Py_ssize_t i
    if kwnames != NULL:
        for i in range(PyTuple_GET_SIZE(kwnames)):
            kw[(<tuple>kwnames)[i]] = <object>values[i]
    return kw


cdef bytes _PUSH_DOC = ("push($self, key, payload, conflatable=True)\n--\n\n"
                        + _push_general.__doc__.partition("\n\n")[2]).encode()
cdef PyMethodDef _PUSH_DEF
_PUSH_DEF.ml_name = "push"
_PUSH_DEF.ml_meth = <void*>_push_positional
_PUSH_DEF.ml_flags = METH_FASTCALL | METH_KEYWORDS
_PUSH_DEF.ml_doc = _PUSH_DOC
(<dict>SC_TYPE_DICT(<PyObject*>Conflator))["push"] = PyDescr_NewMethod(<PyTypeObject*>Conflator, &_PUSH_DEF)
PyType_Modified(<PyTypeObject*>Conflator)
