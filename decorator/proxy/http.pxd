# Types for the compiled build of http.py (Cython pure-Python mode; the .py stays the source).
cimport cython

cdef class RequestFraming:
    cdef public bint chunked, has_body, has_xff, has_xfp, keep_alive
    cdef public long long content_length
    cdef public object headers, host, request_id, upgrade

cdef class ResponseFraming:
    cdef public bint chunked, keep_alive
    cdef public long long content_length
    cdef public object headers

cdef dict _REQUEST_SPECIAL
cdef frozenset _NO_TOKENS

@cython.locals(name=bytes, value=bytes, f=RequestFraming, out=list)
cpdef RequestFraming check_request(bytes method, str version, list raw_headers)
cpdef ResponseFraming check_response(bint keep_alive, int status, list headers, list hop, long long content_length)
cpdef add_headers(list parts, list headers)
cpdef frozenset connection_tokens(bytes value)
cpdef bytes status_line(int status, reason=*)
cpdef bytes chunk(bytes data)
