"""lb._h2, the libnghttp2 binding, in isolation: a Session against the `h2` library (in memory,
no sockets) and against hand-written frames for the protections."""

import hashlib

import pytest

_h2 = pytest.importorskip("lb._h2", reason="lb._h2 not built (libnghttp2-dev missing)")
pytest.importorskip("h2")

import h2.errors  # noqa: E402
import h2.events as ev  # noqa: E402
from hyperframe.frame import (  # noqa: E402
    HeadersFrame,
)

from tests import h2_peers  # noqa: E402
from tests.h2_peers import (  # noqa: E402
    POST,
    REQUEST,
    Recorder,
    frames,
    goaway,
    h2_peer,
    handshake,
    pump,
    session,
)

RESPONSE = [(b"content-type", b"text/plain")]


def server_pair(**settings):
    rec = Recorder()
    s = session(_h2, True, rec, **settings)
    client = h2_peer(True)
    handshake(s, client)
    return s, rec, client


def client_pair(server_settings=None, **settings):
    rec = Recorder()
    s = session(_h2, False, rec, **settings)
    server = h2_peer(False, **(server_settings or {}))
    handshake(s, server)
    return s, rec, server


def raw_server(**settings):
    return h2_peers.raw_server(_h2, **settings)


def echo(s, rec):
    """Answer each request head with 200 and a short body."""

    def answer(sid, headers, end_stream):
        s.submit_response(sid, 200, RESPONSE)
        s.send_data(sid, b"ok %d" % sid, end_stream=True)

    rec.on_head = answer


# -- the module ---------------------------------------------------------------------------------


def test_module_info_and_error_codes():
    assert _h2.available()
    assert _h2.NGHTTP2_VERSION.startswith("1.")
    assert _h2.NGHTTP2_HEADER_VERSION
    codes = [
        "NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
        "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
        "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
    ]  # fmt: skip
    assert [getattr(_h2, c) for c in codes] == list(range(14))
    err = _h2.H2Error(_h2.ENHANCE_YOUR_CALM, "too many")
    assert err.code == 11 and str(err) == "ENHANCE_YOUR_CALM: too many"


def test_settings_are_checked():
    with pytest.raises(ValueError, match="unknown"):
        _h2.Session(Recorder(), server=True, settings={"max_streams": 1})
    with pytest.raises(ValueError, match="push"):
        _h2.Session(Recorder(), server=False, settings={"enable_push": 1})
    with pytest.raises(AttributeError):
        _h2.Session(object(), server=True)


# -- requests and responses -------------------------------------------------------------------


def test_server_request_and_response_with_bodies():
    s, rec, client = server_pair()
    client.send_headers(1, [*POST, (b"x-a", b"1")])
    client.send_data(1, b"hello ", end_stream=False)
    client.send_data(1, b"world", end_stream=True)
    pump(s, client)
    assert rec.events[0] == ("headers", 1, [*POST, (b"x-a", b"1")], False)
    assert bytes(rec.body[1]) == b"hello world"
    assert rec.events[-1] == ("end", 1)
    s.submit_response(1, 201, RESPONSE)
    s.send_data(1, b"x" * 1000)
    s.send_data(1, b"y" * 1000, end_stream=True)
    events = pump(s, client)
    resp = [e for e in events if isinstance(e, ev.ResponseReceived)]
    assert resp[0].headers == [(b":status", b"201"), *RESPONSE]
    data = b"".join(e.data for e in events if isinstance(e, ev.DataReceived))
    assert data == b"x" * 1000 + b"y" * 1000
    assert any(isinstance(e, ev.StreamEnded) for e in events)
    assert rec.closed() == {1: _h2.NO_ERROR}
    assert s.open_streams() == 0


