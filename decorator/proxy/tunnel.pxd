# Types for the compiled build of tunnel.py (Cython pure-Python mode; the .py stays the source).
from decorator.proxy.exchange cimport Downstream, Flow, Host
from decorator.proxy.upstream cimport UpstreamConnection
from decorator.proxy.http cimport check_request

cdef class ProxyServer(Host):
    cdef public object target, connections, _server, _ticker, idle
    cdef public int port

cdef class ClientConnection(Downstream):
    cdef public object limits, parser, tunnel_to, queue, _writable
    cdef public Flow parsing
    cdef public bytes _url
    cdef public bint in_head, lingering
    cdef public int paused
    cdef public long long head_bytes
    cdef public double write_paused_since, last_read, idle_since, head_start
    cdef public object _headers  # a list, or the trailer sink (a list subclass)
    cpdef flush(self)
    cpdef abort(self)
    cpdef close(self)
    cpdef exchange_finished(self, Flow flow)
    cpdef pause_for_buffer(self)
    cpdef resume_after_buffer(self)
    cpdef pause_for_upstream(self)
    cpdef resume_for_upstream(self)
    cpdef become_tunnel(self, UpstreamConnection up, bytes rest, bytes early)
    cpdef _start_next(self)
    cpdef _pause(self, int reason)
    cpdef _resume(self, int reason)
