# nghttp2's callbacks for lb._h2, included by ext/h2.pyx.
#
# Each is a C function that finds its Session through user_data. A Python exception must not
# cross nghttp2's C frames: it is kept on the session, the callback returns
# NGHTTP2_ERR_CALLBACK_FAILURE (nghttp2 stops at once and returns that code), and
# receive()/output() re-raise it. A protection that trips does the same with _trip().

from libc.string cimport memcpy


cdef int _set_callbacks(nghttp2_session_callbacks *cbs) except -1:
    nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, _cb_begin_frame)
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, _cb_begin_headers)
    nghttp2_session_callbacks_set_on_header_callback(cbs, _cb_header)
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, _cb_frame_recv)
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, _cb_data_chunk)
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, _cb_stream_close)
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, _cb_frame_send)
    return 0


cdef int _keep(Session self, object exc) noexcept:
    if self._exc is None:
        self._exc = exc
    return NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _trip(Session self, uint32_t code, str msg) noexcept:
    self._fail_code = code
    self._fail_msg = msg
    return NGHTTP2_ERR_CALLBACK_FAILURE


cdef int _count_reset(Session self) noexcept:
    """One stream reset caused by the peer, against a token bucket (CVE-2023-44487)."""
    cdef double now = _now()
    self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
    self._stamp = now
    if self._tokens < 1.0:
        return _trip(self, NGHTTP2_ENHANCE_YOUR_CALM, "too many stream resets")
    self._tokens -= 1.0
    return 0


cdef inline bint _informational(list headers):
    if not headers:
        return False
    name, value = headers[0]
    return name == b":status" and len(value) == 3 and value[0] == 49  # b"1"


cdef int _cb_begin_frame(nghttp2_session *s, const nghttp2_frame_hd *hd, void *ud) noexcept:
    cdef Session self = <Session>ud
    cdef int32_t sid = hd.stream_id
    if hd.type == NGHTTP2_PRIORITY and sid == 0:
        # With RFC 7540 priorities off nghttp2 drops PRIORITY frames unchecked; RFC 9113 6.3
        # still makes one on stream 0 a connection error.
        return _trip(self, NGHTTP2_PROTOCOL_ERROR, "PRIORITY on stream 0")
    if hd.type != NGHTTP2_HEADERS or not self.server or sid & 1 == 0:
        return 0
    if sid > self._max_peer_sid:
        self._max_peer_sid = sid
        return 0
    try:
        # Trailers on an open stream, a late frame on one we reset, or one past our GOAWAY
        # (nghttp2 ignores those) are fine; anything else reuses an id (RFC 9113 5.1.1).
        if sid in self._streams or sid in self._recent_resets or sid > self._goaway_sent_last:
            return 0
    except BaseException as exc:
        return _keep(self, exc)
    return _trip(self, NGHTTP2_PROTOCOL_ERROR, f"HEADERS on stream {sid}, an id already used")


cdef int _cb_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *ud) noexcept:
    cdef Session self = <Session>ud
    cdef int32_t sid = frame.hd.stream_id
    cdef _Stream st
    try:
        obj = self._streams.get(sid)
        if obj is None:
            if not self.server or frame.headers.cat != NGHTTP2_HCAT_REQUEST:
                self._cur = None
                return 0
            st = _Stream(sid)
            self._streams[sid] = st
        else:
            st = <_Stream>obj
        st.headers = None if st.rejected else []
        st.header_size = 0
        self._cur = st
    except BaseException as exc:
        return _keep(self, exc)
    return 0


cdef int _cb_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                    size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                    void *ud) noexcept:
    cdef Session self = <Session>ud
    cdef _Stream st = self._cur
    if st is None or st.headers is None or st.sid != frame.hd.stream_id:
        return 0
    st.header_size += namelen + valuelen + 32  # RFC 9113 6.5.2's accounting
    if st.header_size > self._max_header_list:
        # Keep decoding (HPACK state is per connection) but keep nothing; the reset counts
        # against the peer's reset budget when it is sent.
        st.headers = None
        st.rejected = True
        if nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, st.sid, _HEADER_LIST_TOO_LARGE) != 0:
            return NGHTTP2_ERR_CALLBACK_FAILURE
        return 0
    try:
        st.headers.append((name[:namelen], value[:valuelen]))
    except BaseException as exc:
        return _keep(self, exc)
    return 0


cdef int _cb_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *ud) noexcept:
    cdef Session self = <Session>ud
    cdef int32_t sid = frame.hd.stream_id
    cdef uint8_t t = frame.hd.type
    cdef bint end = (frame.hd.flags & NGHTTP2_FLAG_END_STREAM) != 0
    cdef _Stream st
    try:
        if t == NGHTTP2_DATA:
            if end:
                obj = self._streams.get(sid)
                if obj is not None and (<_Stream>obj).delivered and not (<_Stream>obj).rejected:
                    self._d_end(sid)
        elif t == NGHTTP2_HEADERS:
            obj = self._streams.get(sid)
            if obj is None or (<_Stream>obj).headers is None:
                return 0  # rejected, or a block nghttp2 decoded only to keep HPACK in step
            st = <_Stream>obj
            headers = st.headers
            st.headers = None
            self._cur = None
            if st.head_done:
                self._d_trailers(sid, headers)
            elif not self.server and _informational(headers):
                self._d_headers(sid, headers, False)
            else:
                st.head_done = True
                st.delivered = True
                self._d_headers(sid, headers, end)
            if end:
                self._d_end(sid)
        elif t == NGHTTP2_RST_STREAM:
            if self.server:
                return _count_reset(self)
        elif t == NGHTTP2_GOAWAY:
            self._goaway_recv = True
            self._d_goaway(frame.goaway.error_code, frame.goaway.last_stream_id)
    except BaseException as exc:
        return _keep(self, exc)
    return 0


