"""Broadcast: one prepared frame handed to many transports in one call, the loop in C.

The hub encodes a window once per codec; what is left per subscriber is giving the same bytes to
its transport. From Python that is an interpreted chain of calls per socket (about 2 µs above the
kernel's own write, docs/REALTIME.md); here it is three C-level calls of methods bound once, when
the member joined.

The core still reads no clock and owns no socket: it calls the asyncio transports it is given
(`is_closing`, `get_write_buffer_size`, `write`), and whatever a transport cannot take now goes back
to the caller, who queues it by its own policy. One shortcut: when a plain TCP transport holds no
unsent bytes, the frame goes to its socket with one non-blocking send(2), as the transport's own
write would do first, without its ~1,100 instructions of bookkeeping (benchmarks/
broadcast_callgrind.py). What send() does not take is handed to transport.write, so the order of
bytes on the socket is the transport's as always; TLS transports always go through write().
"""

from cpython.mem cimport PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF

from libc.errno cimport EAGAIN, EINTR, errno

from .errors import StreamcoreTypeError, StreamcoreValueError

cdef extern from "<sys/socket.h>" nogil:
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

cdef extern from "Python.h":
    PyObject *PyObject_CallNoArgs(PyObject *func)
    PyObject *PyObject_CallOneArg(PyObject *func, PyObject *arg)
    Py_ssize_t PyLong_AsSsize_t(PyObject *o)
    PyObject *PyErr_Occurred()
    void PyErr_Clear()
    void _decref "Py_DECREF"(PyObject *o)
    bint PyBytes_CheckExact(object o)
    char *PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    PyObject *Py_True


ctypedef struct Slot:
    PyObject *member     # the caller's object for this subscriber (owned)
    PyObject *write      # transport.write, bound once (owned)
    PyObject *buffered   # transport.get_write_buffer_size (owned)
    PyObject *closing    # transport.is_closing (owned)
    int fd               # the socket of a plain TCP transport, else -1 (always write())


cdef inline void _clear(Slot *s) noexcept:
    Py_XDECREF(s.member)
    Py_XDECREF(s.write)
    Py_XDECREF(s.buffered)
    Py_XDECREF(s.closing)
    s.member = s.write = s.buffered = s.closing = NULL


cdef int _socket_fd(object transport) except -2:
    # Only a transport that writes the socket's bytes as they are: not TLS, not a pipe.
    get = getattr(transport, "get_extra_info", None)
    if get is None or get("sslcontext") is not None or get("ssl_object") is not None:
        return -1
    sock = get("socket")
    if sock is None:
        return -1
    try:
        return sock.fileno()
    except (AttributeError, OSError, ValueError):
        return -1


