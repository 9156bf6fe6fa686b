# Types for the compiled build of exchange.py (Cython pure-Python mode; the .py stays the source).
from decorator.proxy.hooks cimport Exchange
from decorator.proxy.http cimport RequestFraming, ResponseFraming
from decorator.proxy.upstream cimport UpstreamConnection, UpstreamPool
from decorator.proxy.driver cimport clean_headers, complete_phase, request_phase, response_phase, response_wanted
from decorator.proxy.http cimport check_response, chunk, serialize_headers, status_line

cdef class Flow
cdef class Downstream

cdef class Host:
    cdef public object active_hooks, limits
    cdef public UpstreamPool pool
    cdef public dict stats
    cdef public bint draining, access_log
    cpdef hook_failed(self, object fn, object ex)
    cpdef log_access(self, object ex, double now)

cdef class Downstream:
    cdef public Host server
    cdef public list out
    cdef public object transport, client
    cdef public bytes client_b, xff_line
    cdef public bint closed, draining, write_paused
    cdef public Flow active
    cpdef flush(self)
    cpdef abort(self)
    cpdef close(self)
    cpdef exchange_finished(self, Flow flow)
    cpdef pause_for_buffer(self)
    cpdef resume_after_buffer(self)
    cpdef pause_for_upstream(self)
    cpdef resume_for_upstream(self)
    cpdef become_tunnel(self, UpstreamConnection up, bytes rest, bytes early)

cdef class Flow(Exchange):
    cdef public Downstream conn
    cdef public Host server
    cdef public object hooks, reject, connect_task
    cdef public RequestFraming framing
    cdef public ResponseFraming resp
    cdef public UpstreamConnection up
    cdef public bytes bmethod, burl, upgrade_buf, up_head
    cdef public list body_buf
    cdef public long long buffered, discarded
    cdef public int req_state, up_state, resp_state
    cdef public double t_sent, t_last_up
    cdef public bint out_chunked, close_after, retried, finished
    cpdef _req(self, int new)
    cpdef _up(self, int new)
    cpdef _resp(self, int new)
    cpdef start(self)
    cpdef request_body(self, bytes body)
    cpdef request_done(self)
    cpdef _forward(self)
    cpdef bytes _upstream_head(self)
    cpdef _attach(self, UpstreamConnection up)
    cpdef _release_upstream(self, bint reusable)
    cpdef _write_response_head(self, ResponseFraming rf)
    cpdef up_body(self, bytes data)
    cpdef up_complete(self)
    cpdef up_flush(self)
    cpdef _maybe_finish(self)
    cpdef _finish(self)
