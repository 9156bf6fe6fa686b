# Types for the compiled build of aggregate.py (Cython pure-Python mode; the .py stays the source).
cimport cython
from decorator.proxy.hooks cimport Exchange

cdef class Endpoints:
    cdef public long max_endpoints
    cdef long _paths
    cdef set _known
    cdef public dict _cache
    cdef object _last_ex
    cdef tuple _last_key
    cpdef tuple key(self, Exchange ex)
    cpdef tuple _key(self, Exchange ex)

cdef class _Stat:
    cdef public object base, endpoint, method
    cdef public list buckets, status
    cdef public long long bytes_in, bytes_out, count
    cdef public bint file
    cdef public double lat_sum

cdef class Aggregator:
    cdef public Endpoints endpoints
    cdef public dict _stats
    cdef public set _dirty
    cdef public object _ring, _last_ex
    cdef public long long _seq, _sent_seq, errors_total
    cdef public double _last_snapshot
    cdef public frozenset _last_fields
    @cython.locals(st=_Stat, status=int, ms=double, again=bint)
    cpdef _record(self, frozenset fields, Exchange ex)

cdef class FieldRecorder:
    cdef public Aggregator aggregator
    cdef public frozenset fields
    cpdef record(self, Exchange ex)
