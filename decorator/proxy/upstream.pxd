# Types for the compiled build of upstream.py (Cython pure-Python mode; the .py stays the source).
cimport cython

cdef class UpstreamConnection:
    cdef public object pool, transport, parser, owner, tunnel_to
    cdef public bint closed, reused, paused
    cdef public double idle_since, last_read
    cdef object _sock
    cdef list _headers, _hop
    cdef long long _cl
    cdef bint _in_head, _mid, _skip_body, _answered, _ended

    @cython.locals(low=bytes)
    cpdef on_header(self, bytes name, bytes value)
    cpdef send(self, bytes data, bint head_request)
    cpdef write(self, bytes data)
    cpdef pause_reading(self)
    cpdef resume_reading(self)
    cpdef close(self)
    cpdef abort(self)
    cpdef head_done_for_head_request(self)

cdef class UpstreamPool:
    cdef public object host, port, idle, stats
    cdef public double connect_timeout, idle_timeout
    cdef public int max_idle
    cpdef UpstreamConnection take_idle(self)
    cpdef release(self, UpstreamConnection conn)
    cpdef discard(self, UpstreamConnection conn)
