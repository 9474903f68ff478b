# Augmenting declarations for exchange.py: compiled, Exchange is an extension type.
cimport cython

from lb.balancer.backend cimport Backend
from lb.balancer.service cimport Service
from lb.proxy.side cimport Downstream, Upstream
from lb.routing.route cimport Route
from lb.proxy.headers cimport RequestInfo, ResponseInfo


@cython.final
@cython.freelist(64)
cdef class Exchange:
    # the request, as the client side delivered it
    cdef public Downstream client
    cdef public bytes method
    cdef public bytes target
    cdef public str path
    cdef public str query
    cdef public RequestInfo info
    cdef public bint http10
    cdef public bint keep_alive
    cdef public bint upgrade
    cdef public object early
    cdef public bint req_done
    cdef public object trailers
    cdef public object mirror
    # its body: buffered for a connection or a retry, and how much of it went out
    cdef public list body_buf
    cdef public Py_ssize_t body_bytes
    cdef public bint body_sent
    cdef public bint replayable
    # routing and balancing: where it goes, and what its attempts used up
    cdef public Route route
    cdef public Service service
    cdef public object gate
    cdef public object guard
    cdef public object refused_by
    cdef public Backend backend
    cdef public Backend last_backend
    cdef public object upstream_name
    cdef public list tried
    cdef public long attempts
    cdef public long retries
    cdef public long retry_slots
    cdef public long redispatches
    cdef public object set_cookie
    # the attempt under way
    cdef public Upstream upstream
    cdef public long _paused_upstream
    cdef public double t_upstream
    # the response, as the client side was given it
    cdef public long status
    cdef public Py_ssize_t resp_bytes
    cdef public bint response_started
    cdef public bint response_done
    cdef public object encoder
    # the phase machine and the outcome
    cdef public long phase
    cdef public double t0
    cdef public object failure

    cpdef start(self)
    cpdef admitted(self)
    cpdef forward(self)
    @cython.locals(info=RequestInfo)
    cpdef dispatch(self)
    @cython.locals(info=RequestInfo, headers=list, forwarded=list)
    cpdef _send(self, Upstream conn)
    cpdef _await_response_head(self, Upstream conn)
    cpdef request_body(self, bytes chunk)
    cpdef request_complete(self, trailers)
    cpdef response_interim(self, long status, list headers)
    @cython.locals(fwd=list)
    cpdef response_head(self, Upstream conn, long status, ResponseInfo info)
    cpdef response_body(self, bytes chunk)
    cpdef response_end(self, trailers)
    cpdef double idle_timeout(self) except? -1.0
    cpdef response_finished(self, Upstream conn)
    cpdef delivered(self)
    cpdef hold_upstream(self, long reason)
    cpdef release_upstream(self, long reason)
    cpdef reply(self, long status, object body=*, object headers=*, object content_type=*)
    cpdef reply_error(self, long status, object headers=*)
    cpdef connected(self, Upstream conn, b)
    cpdef _drop_upstream(self)
    cpdef _give_back(self, b)
    cpdef _finish(self, bint ok)