cdef int _cb_data_chunk(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data,
                        size_t length, void *ud) noexcept:
    cdef Session self = <Session>ud
    cdef _Stream st
    try:
        obj = self._streams.get(sid)
        if obj is None or not (<_Stream>obj).delivered or (<_Stream>obj).rejected:
            # Nobody will consume() these: give the window back now.
            if nghttp2_session_consume(s, sid, length) != 0:
                return NGHTTP2_ERR_CALLBACK_FAILURE
            return 0
        st = <_Stream>obj
        st.unconsumed += length
        self._d_data(sid, data[:length])
    except BaseException as exc:
        return _keep(self, exc)
    return 0


cdef int _cb_stream_close(nghttp2_session *s, int32_t sid, uint32_t error_code,
                          void *ud) noexcept:
    cdef Session self = <Session>ud
    cdef _Stream st
    try:
        obj = self._streams.pop(sid, None)
        if obj is None:
            return 0
        st = <_Stream>obj
        if self._cur is st:
            self._cur = None
        if st.unconsumed:
            if nghttp2_session_consume_connection(s, st.unconsumed) != 0:
                return NGHTTP2_ERR_CALLBACK_FAILURE
        if st.delivered:
            self._d_close(sid, error_code)
    except BaseException as exc:
        return _keep(self, exc)
    return 0


cdef int _cb_frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *ud) noexcept:
    cdef Session self = <Session>ud
    cdef int32_t sid = frame.hd.stream_id
    cdef uint32_t code
    try:
        if frame.hd.type == NGHTTP2_RST_STREAM and self.server:
            recent = self._recent_resets
            recent[sid] = None
            if len(recent) > RECENT_RESETS:
                del recent[next(iter(recent))]
            obj = self._streams.get(sid)
            if obj is None or not (<_Stream>obj).user_reset:
                return _count_reset(self)  # nghttp2 or _cb_header reset it over the peer's frames
        elif frame.hd.type == NGHTTP2_GOAWAY:
            if frame.goaway.last_stream_id < self._goaway_sent_last:
                self._goaway_sent_last = frame.goaway.last_stream_id
            code = frame.goaway.error_code
            if code == NGHTTP2_NO_ERROR:
                return 0
            if code in self._user_goaway_codes:
                self._user_goaway_codes.remove(code)
            elif self._conn_error is None:
                # nghttp2 ended the connection over the peer's frames by itself.
                reason = frame.goaway.opaque_data[:frame.goaway.opaque_data_len]
                self._conn_error = H2Error(code, reason.decode("ascii", "replace"))
    except BaseException as exc:
        return _keep(self, exc)
    return 0


cdef ssize_t _cb_read(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t length,
                      uint32_t *data_flags, nghttp2_data_source *source, void *ud) noexcept:
    """The data provider: copy from the stream's queue, as much as nghttp2 may send now."""
    cdef Session self = <Session>ud
    cdef _Stream st
    cdef Py_ssize_t n = 0, take, avail, want = length
    cdef size_t nvlen
    cdef nghttp2_nv *nva
    cdef bytes chunk
    cdef list chunks
    cdef int rv
    try:
        obj = self._streams.get(sid)
        if obj is None:
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        st = <_Stream>obj
        chunks = st.chunks
        while n < want and st.queued > n:
            chunk = chunks[st.head]
            avail = PyBytes_GET_SIZE(chunk) - st.off
            take = min(avail, want - n)
            memcpy(buf + n, PyBytes_AS_STRING(chunk) + st.off, take)
            n += take
            if take == avail:
                chunks[st.head] = None
                st.head += 1
                st.off = 0
            else:
                st.off += take
        st.queued -= n
        if chunks is not None and st.head > 64 and st.head * 2 > len(chunks):
            del chunks[:st.head]  # a long-lived stream's list must not grow with sent entries
            st.head = 0
        if st.queued == 0 and chunks is not None:
            chunks.clear()
            st.head = 0
        if st.armed and st.queued <= self._low_water:
            st.armed = False
            self._drained.append(sid)
        if st.queued == 0 and st.ended:
            data_flags[0] |= NGHTTP2_DATA_FLAG_EOF
            if st.trailers is not None:
                # END_STREAM goes on the trailing HEADERS, which nghttp2 queues behind this
                # DATA frame: after every queued byte.
                data_flags[0] |= NGHTTP2_DATA_FLAG_NO_END_STREAM
                nva = _nva(st.trailers, None, &nvlen)
                rv = nghttp2_submit_trailer(s, sid, nva, nvlen)
                PyMem_Free(nva)
                if rv != 0:
                    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
            return n
        if n == 0:
            st.deferred = True
            return NGHTTP2_ERR_DEFERRED
        return n
    except BaseException as exc:
        return _keep(self, exc)