def test_client_request_and_response_with_bodies():
    s, rec, server = client_pair()
    sid = s.submit_request([*POST, (b"content-type", b"application/json")])
    assert sid == 1
    s.send_data(sid, b'{"a": 1}', end_stream=True)
    events = pump(s, server)
    req = next(e for e in events if isinstance(e, ev.RequestReceived))
    assert req.headers[:4] == POST
    assert b"".join(e.data for e in events if isinstance(e, ev.DataReceived)) == b'{"a": 1}'
    server.send_headers(sid, [(b":status", b"200"), (b"x-b", b"2")])
    server.send_data(sid, b"answer", end_stream=True)
    pump(s, server)
    assert rec.events[0] == ("headers", 1, [(b":status", b"200"), (b"x-b", b"2")], False)
    assert bytes(rec.body[1]) == b"answer"
    assert rec.events[-2:] == [("end", 1), ("close", 1, 0)]


def test_client_sees_informational_heads_then_the_final_one():
    s, rec, server = client_pair()
    sid = s.submit_request(REQUEST, end_stream=True)
    pump(s, server)
    server.send_headers(sid, [(b":status", b"103"), (b"link", b"</a.css>")])
    server.send_headers(sid, [(b":status", b"200")], end_stream=True)
    pump(s, server)
    heads = rec.kind("headers")
    assert heads == [
        ("headers", 1, [(b":status", b"103"), (b"link", b"</a.css>")], False),
        ("headers", 1, [(b":status", b"200")], True),
    ]


def test_trailers_grpc_style_from_the_server():
    s, rec, client = server_pair()
    client.send_headers(1, [*POST, (b"content-type", b"application/grpc"), (b"te", b"trailers")])
    client.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=False)
    client.send_headers(1, [(b"grpc-timeout", b"1S")], end_stream=True)  # request trailers
    pump(s, client)
    assert rec.kind("trailers") == [("trailers", 1, [(b"grpc-timeout", b"1S")])]
    assert [e[0] for e in rec.events] == ["headers", "data", "trailers", "end"]
    s.submit_response(1, 200, [(b"content-type", b"application/grpc")])
    s.send_data(1, b"\x00\x00\x00\x00\x02ok")
    s.send_trailers(1, [(b"grpc-status", b"0"), (b"grpc-message", b"")])
    events = pump(s, client)
    kinds = [type(e) for e in events if not isinstance(e, ev.WindowUpdated)]
    assert kinds[-4:] == [ev.ResponseReceived, ev.DataReceived, ev.TrailersReceived, ev.StreamEnded]
    trailers = next(e for e in events if isinstance(e, ev.TrailersReceived))
    assert trailers.headers == [(b"grpc-status", b"0"), (b"grpc-message", b"")]


def test_trailers_from_the_client_and_back():
    s, rec, server = client_pair()
    sid = s.submit_request([*POST, (b"te", b"trailers")])
    s.send_data(sid, b"body")
    s.send_trailers(sid, [(b"x-checksum", b"abc")])
    events = pump(s, server)
    assert [type(e) for e in events if type(e) in (ev.DataReceived, ev.TrailersReceived)] == [
        ev.DataReceived,
        ev.TrailersReceived,
    ]
    server.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    server.send_data(sid, b"resp")
    server.send_headers(sid, [(b"grpc-status", b"7")], end_stream=True)
    pump(s, server)
    assert [e[0] for e in rec.events] == ["headers", "data", "trailers", "end", "close"]
    assert rec.kind("trailers") == [("trailers", 1, [(b"grpc-status", b"7")])]


def test_trailers_wait_for_data_held_back_by_flow_control():
    s, _, client = server_pair()
    client.send_headers(1, REQUEST, end_stream=True)
    pump(s, client)
    body = bytes(range(256)) * 800  # 204,800 bytes: three windows' worth
    s.submit_response(1, 200, RESPONSE)
    s.send_data(1, body)
    s.send_trailers(1, [(b"x-done", b"1")])
    events = client.receive_data(s.output())  # the client acknowledges nothing yet
    got = sum(e.flow_controlled_length for e in events if isinstance(e, ev.DataReceived))
    assert got == 65535 and not any(isinstance(e, ev.TrailersReceived) for e in events)
    assert s.queued(1) == len(body) - 65535

    def ack(new):
        for e in new:
            if isinstance(e, ev.DataReceived):
                client.acknowledge_received_data(e.flow_controlled_length, e.stream_id)

    ack(events)
    events += pump(s, client, rounds=200, on_events=ack)
    data = [e for e in events if isinstance(e, ev.DataReceived)]
    assert b"".join(e.data for e in data) == body
    order = [type(e) for e in events if type(e) in (ev.DataReceived, ev.TrailersReceived)]
    assert order[-1] is ev.TrailersReceived and order.count(ev.TrailersReceived) == 1


