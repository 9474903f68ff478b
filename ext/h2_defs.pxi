# Module-level definitions of lb._h2, included by ext/h2.pyx.

NO_ERROR = NGHTTP2_NO_ERROR
PROTOCOL_ERROR = NGHTTP2_PROTOCOL_ERROR
INTERNAL_ERROR = NGHTTP2_INTERNAL_ERROR
FLOW_CONTROL_ERROR = NGHTTP2_FLOW_CONTROL_ERROR
SETTINGS_TIMEOUT = NGHTTP2_SETTINGS_TIMEOUT
STREAM_CLOSED = NGHTTP2_STREAM_CLOSED
FRAME_SIZE_ERROR = NGHTTP2_FRAME_SIZE_ERROR
REFUSED_STREAM = NGHTTP2_REFUSED_STREAM
CANCEL = NGHTTP2_CANCEL
COMPRESSION_ERROR = NGHTTP2_COMPRESSION_ERROR
CONNECT_ERROR = NGHTTP2_CONNECT_ERROR
ENHANCE_YOUR_CALM = NGHTTP2_ENHANCE_YOUR_CALM
INADEQUATE_SECURITY = NGHTTP2_INADEQUATE_SECURITY
HTTP_1_1_REQUIRED = NGHTTP2_HTTP_1_1_REQUIRED

# A peer whose header list outgrows max_header_list_size is making us work for nothing (HPACK
# lets a few bytes decode to kilobytes); REFUSED_STREAM would invite a retry of the same request.
cdef enum:
    _HEADER_LIST_TOO_LARGE = NGHTTP2_ENHANCE_YOUR_CALM
HEADER_LIST_TOO_LARGE = _HEADER_LIST_TOO_LARGE

NGHTTP2_VERSION = nghttp2_version(0).version_str.decode()
NGHTTP2_HEADER_VERSION = NGHTTP2_COMPILED_VERSION.decode()

ERROR_NAMES = {
    NGHTTP2_NO_ERROR: "NO_ERROR",
    NGHTTP2_PROTOCOL_ERROR: "PROTOCOL_ERROR",
    NGHTTP2_INTERNAL_ERROR: "INTERNAL_ERROR",
    NGHTTP2_FLOW_CONTROL_ERROR: "FLOW_CONTROL_ERROR",
    NGHTTP2_SETTINGS_TIMEOUT: "SETTINGS_TIMEOUT",
    NGHTTP2_STREAM_CLOSED: "STREAM_CLOSED",
    NGHTTP2_FRAME_SIZE_ERROR: "FRAME_SIZE_ERROR",
    NGHTTP2_REFUSED_STREAM: "REFUSED_STREAM",
    NGHTTP2_CANCEL: "CANCEL",
    NGHTTP2_COMPRESSION_ERROR: "COMPRESSION_ERROR",
    NGHTTP2_CONNECT_ERROR: "CONNECT_ERROR",
    NGHTTP2_ENHANCE_YOUR_CALM: "ENHANCE_YOUR_CALM",
    NGHTTP2_INADEQUATE_SECURITY: "INADEQUATE_SECURITY",
    NGHTTP2_HTTP_1_1_REQUIRED: "HTTP_1_1_REQUIRED",
}


def available() -> bool:
    """True: importing this module is the test (``lb._h2`` is only built with libnghttp2)."""
    return True


class H2Error(Exception):
    """An HTTP/2 error: ``code`` is the RFC 9113 error code, ``message`` says why."""

    def __init__(self, code, message=""):
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self):
        name = ERROR_NAMES.get(self.code, str(self.code))
        return f"{name}: {self.message}" if self.message else name


class Delegate:
    """The callbacks a Session makes, looked up once when the Session is made; subclass and
    override what you need. They run synchronously inside receive(), output() and close().

    on_headers(stream_id, headers, end_stream)
        A head: the request (server), or a response (client; each 1xx too, with end_stream
        False, before the final one). headers is [(name, value)] of bytes, names lower-case,
        pseudo-headers included, in the order received.
    on_trailers(stream_id, headers)
        Trailing HEADERS; on_end_stream follows.
    on_data(stream_id, data)
        Body bytes. Call Session.consume(stream_id, len(data)) once they are passed on, or
        the peer's window stays shut.
    on_end_stream(stream_id)
        END_STREAM from the peer (after on_headers or on_trailers too).
    on_stream_close(stream_id, error_code)
        The stream is gone: NO_ERROR when complete, else the RST_STREAM code (the peer's or
        ours), REFUSED_STREAM for client streams above a GOAWAY's last stream id (not
        processed: safe to retry). Only for streams the delegate saw (server) or opened (client).
    on_goaway(error_code, last_stream_id)
        The peer's GOAWAY. On a client, the streams above last_stream_id close next.
    on_drained(stream_id)
        The stream's send queue fell to send_low_water after send_data returned False.

    A callback may call the Session's submit, send, consume and reset methods; receive() is
    refused there and output() returns b"" (the outer call collects the bytes).
    """

    def on_headers(self, stream_id, headers, end_stream):
        pass

    def on_trailers(self, stream_id, headers):
        pass

    def on_data(self, stream_id, data):
        pass

    def on_end_stream(self, stream_id):
        pass

    def on_stream_close(self, stream_id, error_code):
        pass

    def on_goaway(self, error_code, last_stream_id):
        pass

    def on_drained(self, stream_id):
        pass


