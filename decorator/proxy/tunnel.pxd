# Types for the compiled build of tunnel.py (Cython pure-Python mode; the .py stays the source).
cimport cython
from decorator.proxy.exchange cimport Downstream, Flow, Host
from decorator.proxy.http cimport RequestFraming
from decorator.proxy.upstream cimport UpstreamConnection
from decorator.proxy.http cimport check_request

cdef class RequestIds:
    cdef public str prefix, block
    cdef public unsigned long long n
    cdef tuple low_hex
    cpdef reseed(self)
    cpdef str next(self)

cdef RequestIds _ids
cpdef str new_request_id()

cdef class ProxyServer(Host):
    cdef public object target, connections, _server, _ticker, idle
    cdef public int port

cdef class ClientConnection(Downstream):
    cdef public object limits, parser, tunnel_to, queue, _writable
    cdef public Flow parsing
    cdef public bytes _url
    cdef public bint in_head, lingering, got_eof
    cdef public int paused
    cdef public long long head_bytes
    cdef public double write_paused_since, last_read, idle_since, head_start
    cdef public object _headers  # a list, or the trailer sink (a list subclass)
    @cython.locals(out=list)
    cpdef flush(self)
    cpdef abort(self)
    cpdef close(self)
    cpdef exchange_finished(self, Flow flow)
    cpdef pause_for_buffer(self)
    cpdef resume_after_buffer(self)
    cpdef pause_for_upstream(self)
    cpdef resume_for_upstream(self)
    cpdef become_tunnel(self, UpstreamConnection up, bytes rest, bytes early)
    @cython.locals(srv=Host, flow=Flow)
    cpdef _start_next(self)
    @cython.locals(flow=Flow, framing=RequestFraming, headers=list, url=bytes, method=bytes, version=str)
    cpdef on_headers_complete(self)
    @cython.locals(flow=Flow)
    cpdef on_message_complete(self)
    @cython.locals(now=double)
    cpdef data_received(self, bytes data)
    cpdef _pause(self, int reason)
    cpdef _resume(self, int reason)