# -- flow control and back-pressure --------------------------------------------------------


def test_peer_window_stays_closed_until_consume():
    rec = Recorder(auto_consume=False)
    s = session(_h2, True, rec)
    client = h2_peer(True)
    handshake(s, client)
    body = b"z" * 200_000
    client.send_headers(1, POST)
    sent = 0

    def send_what_the_window_allows():
        nonlocal sent
        for _ in range(100):
            n = min(client.local_flow_control_window(1), len(body) - sent, 16384)
            if n <= 0:
                return
            client.send_data(1, body[sent : sent + n], end_stream=sent + n == len(body))
            sent += n

    send_what_the_window_allows()
    pump(s, client)
    assert sent == 65535 and len(rec.body[1]) == 65535
    assert s.stream_local_window(1) == 0
    for _ in range(3):  # nothing opens the window by itself
        send_what_the_window_allows()
        pump(s, client)
    assert sent == 65535 and client.local_flow_control_window(1) == 0

    consumed = 0
    for _ in range(20):
        s.consume(1, len(rec.body[1]) - consumed)
        consumed = len(rec.body[1])
        pump(s, client)
        send_what_the_window_allows()
        pump(s, client)
        if sent == len(body):
            break
    assert bytes(rec.body[1]) == body
    assert rec.events[-1] == ("end", 1)


def test_unconsumed_bytes_of_a_closed_stream_go_back_to_the_connection():
    rec = Recorder(auto_consume=False)
    s = session(_h2, True, rec, connection_window_size=65535)
    client = h2_peer(True)
    handshake(s, client)
    client.send_headers(1, POST)
    for _ in range(4):
        client.send_data(1, b"a" * 15000)
    pump(s, client)
    assert client.outbound_flow_control_window == 65535 - 60000  # the connection's window
    client.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    pump(s, client)
    assert rec.closed() == {1: _h2.CANCEL}
    s.consume(1, 60000)  # too late: a no-op, not double credit
    pump(s, client)
    assert client.outbound_flow_control_window == 65535


def test_send_back_pressure_and_on_drained():
    s, rec, client = server_pair(send_high_water=100_000, send_low_water=10_000)
    client.send_headers(1, REQUEST, end_stream=True)
    pump(s, client)
    s.submit_response(1, 200, RESPONSE)
    assert s.send_data(1, b"a" * 50_000) is True
    assert s.send_data(1, b"b" * 60_000) is False  # 110,000 queued: pause the source
    assert s.queued(1) == 110_000
    received = bytearray()

    def ack(new):
        for e in new:
            if isinstance(e, ev.DataReceived):
                received.extend(e.data)
                client.acknowledge_received_data(e.flow_controlled_length, e.stream_id)

    rec.on_drain = lambda sid: s.send_data(sid, b"c" * 1000, end_stream=True)
    pump(s, client, rounds=100, on_events=ack)
    assert rec.kind("drained") == [("drained", 1)]
    assert bytes(received) == b"a" * 50_000 + b"b" * 60_000 + b"c" * 1000