cdef class Broadcast:
    """Members (any hashable object, each with an asyncio transport) that get the same bytes."""

    cdef Slot *_slots
    cdef Py_ssize_t _n
    cdef Py_ssize_t _cap
    cdef dict _index      # member -> slot number
    cdef bint _sending
    cdef Py_ssize_t _holes  # slots emptied by discard() while send() was running
    cdef readonly unsigned long long writes

    def __cinit__(self):
        self._slots = NULL
        self._n = self._cap = self._holes = 0
        self._index = {}
        self._sending = False
        self.writes = 0

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self._slots != NULL:
            for i in range(self._n):
                _clear(&self._slots[i])
            PyMem_Free(self._slots)

    def __len__(self):
        return len(self._index)

    def __contains__(self, member):
        return member in self._index

    @property
    def members(self):
        """The members, in no particular order."""
        return list(self._index)

    def add(self, member, transport):
        """Add a member writing to `transport`; a member already present keeps its slot."""
        if member in self._index:
            return
        write = transport.write
        buffered = transport.get_write_buffer_size
        closing = transport.is_closing
        cdef int fd = _socket_fd(transport)
        cdef Slot *grown
        if self._n == self._cap:
            cap = max(8, self._cap * 2)
            grown = <Slot *>PyMem_Realloc(self._slots, cap * sizeof(Slot))
            if grown == NULL:
                raise MemoryError()
            self._slots, self._cap = grown, cap
        cdef Slot *s = &self._slots[self._n]
        s.member, s.write = <PyObject *>member, <PyObject *>write
        s.buffered, s.closing = <PyObject *>buffered, <PyObject *>closing
        s.fd = fd
        Py_INCREF(member)
        Py_INCREF(write)
        Py_INCREF(buffered)
        Py_INCREF(closing)
        self._index[member] = self._n
        self._n += 1

    def discard(self, member):
        """Remove a member; return whether it was there (safe to call from inside send)."""
        i = self._index.pop(member, None)
        if i is None:
            return False
        cdef Py_ssize_t at = i
        _clear(&self._slots[at])
        if self._sending:
            self._holes += 1  # compacted when send() returns: its loop holds slot numbers
        else:
            self._fill(at)
        return True

    cdef void _fill(self, Py_ssize_t at) noexcept:
        # Move the last slot into the hole (order among subscribers means nothing).
        self._n -= 1
        if at != self._n:
            self._slots[at] = self._slots[self._n]
            self._index[<object>self._slots[at].member] = at
        self._slots[self._n].member = NULL
        self._slots[self._n].write = NULL
        self._slots[self._n].buffered = NULL
        self._slots[self._n].closing = NULL

    cdef void _compact(self) noexcept:
        cdef Py_ssize_t i = self._n - 1
        while i >= 0 and self._holes:
            if self._slots[i].member == NULL:
                self._fill(i)
                self._holes -= 1
            i -= 1
        self._holes = 0

    def send(self, data, Py_ssize_t limit):
        """Write `data` to every member whose transport is open and holds under `limit` bytes.

        Returns the members it did not write to (closing, over the limit, or whose transport
        raised), for the caller to queue or close by its own policy. A raised error is cleared:
        the caller's slower path meets it again and decides.
        """
        if not PyBytes_CheckExact(data):
            raise StreamcoreTypeError(f"data must be bytes, not {type(data).__name__}")
        if limit < 0:
            raise StreamcoreValueError("limit must be >= 0")
        cdef list rest = []
        cdef Py_ssize_t i, n = self._n, size
        cdef const char *buf = PyBytes_AS_STRING(data)
        cdef Py_ssize_t length = PyBytes_GET_SIZE(data)
        cdef ssize_t sent
        cdef PyObject *r
        cdef Slot *s
        cdef bint closing
        self._sending = True
        try:
            for i in range(n):
                s = &self._slots[i]
                if s.member == NULL:
                    continue
                r = PyObject_CallNoArgs(s.closing)
                if r == NULL:
                    PyErr_Clear()
                    rest.append(<object>s.member)
                    continue
                closing = r == Py_True
                _decref(r)
                if closing:
                    rest.append(<object>s.member)
                    continue
                r = PyObject_CallNoArgs(s.buffered)
                if r == NULL:
                    PyErr_Clear()
                    rest.append(<object>s.member)
                    continue
                size = PyLong_AsSsize_t(r)
                _decref(r)
                if size == -1 and PyErr_Occurred() != NULL:
                    PyErr_Clear()
                    rest.append(<object>s.member)
                    continue
                if size >= limit:
                    rest.append(<object>s.member)
                    continue
                if size == 0 and s.fd >= 0:
                    # Nothing queued and not closing (so the fd is still this transport's).
                    sent = send(s.fd, buf, length, MSG_DONTWAIT | MSG_NOSIGNAL)
                    if sent == length:
                        self.writes += 1
                        continue
                    if sent < 0 and errno != EAGAIN and errno != EINTR:  # EWOULDBLOCK is EAGAIN
                        # A broken socket: the transport's own write meets the error and closes.
                        rest.append(<object>s.member)
                        continue
                    if sent > 0:
                        tail = data[sent:]
                        r = PyObject_CallOneArg(s.write, <PyObject *>tail)
                    else:
                        r = PyObject_CallOneArg(s.write, <PyObject *>data)
                else:
                    r = PyObject_CallOneArg(s.write, <PyObject *>data)
                if r == NULL:
                    PyErr_Clear()
                    # A write may have removed this very member (the transport's callbacks).
                    s = &self._slots[i]
                    if s.member != NULL:
                        rest.append(<object>s.member)
                    continue
                _decref(r)
                self.writes += 1
        finally:
            self._sending = False
            if self._holes:
                self._compact()
        return rest