DEFAULTS = {
    # SETTINGS sent to the peer
    "max_concurrent_streams": 100,
    "initial_window_size": 65535,
    "header_table_size": 4096,
    "max_header_list_size": 65536,
    "max_frame_size": 16384,
    "enable_push": 0,
    # the connection's receive window: larger than one stream's, or one slow stream stalls all
    "connection_window_size": 1 << 20,
    # rapid reset: a token bucket of stream resets caused by the peer
    "max_resets_per_second": 200,
    "reset_burst": 1000,
    # nghttp2's flood limits
    "max_continuations": 8,
    "max_outbound_ack": 1000,
    "max_settings": 32,
    # send-side back-pressure, per stream
    "send_high_water": 65536,
    "send_low_water": 16384,
}

# Streams we reset whose late frames (trailers in flight) must not read as reuse of an old id.
cdef enum:
    RECENT_RESETS = 512


cdef inline double _now() noexcept:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef object _lib_error(int rv, str what):
    cdef uint32_t code = NGHTTP2_INTERNAL_ERROR
    if rv == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE:
        code = NGHTTP2_REFUSED_STREAM
    elif rv == NGHTTP2_ERR_STREAM_CLOSED or rv == NGHTTP2_ERR_INVALID_STREAM_STATE:
        code = NGHTTP2_STREAM_CLOSED
    err = H2Error(code, f"{what}: {nghttp2_strerror(rv).decode()}")
    err.lib_error = rv
    return err


cdef bint _connection_specific(bytes name, bytes value):
    """RFC 9113 section 8.2.2: these never go on an HTTP/2 wire (te only as 'trailers')."""
    cdef const char *p = PyBytes_AS_STRING(name)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
    if n == 2:
        return strncasecmp(p, b"te", 2) == 0 and value.lower() != b"trailers"
    if n == 7:
        return strncasecmp(p, b"upgrade", 7) == 0
    if n == 10:
        return strncasecmp(p, b"connection", 10) == 0 or strncasecmp(p, b"keep-alive", 10) == 0
    if n == 16:
        return strncasecmp(p, b"proxy-connection", 16) == 0
    if n == 17:
        return strncasecmp(p, b"transfer-encoding", 17) == 0
    return False


cdef nghttp2_nv *_nva(list headers, bytes status, size_t *count) except NULL:
    """Header list -> nghttp2_nv array pointing into the bytes objects, which the caller keeps
    alive for the submit call (nghttp2 copies, and lower-cases names, while submitting)."""
    cdef Py_ssize_t n = len(headers) + 1
    cdef nghttp2_nv *nva = <nghttp2_nv *>PyMem_Malloc(n * sizeof(nghttp2_nv))
    cdef size_t i = 0
    if nva == NULL:
        raise MemoryError()
    try:
        if status is not None:
            _nv(&nva[0], b":status", status)
            i = 1
        for item in headers:
            name, value = item
            if not PyBytes_CheckExact(name) or not PyBytes_CheckExact(value):
                raise TypeError(f"header fields are (bytes, bytes), not {item!r}")
            if _connection_specific(name, value):
                continue
            _nv(&nva[i], name, value)
            i += 1
    except BaseException:
        PyMem_Free(nva)
        raise
    count[0] = i
    return nva


cdef inline void _nv(nghttp2_nv *nv, bytes name, bytes value) noexcept:
    nv.name = <uint8_t *>PyBytes_AS_STRING(name)
    nv.namelen = PyBytes_GET_SIZE(name)
    nv.value = <uint8_t *>PyBytes_AS_STRING(value)
    nv.valuelen = PyBytes_GET_SIZE(value)
    nv.flags = NGHTTP2_NV_FLAG_NONE


@cython.freelist(64)
cdef class _Stream:
    """What the session keeps per open stream; dropped when nghttp2 closes the stream."""

    cdef int32_t sid
    cdef list chunks            # bytes from send_data, oldest first; None until the first
    cdef Py_ssize_t head        # chunks[:head] are fully framed
    cdef Py_ssize_t off         # bytes of chunks[head] already framed
    cdef Py_ssize_t queued      # bytes not yet framed
    cdef list trailers          # sent after the last queued byte, when not None
    cdef list headers           # the header block being received
    cdef Py_ssize_t header_size
    cdef Py_ssize_t unconsumed  # received DATA the caller has not consume()d
    cdef bint ended             # nothing more will be queued
    cdef bint provider          # nghttp2 reads this stream's body through _cb_read
    cdef bint deferred          # _cb_read said NGHTTP2_ERR_DEFERRED: resume on more data
    cdef bint armed             # above high water: on_drained is owed
    cdef bint rejected          # reset by us for its header list: deliver nothing more
    cdef bint delivered         # the delegate knows this stream, so on_stream_close is owed
    cdef bint head_done         # the final head arrived; the next header block is trailers
    cdef bint responded         # server: final response submitted
    cdef bint user_reset        # reset_stream() was called: not the peer's doing

    def __cinit__(self, int32_t sid):
        self.sid = sid
