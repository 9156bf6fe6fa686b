# Types for the compiled build of driver.py (Cython pure-Python mode; the .py stays the source).
from decorator.proxy.hooks cimport Exchange, Interest

cdef object _call(object fn, Interest interest, object key, Exchange ex, object on_error)
cpdef object request_phase(object hooks, object ex, object on_error)
cpdef object response_phase(object hooks, object ex, object on_error)
cpdef complete_phase(object hooks, object ex, object on_error)
cpdef list clean_headers(object headers)
