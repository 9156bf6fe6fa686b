# Types for the compiled build of exchange.py (Cython pure-Python mode; the .py stays the source).
cimport cython
from decorator.proxy.hooks cimport Exchange
from decorator.proxy.http cimport RequestFraming, ResponseFraming
from decorator.proxy.upstream cimport UpstreamConnection, UpstreamPool
from decorator.proxy.driver cimport clean_headers, complete_phase, request_phase, response_phase
from decorator.proxy.http cimport add_headers, check_response, chunk, status_line

cdef class Flow
cdef class Downstream

cdef class Host:
    cdef public object active_hooks, limits, on_hook_error
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
    cdef public bint out_chunked, close_after, finished
    cdef public int retried
    cpdef _open(self, Downstream conn, bytes method, bytes url, str version, RequestFraming framing,
                str request_id)
    cpdef _req(self, int new)
    cpdef _up(self, int new)
    cpdef _resp(self, int new)
    cpdef start(self)
    cpdef request_body(self, bytes body)
    cpdef request_done(self)
    @cython.locals(conn=UpstreamConnection)
    cpdef _forward(self)
    @cython.locals(framing=RequestFraming, parts=list)
    cpdef bytes _upstream_head(self)
    @cython.locals(conn=Downstream, framing=RequestFraming)
    cpdef _attach(self, UpstreamConnection up)
    @cython.locals(up=UpstreamConnection, pool=UpstreamPool)
    cpdef _release_upstream(self, bint reusable)
    @cython.locals(conn=Downstream, status=int, no_body=bint, client11=bint, parts=list)
    cpdef _write_response_head(self, ResponseFraming rf)
    @cython.locals(out=list)
    cpdef up_body(self, bytes data)
    @cython.locals(rf=ResponseFraming, up=UpstreamConnection)
    cpdef up_complete(self)
    @cython.locals(rf=ResponseFraming, up=UpstreamConnection, head_only=bint, parts=list)
    cpdef up_headers(self, int status, bint keep_alive, list headers, list hop, long long content_length)
    cpdef up_flush(self)
    cpdef _maybe_finish(self)
    @cython.locals(srv=Host, conn=Downstream, now=double)
    cpdef _finish(self)
