# Augmenting declarations for listener.py: compiled, ListenerRuntime is an extension type, so
# the client sides read the listener's settings as C fields.
cimport cython

from lb.routing.route cimport Route


@cython.final
cdef class ListenerRuntime:
    cdef public object runtime
    cdef public object loop
    cdef public object tls
    cdef public set connections
    cdef public set tunnels
    cdef public long long accepted
    cdef public object cfg
    cdef public str name
    cdef public object timeouts
    cdef public object max_header_size
    cdef public object max_body_size
    cdef public str scheme
    cdef public tuple proto_header
    cdef public bytes default_host
    cdef public bint http1
    cdef public bint h2
    cdef public object http2
    cdef public object h2_settings
    cdef public double h2_idle
    cdef public Route forced_route
    cdef public object client_caps
    cdef public bytes client_cert_header
