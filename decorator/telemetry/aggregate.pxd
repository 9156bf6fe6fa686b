# Types for the compiled build of aggregate.py (Cython pure-Python mode; the .py stays the source).
from decorator.proxy.hooks cimport Exchange

cdef class Endpoints:
    cdef public long max_endpoints
    cdef set _known
    cdef dict _cache
    cdef object _last_ex
    cdef tuple _last_key
    cpdef tuple key(self, Exchange ex)
    cpdef tuple _key(self, Exchange ex)
