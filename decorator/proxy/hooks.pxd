# Types for the compiled build of hooks.py (Cython pure-Python mode; the .py stays the source).
cdef class Exchange:
    cdef public long long bytes_in, bytes_out
    cdef public object client, error, method, path, query, request_headers, request_id
    cdef public object response_headers, route, scheme, state, target, version
    cdef public int status
    cdef public bint replaced, upgraded
    cdef public double t_end, t_response, t_start
    cpdef _begin(self, method, target, version, request_headers, client, scheme, request_id)

cdef class Reply:
    cdef public object body, file, headers, reason
    cdef public int status

cdef class Interest:
    cdef public dict by_key
    cdef public bint keyed
    cdef public object star
    cpdef bint wants(self, object key, str path)
