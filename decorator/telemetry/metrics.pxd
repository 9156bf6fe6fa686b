# Types for the compiled build of metrics.py (Cython pure-Python mode; the .py stays the source).
cimport cython
from decorator.proxy.hooks cimport Exchange
from decorator.telemetry.aggregate cimport Endpoints

cdef class _Series:
    cdef public list buckets
    cdef public long long count
    cdef public double total

cdef class Metrics:
    cdef public object _registry, in_flight_count
    cdef public set in_flight
    cdef public bint _process, _registered
    cdef public Endpoints endpoints
    cdef public dict _series
    cdef public list _sources
    cdef public long long source_errors
    @cython.locals(s=_Series, status=int, seconds=double)
    cpdef observe(self, Exchange ex)
