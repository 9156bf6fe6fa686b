# Types for the compiled build of compile.py (Cython pure-Python mode; the .py stays the source).
cimport cython
from decorator.proxy.hooks cimport Exchange

cdef class _Entry:
    cdef public long order
    cdef public object rule, name, matches
    cdef public bint always, count_hit
    cdef public list fns, repliers, editors

cdef class Dispatch:
    cdef public object _other, firsts, always_other
    cdef public dict _by_method, always_by_method
    cdef public bint empty
    cpdef object lookup(self, str method, str path)

cdef class CompletePhase:
    cdef public list table
    cdef public dict hits
    cdef public object trace, failed
    @cython.locals(d=Dispatch, e=_Entry, status=int, hits=dict)
    cpdef run(self, Exchange ex)
