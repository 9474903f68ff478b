# cython: language_level=3, cdivision=True
"""HTTP/2 framing, HPACK and stream state from libnghttp2, sans-IO (``lb._h2``).

One ``Session`` is one HTTP/2 connection, server side (clients) or client side (backends). It
never touches a socket: ``receive(data)`` feeds bytes read from the transport and fires the
delegate's callbacks synchronously; ``output()`` returns what must be written next.

Back-pressure, both ways
    Received DATA is acknowledged to the peer (WINDOW_UPDATE) only when the caller calls
    ``consume(stream_id, n)``, i.e. once it has passed the bytes on; the peer can never have more
    than a stream's window in flight, so a slow consumer slows the producer instead of filling
    memory. Unconsumed bytes of a stream that closes are returned to the connection window by the
    session itself (the caller could not consume them any more).
    Sent bodies are queued per stream by ``send_data`` and framed as the peer's windows allow;
    ``send_data`` returns False once a stream holds more than ``send_high_water`` unframed bytes,
    and ``on_drained(stream_id)`` fires once when it falls back to ``send_low_water``.
    ``receive`` moves what nghttp2 queued into the session's output buffer before returning
    (that is how it sees nghttp2's own connection errors), so nghttp2's ACK-flood limit
    (``max_outbound_ack``) applies within one read; across reads, the transport's buffer is
    what grows, and the caller bounds it as usual: pause reading while writes are paused.

Errors
    A connection error raises ``H2Error`` from ``receive`` (or ``output``) and leaves the GOAWAY
    to send in ``output()``; the session is then dead (``is_closed()`` once the output is taken).
    An exception raised by a delegate method ends the connection too (GOAWAY INTERNAL_ERROR) and
    is re-raised as itself. ``close()`` tells the session the transport is gone: every stream the
    delegate knows gets its ``on_stream_close``.

Protections beyond nghttp2's defaults: rapid reset (CVE-2023-44487) counted here, so that the
resets nghttp2 sends because of the peer (HTTP messaging errors, refused streams; the
"MadeYouReset" variant) count as well and the answer is ENHANCE_YOUR_CALM; HEADERS on a stream
id already used is a connection error (RFC 9113 section 5.1.1), which nghttp2 only ignores; the
decoded header list is limited to ``max_header_list_size`` (HPACK bomb).
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport INT32_MAX, int32_t, uint8_t, uint32_t
from posix.strings cimport strncasecmp
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from nghttp2 cimport *

import struct

include "h2_defs.pxi"


cdef class Session:
    """One HTTP/2 connection; see the module docstring."""

    cdef nghttp2_session *_s
    cdef readonly bint server
    cdef bint _busy            # inside nghttp2: output()/receive() must not re-enter it
    cdef bint _dead            # a fatal error: nghttp2 is never called again
    cdef dict _streams
    cdef list _out
    cdef list _drained
    cdef object _exc           # first exception from a delegate method, re-raised later
    cdef int _fail_code        # a protection tripped inside a callback; -1 when none
    cdef str _fail_msg
    cdef object _conn_error    # nghttp2 queued an error GOAWAY of its own
    cdef readonly object error  # the H2Error that ended the connection, or None
    cdef list _user_goaway_codes
    cdef bint _goaway_recv
    cdef int32_t _goaway_sent_last
    cdef int32_t _max_peer_sid
    cdef dict _recent_resets
    cdef _Stream _cur
    cdef Py_ssize_t _max_header_list, _high_water, _low_water
    cdef double _tokens, _burst, _rate, _stamp
    cdef object _d_headers, _d_trailers, _d_data, _d_end, _d_close, _d_goaway, _d_drained

    def __cinit__(self, delegate, *, bint server, settings=None):
        self._s = NULL
        self.server = server
        self._streams = {}
        self._out = []
        self._drained = []
        self._fail_code = -1
        self._user_goaway_codes = []
        self._goaway_sent_last = INT32_MAX
        self._recent_resets = {}
        self._d_headers = delegate.on_headers
        self._d_trailers = delegate.on_trailers
        self._d_data = delegate.on_data
        self._d_end = delegate.on_end_stream
        self._d_close = delegate.on_stream_close
        self._d_goaway = delegate.on_goaway
        self._d_drained = delegate.on_drained
        cfg = dict(DEFAULTS)
        for key, value in (settings or {}).items():
            if key not in DEFAULTS:
                raise ValueError(f"unknown HTTP/2 setting {key!r}")
            cfg[key] = int(value)
        if cfg["enable_push"]:
            raise ValueError("server push is not supported: enable_push must be 0")
        if not 0 <= cfg["initial_window_size"] <= INT32_MAX:
            raise ValueError("initial_window_size must be within 0..2**31-1")
        if not 16384 <= cfg["max_frame_size"] <= 16777215:
            raise ValueError("max_frame_size must be within 16384..16777215")
        if cfg["send_low_water"] > cfg["send_high_water"]:
            raise ValueError("send_low_water is above send_high_water")
        self._max_header_list = cfg["max_header_list_size"]
        self._high_water = cfg["send_high_water"]
        self._low_water = cfg["send_low_water"]
        self._burst = self._tokens = cfg["reset_burst"]
        self._rate = cfg["max_resets_per_second"]
        self._stamp = _now()
        self._open(cfg)
        self._flush()  # our preface is out first, even before a GOAWAY for a bad first read

    cdef int _open(self, dict cfg) except -1:
        cdef nghttp2_session_callbacks *cbs = NULL
        cdef nghttp2_option *opt = NULL
        cdef nghttp2_settings_entry iv[8]
        cdef size_t niv = 0
        cdef int rv
        if nghttp2_session_callbacks_new(&cbs) != 0:
            raise MemoryError()
        if nghttp2_option_new(&opt) != 0:
            nghttp2_session_callbacks_del(cbs)
            raise MemoryError()
        try:
            _set_callbacks(cbs)
            nghttp2_option_set_no_auto_window_update(opt, 1)  # consume() is the acknowledgement
            nghttp2_option_set_no_closed_streams(opt, 1)  # no priority tree to keep them for
            nghttp2_option_set_max_outbound_ack(opt, cfg["max_outbound_ack"])
            nghttp2_option_set_max_settings(opt, cfg["max_settings"])
            nghttp2_option_set_max_continuations(opt, cfg["max_continuations"])
            # nghttp2's own limiter (33/s by default) answers INTERNAL_ERROR and sees only
            # received RST_STREAM; ours counts more and must be the one that trips.
            nghttp2_option_set_stream_reset_rate_limit(
                opt, 2 * cfg["reset_burst"] + 1, 2 * cfg["max_resets_per_second"] + 1)
            if self.server:
                rv = nghttp2_session_server_new2(&self._s, cbs, <void *>self, opt)
            else:
                rv = nghttp2_session_client_new2(&self._s, cbs, <void *>self, opt)
        finally:
            nghttp2_session_callbacks_del(cbs)
            nghttp2_option_del(opt)
        if rv != 0:
            self._s = NULL
            raise _lib_error(rv, "nghttp2 session")
        iv[niv].settings_id = NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        iv[niv].value = cfg["max_concurrent_streams"]
        niv += 1
        iv[niv].settings_id = NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        iv[niv].value = cfg["initial_window_size"]
        niv += 1
        iv[niv].settings_id = NGHTTP2_SETTINGS_HEADER_TABLE_SIZE
        iv[niv].value = cfg["header_table_size"]
        niv += 1
        iv[niv].settings_id = NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE
        iv[niv].value = cfg["max_header_list_size"]
        niv += 1
        iv[niv].settings_id = NGHTTP2_SETTINGS_MAX_FRAME_SIZE
        iv[niv].value = cfg["max_frame_size"]
        niv += 1
        iv[niv].settings_id = NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES
        iv[niv].value = 1
        niv += 1
        if not self.server:
            iv[niv].settings_id = NGHTTP2_SETTINGS_ENABLE_PUSH
            iv[niv].value = 0
            niv += 1
        rv = nghttp2_submit_settings(self._s, NGHTTP2_FLAG_NONE, iv, niv)
        if rv != 0:
            raise _lib_error(rv, "SETTINGS")
        if cfg["connection_window_size"] > 65535:
            rv = nghttp2_session_set_local_window_size(
                self._s, NGHTTP2_FLAG_NONE, 0, min(cfg["connection_window_size"], INT32_MAX))
            if rv != 0:
                raise _lib_error(rv, "connection window")
        return 0

    def __dealloc__(self):
        if self._s != NULL:
            nghttp2_session_del(self._s)
            self._s = NULL

    # -- bytes in, bytes out ------------------------------------------------------------------

    def receive(self, data):
        """Feed bytes read from the transport; the delegate's callbacks fire before it returns."""
        cdef Py_buffer view
        cdef ssize_t rv
        if self._s == NULL or self._dead:
            return  # the connection already failed: what is still in flight is moot
        if self._busy:
            raise RuntimeError("Session.receive() called from one of its own callbacks")
        if PyBytes_CheckExact(data):
            self._busy = True
            rv = nghttp2_session_mem_recv(
                self._s, <const uint8_t *>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
            self._busy = False
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            self._busy = True
            rv = nghttp2_session_mem_recv(self._s, <const uint8_t *>view.buf, view.len)
            self._busy = False
            PyBuffer_Release(&view)
        if rv < 0:
            self._fatal(rv)
        self._flush()
        if self._conn_error is not None:
            self._dead = True
            self.error = self._conn_error
            self._conn_error = None
            raise self.error

    def output(self):
        """Everything to write to the transport now (b"" when nothing)."""
        if self._busy:
            return b""  # called from a callback: the outer receive()/output() collects it
        if self._s != NULL and not self._dead:
            self._flush()
            if self._conn_error is not None:
                self._dead = True
                self.error = self._conn_error
                self._conn_error = None
        if not self._out:
            return b""
        out = b"".join(self._out)
        self._out.clear()
        return out

    cdef int _flush(self) except -1:
        cdef const uint8_t *p
        cdef ssize_t n
        cdef int rounds
        for rounds in range(16):  # on_drained may queue more; a bound keeps a loop finite
            while True:
                self._busy = True
                n = nghttp2_session_mem_send(self._s, &p)
                self._busy = False
                if n <= 0:
                    break
                self._out.append(p[:n])
            if n < 0:
                self._fatal(n)
            if not self._drained:
                return 0
            self._fire_drained()
            if not nghttp2_session_want_write(self._s):
                return 0
        return 0

    cdef int _fire_drained(self) except -1:
        drained = self._drained
        self._drained = []
        first = None
        for sid in drained:
            if sid in self._streams:
                try:
                    self._d_drained(sid)
                except BaseException as exc:
                    if first is None:
                        first = exc
        if first is not None:
            raise first
        return 0

    cdef int _fatal(self, ssize_t rv) except -1:
        """nghttp2 failed hard (or a callback made it): answer GOAWAY by hand and raise."""
        cdef uint32_t code = NGHTTP2_INTERNAL_ERROR
        exc = self._exc
        self._exc = None
        if exc is not None:
            msg = "internal error"
        elif self._fail_code >= 0:
            code = self._fail_code
            msg = self._fail_msg
        elif rv == NGHTTP2_ERR_FLOODED:
            code = NGHTTP2_ENHANCE_YOUR_CALM
            msg = "flood of frames that need an answer"
        elif rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS:
            code = NGHTTP2_ENHANCE_YOUR_CALM
            msg = "too many CONTINUATION frames"
        elif rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC:
            code = NGHTTP2_PROTOCOL_ERROR
            msg = "not an HTTP/2 connection preface"
        else:
            msg = nghttp2_strerror(<int>rv).decode()
        self._die(code, msg)
        if exc is not None:
            raise exc
        raise self.error

    cdef _die(self, uint32_t code, str msg):
        # After a fatal error nghttp2's state may be mid-frame: it is not asked to frame the
        # GOAWAY; the frame is 9 + 8 bytes plus the reason as debug data.
        cdef int32_t last = nghttp2_session_get_last_proc_stream_id(self._s)
        debug = msg.encode("ascii", "replace")[:64]
        self._out.append(
            struct.pack(">I", 8 + len(debug))[1:]
            + struct.pack(">BBIII", NGHTTP2_GOAWAY, 0, 0, last, code)
            + debug
        )
        self._dead = True
        self.error = H2Error(code, msg)

    # -- state --------------------------------------------------------------------------------

    def want_read(self):
        return self._s != NULL and not self._dead and nghttp2_session_want_read(self._s) != 0

    def want_write(self):
        if self._out:
            return True
        return self._s != NULL and not self._dead and nghttp2_session_want_write(self._s) != 0

    def is_closed(self):
        """Neither side has anything more to say: close the transport."""
        return not self.want_read() and not self.want_write()

    def open_streams(self):
        return len(self._streams)

    def stream_ids(self):
        return list(self._streams)

    def remote_max_concurrent_streams(self):
        self._check()
        return nghttp2_session_get_remote_settings(
            self._s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS)

    def last_proc_stream_id(self):
        self._check()
        return nghttp2_session_get_last_proc_stream_id(self._s)

    def stream_remote_window(self, int32_t stream_id):
        """How many body bytes the peer lets us send on the stream now (-1: no such stream)."""
        self._check()
        return nghttp2_session_get_stream_remote_window_size(self._s, stream_id)

    def connection_remote_window(self):
        self._check()
        return nghttp2_session_get_remote_window_size(self._s)

    def stream_local_window(self, int32_t stream_id):
        """How many body bytes the peer may still send on the stream before our next
        WINDOW_UPDATE (-1: no such stream)."""
        self._check()
        return nghttp2_session_get_stream_local_window_size(self._s, stream_id)

    def queued(self, int32_t stream_id):
        """Bytes queued by send_data on the stream and not framed yet."""
        st = self._streams.get(stream_id)
        return 0 if st is None else (<_Stream>st).queued

    cdef int _check(self) except -1:
        if self._s == NULL:
            raise H2Error(NGHTTP2_INTERNAL_ERROR, "session closed")
        if self._dead:
            raise H2Error(self.error.code, "connection failed: " + self.error.message)
        return 0

    cdef _Stream _sending(self, int32_t stream_id):
        self._check()
        st = self._streams.get(stream_id)
        if st is None:
            raise H2Error(NGHTTP2_STREAM_CLOSED, f"stream {stream_id} is closed")
        if (<_Stream>st).ended:
            raise H2Error(NGHTTP2_STREAM_CLOSED, f"stream {stream_id} already ended")
        return <_Stream>st

    # -- sending ------------------------------------------------------------------------------

    def submit_response(self, int32_t stream_id, int status, headers, bint end_stream=False):
        """Server: the response head (1xx are sent as informational heads). Without end_stream
        the body follows through send_data()/send_trailers()."""
        cdef nghttp2_data_provider prd
        cdef nghttp2_nv *nva
        cdef size_t nvlen
        cdef int rv
        if not self.server:
            raise H2Error(NGHTTP2_INTERNAL_ERROR, "submit_response() on a client session")
        self._check()
        st = self._streams.get(stream_id)
        if st is None or not (<_Stream>st).delivered:
            raise H2Error(NGHTTP2_STREAM_CLOSED, f"stream {stream_id} is closed")
        cdef _Stream s = <_Stream>st
        if s.responded:
            raise H2Error(NGHTTP2_INTERNAL_ERROR, f"stream {stream_id} already has a response")
        headers = list(headers)
        nva = _nva(headers, str(status).encode(), &nvlen)
        try:
            if 100 <= status < 200:
                rv = nghttp2_submit_headers(
                    self._s, NGHTTP2_FLAG_NONE, stream_id, NULL, nva, nvlen, NULL)
            elif end_stream:
                if s.queued or s.trailers is not None:
                    raise H2Error(NGHTTP2_INTERNAL_ERROR, "end_stream with a body queued")
                s.ended = True
                rv = nghttp2_submit_response(self._s, stream_id, nva, nvlen, NULL)
            else:
                prd.source.ptr = NULL
                prd.read_callback = _cb_read
                s.provider = True
                rv = nghttp2_submit_response(self._s, stream_id, nva, nvlen, &prd)
        finally:
            PyMem_Free(nva)
        if rv < 0:
            raise _lib_error(rv, "response")
        if status >= 200:
            s.responded = True
        return None

    def submit_request(self, headers, bint end_stream=False):
        """Client: a request head (pseudo-headers first); returns its stream id."""
        cdef nghttp2_data_provider prd
        cdef nghttp2_nv *nva
        cdef size_t nvlen
        cdef int32_t sid
        if self.server:
            raise H2Error(NGHTTP2_INTERNAL_ERROR, "submit_request() on a server session")
        self._check()
        if self._goaway_recv or not nghttp2_session_check_request_allowed(self._s):
            raise H2Error(NGHTTP2_REFUSED_STREAM, "the connection takes no new streams")
        if len(self._streams) >= nghttp2_session_get_remote_settings(
                self._s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS):
            raise H2Error(NGHTTP2_REFUSED_STREAM, "the peer's max_concurrent_streams is reached")
        headers = list(headers)
        nva = _nva(headers, None, &nvlen)
        prd.source.ptr = NULL
        prd.read_callback = _cb_read
        try:
            sid = nghttp2_submit_request(
                self._s, NULL, nva, nvlen, NULL if end_stream else &prd, NULL)
        finally:
            PyMem_Free(nva)
        if sid < 0:
            raise _lib_error(sid, "request")
        cdef _Stream s = _Stream(sid)
        s.delivered = True
        s.ended = end_stream
        s.provider = not end_stream
        self._streams[sid] = s
        return sid

    def send_data(self, int32_t stream_id, data, bint end_stream=False):
        """Queue body bytes; False when the stream's queue is above send_high_water (pause the
        source until on_drained(stream_id))."""
        cdef _Stream s = self._sending(stream_id)
        if not PyBytes_CheckExact(data):
            data = bytes(data)  # the caller may reuse its buffer before the bytes are framed
        if PyBytes_GET_SIZE(data):
            if s.chunks is None:
                s.chunks = []
            s.chunks.append(data)
            s.queued += PyBytes_GET_SIZE(data)
        if end_stream:
            s.ended = True
        if s.queued > self._high_water:
            s.armed = True
        self._resume(s)
        return not s.armed

    def send_trailers(self, int32_t stream_id, headers):
        """End the stream with a trailing HEADERS frame, after every byte queued before."""
        cdef _Stream s = self._sending(stream_id)
        if not s.provider and (not self.server or s.responded):
            raise H2Error(NGHTTP2_INTERNAL_ERROR, f"stream {stream_id} has no body to end")
        s.trailers = list(headers)
        cdef size_t nvlen
        PyMem_Free(_nva(s.trailers, None, &nvlen))  # type errors now, not inside nghttp2
        s.ended = True
        self._resume(s)

    cdef int _resume(self, _Stream s) except -1:
        cdef int rv
        if s.deferred and s.provider:
            s.deferred = False
            rv = nghttp2_session_resume_data(self._s, s.sid)
            if rv != 0 and rv != NGHTTP2_ERR_INVALID_ARGUMENT:
                raise _lib_error(rv, "resume")
        return 0

    def consume(self, int32_t stream_id, Py_ssize_t n):
        """The caller passed n received body bytes on: let the peer send that much more."""
        cdef int rv
        if self._s == NULL or self._dead or n <= 0:
            return
        st = self._streams.get(stream_id)
        if st is None:
            return  # closed: its unconsumed bytes went back to the connection window then
        cdef _Stream s = <_Stream>st
        if n > s.unconsumed:
            n = s.unconsumed
        s.unconsumed -= n
        rv = nghttp2_session_consume(self._s, stream_id, n)
        if rv != 0:
            raise _lib_error(rv, "consume")

    def reset_stream(self, int32_t stream_id, uint32_t error_code=NGHTTP2_CANCEL):
        """RST_STREAM; False if the stream is already closed."""
        self._check()
        st = self._streams.get(stream_id)
        if st is None:
            return False
        cdef _Stream s = <_Stream>st
        s.user_reset = True
        s.chunks = None  # nothing queued will be sent
        s.queued = 0
        rv = nghttp2_submit_rst_stream(self._s, NGHTTP2_FLAG_NONE, stream_id, error_code)
        if rv != 0:
            raise _lib_error(rv, "RST_STREAM")
        return True

    def shutdown_notice(self):
        """Server: the first GOAWAY of a graceful shutdown (last stream id 2**31-1): the client
        stops opening streams, those in flight still arrive. goaway() follows a round trip
        later with the real last stream id."""
        if not self.server:
            raise H2Error(NGHTTP2_INTERNAL_ERROR, "shutdown_notice() on a client session")
        self._check()
        rv = nghttp2_submit_shutdown_notice(self._s)
        if rv != 0:
            raise _lib_error(rv, "GOAWAY")

    def goaway(self, uint32_t error_code=NGHTTP2_NO_ERROR, last_stream_id=None):
        """GOAWAY. NO_ERROR lets the streams up to last_stream_id (default: the last one
        processed) finish; any other code ends the connection once the frame is written."""
        cdef int32_t last
        self._check()
        if last_stream_id is None:
            last = nghttp2_session_get_last_proc_stream_id(self._s)
        else:
            last = last_stream_id
        if error_code == NGHTTP2_NO_ERROR:
            rv = nghttp2_submit_goaway(self._s, NGHTTP2_FLAG_NONE, last, error_code, NULL, 0)
        else:
            self._user_goaway_codes.append(error_code)
            rv = nghttp2_session_terminate_session2(self._s, last, error_code)
        if rv != 0:
            raise _lib_error(rv, "GOAWAY")

    def ping(self):
        self._check()
        rv = nghttp2_submit_ping(self._s, NGHTTP2_FLAG_NONE, NULL)
        if rv != 0:
            raise _lib_error(rv, "PING")

    def close(self, error_code=None):
        """The transport is gone: on_stream_close for every stream the delegate knows (with
        error_code, default the connection error's code or CANCEL), then free nghttp2."""
        if self._busy:
            raise RuntimeError("Session.close() called from one of its own callbacks")
        if error_code is None:
            error_code = self.error.code if self.error is not None else NGHTTP2_CANCEL
        streams = self._streams
        self._streams = {}
        self._cur = None
        if self._s != NULL:
            nghttp2_session_del(self._s)
            self._s = NULL
        first = None
        for sid, st in streams.items():
            if (<_Stream>st).delivered:
                try:
                    self._d_close(sid, error_code)
                except BaseException as exc:
                    if first is None:
                        first = exc
        if first is not None:
            raise first


include "h2_callbacks.pxi"