def test_four_mib_each_way():
    body = hashlib.sha256(b"seed").digest() * (4 * 1024 * 1024 // 32)
    s, rec, client = server_pair()

    def on_head(sid, headers, end_stream):
        s.submit_response(sid, 200, RESPONSE)
        s.send_data(sid, body, end_stream=True)  # queued whole; framed as windows open

    rec.on_head = on_head
    client.send_headers(1, POST)
    sent = 0
    got = bytearray()

    def upload():
        nonlocal sent
        for _ in range(64):
            n = min(client.local_flow_control_window(1), len(body) - sent, 16384)
            if n <= 0:
                return
            client.send_data(1, body[sent : sent + n], end_stream=sent + n == len(body))
            sent += n

    def step(new):
        for e in new:
            if isinstance(e, ev.DataReceived):
                got.extend(e.data)
                client.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
        upload()

    upload()
    pump(s, client, rounds=5000, on_events=step)
    assert sent == len(body) and len(got) == len(body)
    assert hashlib.sha256(rec.body[1]).digest() == hashlib.sha256(body).digest()
    assert hashlib.sha256(got).digest() == hashlib.sha256(body).digest()
    assert rec.closed() == {1: 0} and s.open_streams() == 0


def test_client_uploads_four_mib():
    body = b"0123456789abcdef" * (4 * 1024 * 1024 // 16)
    s, rec, server = client_pair()
    sid = s.submit_request(POST)
    assert s.send_data(sid, body, end_stream=True) is False
    got = bytearray()

    def ack(new):
        for e in new:
            if isinstance(e, ev.DataReceived):
                got.extend(e.data)
                server.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            if isinstance(e, ev.StreamEnded):
                server.send_headers(e.stream_id, [(b":status", b"204")], end_stream=True)

    pump(s, server, rounds=2000, on_events=ack)
    assert got == body
    assert rec.kind("drained") == [("drained", sid)]
    assert rec.closed() == {sid: 0}


# -- many streams, memory -----------------------------------------------------------------------


def test_many_concurrent_streams_server():
    s, rec, client = server_pair()
    echo(s, rec)
    for i in range(100):
        client.send_headers(1 + 2 * i, REQUEST, end_stream=True)
    events = pump(s, client)
    ended = {e.stream_id for e in events if isinstance(e, ev.StreamEnded)}
    assert ended == {1 + 2 * i for i in range(100)}
    assert len(rec.kind("close")) == 100 and s.open_streams() == 0


def test_many_concurrent_streams_client_and_the_peer_limit():
    s, rec, server = client_pair(server_settings={"max_concurrent_streams": 50})
    assert s.remote_max_concurrent_streams() == 50
    sids = [s.submit_request(REQUEST, end_stream=True) for _ in range(50)]
    assert s.open_streams() == 50
    with pytest.raises(_h2.H2Error) as err:
        s.submit_request(REQUEST, end_stream=True)
    assert err.value.code == _h2.REFUSED_STREAM

    def answer(new):
        for e in new:
            if isinstance(e, ev.RequestReceived):
                server.send_headers(e.stream_id, [(b":status", b"200")], end_stream=True)

    pump(s, server, on_events=answer)
    assert sorted(rec.closed()) == sids and s.open_streams() == 0
    assert s.submit_request(REQUEST, end_stream=True) == 101


# -- resets and GOAWAY --------------------------------------------------------------------------


def test_refused_stream_from_the_peer_shows_in_on_stream_close():
    s, rec, server = client_pair()
    sid = s.submit_request(REQUEST, end_stream=True)
    pump(s, server)
    server.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
    pump(s, server)
    assert rec.closed() == {sid: _h2.REFUSED_STREAM}


def test_reset_from_both_sides():
    s, rec, client = server_pair()
    client.send_headers(1, POST)
    client.send_headers(3, POST)
    pump(s, client)
    client.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    pump(s, client)
    assert s.reset_stream(3, _h2.INTERNAL_ERROR) is True
    events = pump(s, client)
    assert [(e.stream_id, e.error_code) for e in events if isinstance(e, ev.StreamReset)] == [
        (3, h2.errors.ErrorCodes.INTERNAL_ERROR)
    ]
    assert rec.closed() == {1: _h2.CANCEL, 3: _h2.INTERNAL_ERROR}
    assert s.reset_stream(3) is False
    with pytest.raises(_h2.H2Error) as err:
        s.send_data(3, b"late")
    assert err.value.code == _h2.STREAM_CLOSED


def test_graceful_shutdown_in_two_phases():
    s, rec, raw = raw_server()
    s.receive(raw.headers(1))
    s.shutdown_notice()
    notice = goaway(s.output())
    assert (notice.last_stream_id, notice.error_code) == (2**31 - 1, 0)
    s.receive(raw.headers(3))  # in flight when the notice left: still served
    assert s.last_proc_stream_id() == 3
    s.goaway()
    final = goaway(s.output())
    assert (final.last_stream_id, final.error_code) == (3, 0)
    s.receive(raw.headers(5))  # after the final GOAWAY: not processed
    assert [e[1] for e in rec.kind("headers")] == [1, 3]
    assert s.want_read()
    for sid in (1, 3):
        s.submit_response(sid, 200, RESPONSE, end_stream=True)
    out = frames(s.output())
    assert sorted(f.stream_id for f in out if isinstance(f, HeadersFrame)) == [1, 3]
    assert s.is_closed()


def test_client_learns_from_goaway_which_streams_to_retry():
    s, rec, server = client_pair()
    sids = [s.submit_request(REQUEST, end_stream=True) for _ in range(3)]
    pump(s, server)
    server.send_headers(1, [(b":status", b"200")], end_stream=True)
    server.close_connection(error_code=0, last_stream_id=1)
    s.receive(server.data_to_send())
    assert rec.kind("goaway") == [("goaway", 0, 1)]
    assert rec.closed() == {1: 0, sids[1]: _h2.REFUSED_STREAM, sids[2]: _h2.REFUSED_STREAM}
    with pytest.raises(_h2.H2Error) as err:
        s.submit_request(REQUEST, end_stream=True)
    assert err.value.code == _h2.REFUSED_STREAM
    s.output()
    assert s.is_closed()


def test_goaway_with_an_error_ends_the_connection():
    s, rec, client = server_pair()
    client.send_headers(1, REQUEST)
    pump(s, client)
    s.goaway(_h2.INTERNAL_ERROR)
    g = goaway(s.output())
    assert (g.error_code, g.last_stream_id) == (_h2.INTERNAL_ERROR, 1)
    assert s.is_closed() and s.error is None
    s.close()
    assert rec.closed() == {1: _h2.CANCEL}


def test_ping_and_its_ack():
    s, _, client = server_pair()
    s.ping()
    events = pump(s, client)
    assert any(isinstance(e, ev.PingReceived) for e in events)
    client.ping(b"12345678")
    events = pump(s, client)
    assert any(isinstance(e, ev.PingAckReceived) for e in events)


def test_delegate_exception_ends_the_connection_and_is_reraised():
    s, rec, client = server_pair()

    def boom(*a):
        raise LookupError("delegate bug")

    rec.on_head = boom
    client.send_headers(1, REQUEST, end_stream=True)
    with pytest.raises(LookupError, match="delegate bug"):
        s.receive(client.data_to_send())
    assert goaway(s.output()).error_code == _h2.INTERNAL_ERROR
    assert s.is_closed()
    s.receive(b"more bytes in flight")  # ignored once dead
    s.close()
    assert rec.closed() == {1: _h2.INTERNAL_ERROR}


def test_outgoing_connection_specific_headers_are_dropped():
    s, _, client = server_pair()
    client.send_headers(1, REQUEST, end_stream=True)
    pump(s, client)
    hop = [(b"Connection", b"close"), (b"transfer-encoding", b"chunked"), (b"te", b"gzip")]
    s.submit_response(1, 200, [*hop, (b"X-Kept", b"1")], end_stream=True)
    events = pump(s, client)  # h2 would raise on a connection-specific field
    resp = next(e for e in events if isinstance(e, ev.ResponseReceived))
    assert resp.headers == [(b":status", b"200"), (b"x-kept", b"1")]


# -- the calling contract ----------------------------------------------------------------------


def test_delegate_exception_while_sending_is_raised_from_output():
    class BadClose(Recorder):
        def on_stream_close(self, stream_id, error_code):
            raise KeyError("close handler")

    s = session(_h2, True, BadClose())  # the delegate's methods are bound once, here
    client = h2_peer(True)
    handshake(s, client)
    client.send_headers(1, REQUEST, end_stream=True)
    pump(s, client)
    s.submit_response(1, 204, [], end_stream=True)  # the stream closes once this is sent
    with pytest.raises(KeyError):
        s.output()
    assert goaway(s.output()).error_code == _h2.INTERNAL_ERROR


def test_on_drained_exception_propagates_and_the_session_lives_on():
    s, rec, client = server_pair(send_high_water=1000, send_low_water=0)
    client.send_headers(1, REQUEST, end_stream=True)
    pump(s, client)

    def drained(sid):
        raise ValueError("resume failed")

    rec.on_drain = drained
    s.submit_response(1, 200, RESPONSE)
    assert s.send_data(1, b"q" * 2000) is False
    with pytest.raises(ValueError):
        s.output()
    assert s.error is None
    s.send_data(1, b"", end_stream=True)
    events = pump(s, client)
    assert any(isinstance(e, ev.StreamEnded) for e in events)


def test_reentry_from_a_callback():
    s, rec, client = server_pair()
    seen = []

    def on_head(sid, headers, end_stream):
        seen.append(s.output())  # inside receive(): nothing yet, the outer call collects it
        s.submit_response(sid, 200, RESPONSE, end_stream=True)
        s.receive(b"")  # not allowed

    rec.on_head = on_head
    client.send_headers(1, REQUEST, end_stream=True)
    with pytest.raises(RuntimeError, match="own callbacks"):
        s.receive(client.data_to_send())
    assert seen == [b""]


def test_buffers_other_than_bytes():
    s, _, client = server_pair()
    client.send_headers(1, REQUEST, end_stream=True)
    s.receive(bytearray(client.data_to_send()))
    buf = bytearray(b"abc")
    s.submit_response(1, 200, RESPONSE)
    s.send_data(1, memoryview(buf))
    buf[:] = b"XYZ"  # the session copied it
    s.send_data(1, b"", end_stream=True)
    events = client.receive_data(memoryview(s.output()))
    assert b"".join(e.data for e in events if isinstance(e, ev.DataReceived)) == b"abc"


def test_server_sends_100_continue_before_the_response():
    s, rec, client = server_pair()
    client.send_headers(1, [*POST, (b"expect", b"100-continue")])
    pump(s, client)
    s.submit_response(1, 100, [])
    events = pump(s, client)
    assert [e.headers for e in events if isinstance(e, ev.InformationalResponseReceived)] == [
        [(b":status", b"100")]
    ]
    client.send_data(1, b"payload", end_stream=True)
    pump(s, client)
    s.submit_response(1, 200, [], end_stream=True)
    events = pump(s, client)
    assert [e.headers for e in events if isinstance(e, ev.ResponseReceived)] == [
        [(b":status", b"200")]
    ]
    assert bytes(rec.body[1]) == b"payload"


def test_misuse_is_reported():
    s, _, client = server_pair()
    client.send_headers(1, REQUEST, end_stream=True)
    pump(s, client)
    with pytest.raises(_h2.H2Error):
        s.submit_request(REQUEST)
    with pytest.raises(TypeError):
        s.submit_response(1, 200, [("content-type", "text/plain")])
    s.submit_response(1, 200, [], end_stream=True)
    with pytest.raises(_h2.H2Error) as err:
        s.submit_response(1, 200, [])
    assert err.value.code == _h2.INTERNAL_ERROR
    with pytest.raises(_h2.H2Error):
        s.send_data(1, b"after the end")
    with pytest.raises(_h2.H2Error):
        s.submit_response(99, 200, [])
