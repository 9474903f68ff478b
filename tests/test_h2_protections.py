"""lb._h2's protections against a hostile peer, each driven by hand-written frames (hyperframe +
hpack): floods, rapid reset, stream id reuse, connection-specific fields, header list size; and
memory that stays bounded over many streams and sessions."""

import ctypes
import gc
import time
import tracemalloc

import pytest

_h2 = pytest.importorskip("lb._h2", reason="lb._h2 not built (libnghttp2-dev missing)")
pytest.importorskip("hyperframe")

from hyperframe.frame import (  # noqa: E402
    DataFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from tests.h2_peers import (  # noqa: E402
    POST,
    REQUEST,
    RawClient,
    frames,
    goaway,
    raw_server,
    session,
)

RESPONSE = [(b"content-type", b"text/plain")]


def server(**settings):
    return raw_server(_h2, **settings)


# -- protections (raw frames) ---------------------------------------------------------------------


def _expect_goaway(s, data, code):
    with pytest.raises(_h2.H2Error) as err:
        s.receive(data)
    assert err.value.code == code
    g = goaway(s.output())
    assert g.error_code == code
    assert s.is_closed()
    return g


def test_rapid_reset_is_answered_with_enhance_your_calm():
    s, _, raw = server(reset_burst=100, max_resets_per_second=10)
    attack = b"".join(raw.headers(2 * i + 1) + raw.rst(2 * i + 1) for i in range(150))
    g = _expect_goaway(s, attack, _h2.ENHANCE_YOUR_CALM)
    assert 199 <= g.last_stream_id <= 203  # stopped at the 101st reset


def test_rapid_reset_with_the_default_limits():
    s, _, raw = server()
    attack = b"".join(raw.headers(2 * i + 1) + raw.rst(2 * i + 1) for i in range(1100))
    _expect_goaway(s, attack, _h2.ENHANCE_YOUR_CALM)


def test_resets_within_the_rate_are_fine():
    s, _, raw = server(reset_burst=20, max_resets_per_second=1000)
    sid = 1
    for _ in range(2):
        s.receive(b"".join(raw.headers(sid + 2 * i) + raw.rst(sid + 2 * i) for i in range(20)))
        sid += 40
        s.output()
        time.sleep(0.05)  # 50 tokens back, capped at the burst of 20
    assert s.error is None and not s.is_closed()
    _expect_goaway(
        s, b"".join(raw.headers(sid + 2 * i) + raw.rst(sid + 2 * i) for i in range(30)), 11
    )


def test_resets_the_server_sends_over_bad_requests_count_too():
    s, _, raw = server(reset_burst=50)
    bad = [*REQUEST, (b"connection", b"keep-alive")]
    with pytest.raises(_h2.H2Error) as err:
        s.receive(b"".join(raw.headers(2 * i + 1, bad) for i in range(60)))
    assert err.value.code == _h2.ENHANCE_YOUR_CALM
    assert goaway(s.output()).error_code == _h2.ENHANCE_YOUR_CALM


def test_continuation_flood():
    s, rec, raw = server()
    many = [*REQUEST] + [(b"x-h%d" % i, b"v" * 20) for i in range(40)]
    s.receive(raw.split_headers(1, many, pieces=4))  # 3 CONTINUATIONs: fine
    assert rec.kind("headers")[0][2] == many
    _expect_goaway(s, raw.split_headers(3, many, pieces=20), _h2.ENHANCE_YOUR_CALM)
    assert [e[1] for e in rec.kind("headers")] == [1]


def test_settings_flood():
    s, _, _ = server()
    for _ in range(20):  # a peer that reads its ACKs is no flood, however chatty
        s.receive(SettingsFrame(0).serialize() * 100)
        assert len(frames(s.output())) == 100
    tracemalloc.start()
    g = _expect_goaway(s, SettingsFrame(0).serialize() * 5000, _h2.ENHANCE_YOUR_CALM)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 256 * 1024 and g.last_stream_id == 0


def test_ping_flood():
    s, _, raw = server()
    _expect_goaway(s, b"".join(raw.ping(i) for i in range(5000)), _h2.ENHANCE_YOUR_CALM)


def test_too_many_settings_in_one_frame():
    s, _, _ = server()
    entries = b"".join((0x100 + i).to_bytes(2, "big") + b"\0\0\0\1" for i in range(40))
    frame = len(entries).to_bytes(3, "big") + b"\x04\x00\0\0\0\0" + entries
    _expect_goaway(s, frame, _h2.ENHANCE_YOUR_CALM)


def test_headers_on_a_used_stream_id_is_a_connection_error():
    s, rec, raw = server()
    s.receive(raw.headers(5))
    g = _expect_goaway(s, raw.headers(3), _h2.PROTOCOL_ERROR)
    assert g.last_stream_id == 5
    assert [e[1] for e in rec.kind("headers")] == [5]


def test_late_trailers_on_a_stream_we_reset_are_tolerated():
    s, rec, raw = server()
    s.receive(raw.headers(1, POST, end_stream=False))
    s.reset_stream(1, _h2.CANCEL)
    assert isinstance(frames(s.output())[0], RstStreamFrame)
    s.receive(raw.headers(3))
    s.receive(raw.headers(1, [(b"x-trailer", b"1")], end_stream=True))  # was in flight
    assert s.error is None and not rec.kind("trailers")
    assert [e[1] for e in rec.kind("headers")] == [1, 3]


@pytest.mark.parametrize(
    "field",
    [
        (b"connection", b"keep-alive"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"transfer-encoding", b"chunked"),
        (b"upgrade", b"h2c"),
        (b"te", b"gzip"),
    ],
)
def test_connection_specific_request_headers_reset_the_stream(field):
    s, rec, raw = server()
    s.receive(raw.headers(1, [*REQUEST, field]))
    out = frames(s.output())
    assert [(type(f), f.stream_id, f.error_code) for f in out] == [
        (RstStreamFrame, 1, _h2.PROTOCOL_ERROR)
    ]
    assert not rec.events
    s.receive(raw.headers(3, [*REQUEST, (b"te", b"trailers")]))
    assert [e[1] for e in rec.kind("headers")] == [3]


def test_header_list_size_is_enforced_on_the_decoded_size():
    s, rec, raw = server(max_header_list_size=4096)
    big = [*REQUEST] + [(b"x-field-%03d" % i, b"v" * 40) for i in range(60)]
    s.receive(raw.headers(1, big))
    out = frames(s.output())
    assert [(type(f), f.stream_id, f.error_code) for f in out] == [
        (RstStreamFrame, 1, _h2.HEADER_LIST_TOO_LARGE)
    ]
    s.receive(raw.headers(3))
    assert [e[1] for e in rec.kind("headers")] == [3]


def test_hpack_bomb():
    s, rec, raw = server()  # max_header_list_size 64 KiB
    bomb = [*REQUEST] + [(b"x-bomb", b"b" * 4000)] * 100  # indexed once, referenced 99 times
    frame = raw.headers(1, bomb)
    assert len(frame) < 5000  # ~400 KB once decoded
    s.receive(frame)
    rst = [f for f in frames(s.output()) if isinstance(f, RstStreamFrame)]
    assert [(f.stream_id, f.error_code) for f in rst] == [(1, _h2.ENHANCE_YOUR_CALM)]
    assert not rec.events and s.error is None
    s.receive(raw.headers(3, [*REQUEST, (b"x-bomb", b"b" * 4000)]))  # HPACK still in step
    assert rec.kind("headers")[0][2][-1] == (b"x-bomb", b"b" * 4000)


def test_nghttp2_own_limit_on_one_field():
    s, _, raw = server(max_header_list_size=1 << 20)
    huge = [*REQUEST, (b"x-huge", b"h" * 70000)]  # over nghttp2's 64 KiB per field
    frames_ = raw.split_headers(1, huge, pieces=5, huffman=False)
    _expect_goaway(s, frames_, _h2.COMPRESSION_ERROR)


def test_data_on_a_rejected_stream_returns_the_window():
    s, rec, raw = server(max_header_list_size=200, connection_window_size=65535)
    big = [*REQUEST] + [(b"x-f%d" % i, b"v" * 30) for i in range(10)]
    body = b"".join(DataFrame(1, data=b"d" * 13000).serialize() for _ in range(3))
    s.receive(raw.headers(1, big, end_stream=False) + body)  # DATA before our RST is out
    out = frames(s.output())
    assert not rec.events and s.error is None
    assert [(f.stream_id, f.error_code) for f in out if isinstance(f, RstStreamFrame)] == [
        (1, _h2.ENHANCE_YOUR_CALM)
    ]
    updates = [f for f in out if isinstance(f, WindowUpdateFrame) and f.stream_id == 0]
    assert sum(f.window_increment for f in updates) == 39000


def test_bad_preface():
    s = session(_h2, True)
    _expect_goaway(s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", _h2.PROTOCOL_ERROR)


def test_a_peer_overrunning_the_window_gets_its_stream_reset():
    s, rec, raw = server()
    rec.auto_consume = False
    s.receive(raw.headers(1, POST, end_stream=False))
    s.receive(b"".join(DataFrame(1, data=b"x" * 16384).serialize() for _ in range(5)))
    out = frames(s.output())
    assert [(f.stream_id, f.error_code) for f in out if isinstance(f, RstStreamFrame)] == [
        (1, _h2.FLOW_CONTROL_ERROR)
    ]
    assert rec.closed() == {1: _h2.FLOW_CONTROL_ERROR} and s.error is None


# -- bounded memory ----------------------------------------------------------------------------


_MALLINFO2_FIELDS = (
    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()  # noqa: SIM905
)


def _mallinfo_bytes() -> int:
    """Bytes the C heap holds (glibc's mallinfo2): nghttp2's memory, which tracemalloc misses."""

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in _MALLINFO2_FIELDS]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = Mallinfo2
    info = libc.mallinfo2()
    return info.uordblks + info.hblkhd


class Quiet(_h2.Delegate):
    """Answers 200 and keeps nothing, so only the session itself could grow."""

    session = None

    def on_headers(self, stream_id, headers, end_stream):
        self.session.submit_response(stream_id, 200, RESPONSE, end_stream=True)


def test_streams_and_sessions_are_freed():
    quiet = Quiet()
    s = quiet.session = _h2.Session(quiet, server=True)
    raw = RawClient()
    s.receive(raw.preface())

    def run(first, n):
        for i in range(first, first + n):
            s.receive(raw.headers(2 * i + 1))
            s.output()

    run(0, 300)  # warm up (HPACK table, free lists)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    c_before = _mallinfo_bytes()
    run(300, 3000)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert s.open_streams() == 0
    assert after - before < 64 * 1024, after - before
    assert _mallinfo_bytes() - c_before < 256 * 1024

    gc.collect()
    c_before = _mallinfo_bytes()
    first = RawClient.preface() + RawClient().headers(1)
    for _ in range(300):
        d = Quiet()
        d.session = _h2.Session(d, server=True)  # a cycle: the gc must be able to free it
        d.session.receive(first)
        d.session.output()
        del d
    gc.collect()
    assert _mallinfo_bytes() - c_before < 512 * 1024
