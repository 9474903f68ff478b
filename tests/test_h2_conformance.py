"""RFC 9113 / RFC 7541 error cases (h2spec's categories) against a running lb over h2c by prior
knowledge, frames by hand: each malformed input gets the reaction the RFC requires (GOAWAY with
the code for a connection error, RST_STREAM with the code for a stream error, or a normal
answer), and after a connection error lb still serves a fresh connection.

RFC 9113 5.4.1 lets an endpoint treat any stream error as a connection error ("an endpoint MAY
choose to treat a stream error as a connection error"); where nghttp2 does so, the test says it
and asserts the connection error with the code the RFC names. The attacks of test_h2_abuse.py
(floods, rapid reset, HPACK bomb, ...) are not repeated here."""

import asyncio

import pytest

pytest.importorskip("lb._h2", reason="lb._h2 not built (libnghttp2-dev missing)")
pytest.importorskip("hpack")
pytest.importorskip("hyperframe")

from hyperframe.frame import GoAwayFrame, PingFrame, RstStreamFrame, SettingsFrame
from test_h2_abuse import (
    REQUEST,
    Raw,
    h2_lb,
    still_serves_and_nothing_leaks,
)

PROTOCOL_ERROR, FLOW_CONTROL_ERROR = 0x1, 0x3
STREAM_CLOSED, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0x5, 0x6, 0x9

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS = 0x0, 0x1, 0x2, 0x3, 0x4
PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x6, 0x7, 0x8, 0x9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    """One frame, byte by byte: hyperframe refuses to build most of the malformed ones."""
    return (
        len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload
    )


def setting(ident: int, value: int) -> bytes:
    return frame(SETTINGS, 0, 0, ident.to_bytes(2, "big") + value.to_bytes(4, "big"))


def hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    """An RFC 7541 5.1 integer with `first` holding the bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first | value])
    out, value = bytearray([first | limit]), value - limit
    while value >= 128:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    out.append(value)
    return bytes(out)


def block(c: Raw, fields=REQUEST) -> bytes:
    return c.enc.encode(list(fields))


def request(c: Raw, sid: int, end_stream: bool = True) -> bytes:
    return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid, block(c))


async def ok_after(c: Raw, sid: int, be) -> None:
    """The connection still works: a request on it gets the backend's 200."""
    before = len(be.seen)
    await c.send(c.headers(sid, path=b"/next"))
    status, _ = await asyncio.wait_for(c.response(sid), 5)
    assert status == 200
    assert len(be.seen) == before + 1 and be.seen[-1].path == "/next"


# -- connection errors: GOAWAY with the code, then lb closes ---------------------------------------

CONNECTION_ERRORS = {
    # 6.1: DATA on stream 0 -> connection PROTOCOL_ERROR.
    "data-stream-0": (lambda c: frame(DATA, END_STREAM, 0, b"x"), PROTOCOL_ERROR),
    # 5.1 idle: anything but HEADERS/PRIORITY -> connection PROTOCOL_ERROR.
    "data-idle-stream": (lambda c: frame(DATA, END_STREAM, 1, b"x"), PROTOCOL_ERROR),
    # 5.1 half-closed (remote): a MUST for a stream error STREAM_CLOSED; nghttp2 ends the
    # connection with that code, which 5.4.1 allows.
    "data-after-end-stream": (
        lambda c: request(c, 1) + frame(DATA, END_STREAM, 1, b"x"),
        STREAM_CLOSED,
    ),
    # 6.2: HEADERS on stream 0 -> connection PROTOCOL_ERROR.
    "headers-stream-0": (
        lambda c: frame(HEADERS, END_HEADERS | END_STREAM, 0, block(c)),
        PROTOCOL_ERROR,
    ),
    # 6.1/6.2: padding length >= the payload length -> connection PROTOCOL_ERROR.
    "headers-bad-padding": (
        lambda c: frame(
            HEADERS,
            END_HEADERS | END_STREAM | PADDED,
            1,
            bytes([6]) + b"\x82\x86" + b"\x84\x41\x00",
        ),
        PROTOCOL_ERROR,
    ),
    # 6.3: PRIORITY on stream 0 -> connection PROTOCOL_ERROR.
    "priority-stream-0": (
        lambda c: frame(PRIORITY, 0, 0, (1).to_bytes(4, "big") + b"\x10"),
        PROTOCOL_ERROR,
    ),
    # 6.4: RST_STREAM on stream 0, on an idle stream -> connection PROTOCOL_ERROR.
    "rst-stream-0": (lambda c: frame(RST_STREAM, 0, 0, (8).to_bytes(4, "big")), PROTOCOL_ERROR),
    "rst-idle-stream": (
        lambda c: frame(RST_STREAM, 0, 1, (8).to_bytes(4, "big")),
        PROTOCOL_ERROR,
    ),
    # 6.4: length != 4 -> connection FRAME_SIZE_ERROR.
    "rst-length-3": (
        lambda c: request(c, 1) + frame(RST_STREAM, 0, 1, b"\x00\x00\x08"),
        FRAME_SIZE_ERROR,
    ),
    # 6.5: ACK with a payload -> FRAME_SIZE_ERROR; not on stream 0 -> PROTOCOL_ERROR; length not
    # a multiple of 6 -> FRAME_SIZE_ERROR.
    "settings-ack-payload": (
        lambda c: frame(SETTINGS, ACK, 0, (4).to_bytes(2, "big") + (100).to_bytes(4, "big")),
        FRAME_SIZE_ERROR,
    ),
    "settings-stream-1": (lambda c: frame(SETTINGS, 0, 1), PROTOCOL_ERROR),
    "settings-length-3": (lambda c: frame(SETTINGS, 0, 0, b"\x00\x03\x00"), FRAME_SIZE_ERROR),
    # 6.5.2: ENABLE_PUSH other than 0/1 -> PROTOCOL_ERROR; INITIAL_WINDOW_SIZE above 2^31-1 ->
    # FLOW_CONTROL_ERROR; MAX_FRAME_SIZE outside [2^14, 2^24-1] -> PROTOCOL_ERROR.
    "settings-enable-push-2": (lambda c: setting(0x2, 2), PROTOCOL_ERROR),
    "settings-initial-window-2^31": (lambda c: setting(0x4, 1 << 31), FLOW_CONTROL_ERROR),
    "settings-max-frame-16383": (lambda c: setting(0x5, 16383), PROTOCOL_ERROR),
    "settings-max-frame-2^24": (lambda c: setting(0x5, 1 << 24), PROTOCOL_ERROR),
    # 6.7: length != 8 -> FRAME_SIZE_ERROR; not on stream 0 -> PROTOCOL_ERROR.
    "ping-length-6": (lambda c: frame(PING, 0, 0, b"\x00" * 6), FRAME_SIZE_ERROR),
    "ping-stream-1": (lambda c: frame(PING, 0, 1, b"\x00" * 8), PROTOCOL_ERROR),
    # 6.8: GOAWAY not on stream 0 -> PROTOCOL_ERROR.
    "goaway-stream-1": (lambda c: frame(GOAWAY, 0, 1, bytes(8)), PROTOCOL_ERROR),
    # 6.9: increment 0 on the connection -> PROTOCOL_ERROR; length != 4 -> FRAME_SIZE_ERROR.
    "window-update-0-connection": (lambda c: frame(WINDOW_UPDATE, 0, 0, bytes(4)), PROTOCOL_ERROR),
    "window-update-length-3": (
        lambda c: frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"),
        FRAME_SIZE_ERROR,
    ),
    # 6.9.1: the connection window above 2^31-1 -> FLOW_CONTROL_ERROR.
    "window-update-connection-overflow": (
        lambda c: frame(WINDOW_UPDATE, 0, 0, ((1 << 31) - 1).to_bytes(4, "big")),
        FLOW_CONTROL_ERROR,
    ),
    # 6.10: CONTINUATION without a HEADERS before it -> PROTOCOL_ERROR.
    "continuation-alone": (
        lambda c: frame(CONTINUATION, END_HEADERS, 1, block(c)),
        PROTOCOL_ERROR,
    ),
    # 6.10: a header block not ended, then another frame type -> PROTOCOL_ERROR.
    "headers-then-ping": (
        lambda c: frame(HEADERS, END_STREAM, 1, block(c)) + frame(PING, 0, 0, bytes(8)),
        PROTOCOL_ERROR,
    ),
    "headers-then-data": (
        lambda c: frame(HEADERS, 0, 1, block(c)) + frame(DATA, END_STREAM, 1, b"x"),
        PROTOCOL_ERROR,
    ),
    # RFC 7541 2.3.3: an index beyond static + dynamic table -> COMPRESSION_ERROR.
    "hpack-index-beyond-table": (
        lambda c: frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack_int(70, 7, 0x80)),
        COMPRESSION_ERROR,
    ),
    # RFC 7541 4.2/6.3: a table size update above SETTINGS_HEADER_TABLE_SIZE (4096, the
    # default lb's decoder keeps) -> COMPRESSION_ERROR.
    "hpack-table-size-over-limit": (
        lambda c: frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack_int(8192, 5, 0x20) + block(c)),
        COMPRESSION_ERROR,
    ),
    # 5.3.1 (a MUST for a stream error PROTOCOL_ERROR), 6.3 (a MUST for a stream error
    # FRAME_SIZE_ERROR) and 6.9 (increment 0 on a stream: a MUST for a stream error
    # PROTOCOL_ERROR): nghttp2 ends the whole connection with the code the RFC names, which
    # 5.4.1 allows ("MAY choose to treat a stream error as a connection error").
    "headers-depends-on-itself": (
        lambda c: frame(
            HEADERS,
            END_HEADERS | END_STREAM | PRIORITY_FLAG,
            1,
            (1).to_bytes(4, "big") + b"\x10" + block(c),
        ),
        PROTOCOL_ERROR,
    ),
    "priority-length-4": (
        lambda c: request(c, 1, end_stream=False) + frame(PRIORITY, 0, 1, bytes(4)),
        FRAME_SIZE_ERROR,
    ),
    "window-update-0-stream": (  # stream 1 is half-closed (remote), WINDOW_UPDATE allowed
        lambda c: request(c, 1) + frame(WINDOW_UPDATE, 0, 1, bytes(4)),
        PROTOCOL_ERROR,
    ),
}


# 6.3: "If a PRIORITY frame is received with a stream identifier of 0x00, the recipient MUST
# respond with a connection error of type PROTOCOL_ERROR." lb advertises
# SETTINGS_NO_RFC7540_PRIORITIES=1, and its nghttp2 (1.52) then checks a PRIORITY frame's
# length (priority-length-4 above) but discards the frame without looking at its stream id.
@pytest.mark.parametrize("case", list(CONNECTION_ERRORS))
async def test_connection_error(tmp_path, case):
    build, code = CONNECTION_ERRORS[case]
    async with h2_lb(tmp_path) as (lb, be):
        c = await Raw.connect(lb.port)
        await c.send(build(c))
        g = await c.goaway()
        assert g.error_code == code, (case, g)
        c.close()
        await still_serves_and_nothing_leaks(lb, be)


# -- stream errors: RST_STREAM with the code, the connection carries on ----------------------------


def headers_with(c: Raw, fields, sid: int = 1) -> bytes:
    return frame(HEADERS, END_HEADERS | END_STREAM, sid, block(c, fields))


METHOD, SCHEME, AUTHORITY, PATH = REQUEST
POST = [(b":method", b"POST"), SCHEME, AUTHORITY, PATH]

STREAM_ERRORS = {
    # 8.1.1: content-length not matching the DATA lengths -> malformed, stream PROTOCOL_ERROR;
    # fewer bytes than announced, and more.
    "content-length-short": (
        lambda c: (
            frame(HEADERS, END_HEADERS, 1, block(c, [*POST, (b"content-length", b"10")]))
            + frame(DATA, END_STREAM, 1, b"abc")
        ),
        PROTOCOL_ERROR,
    ),
    "content-length-long": (
        lambda c: (
            frame(HEADERS, END_HEADERS, 1, block(c, [*POST, (b"content-length", b"2")]))
            + frame(DATA, END_STREAM, 1, b"abc")
        ),
        PROTOCOL_ERROR,
    ),
}

# 8.2.1, 8.2.2, 8.3, 8.3.1: malformed requests -> stream PROTOCOL_ERROR, never forwarded.
MALFORMED = {
    "uppercase-field-name": [*REQUEST, (b"X-Upper", b"1")],
    "pseudo-after-regular": [METHOD, SCHEME, AUTHORITY, (b"x-a", b"1"), PATH],
    "unknown-pseudo": [*REQUEST, (b":foo", b"bar")],
    "status-in-request": [*REQUEST, (b":status", b"200")],
    "duplicate-method": [*REQUEST, (b":method", b"GET")],
    "missing-method": [SCHEME, AUTHORITY, PATH],
    "missing-scheme": [METHOD, AUTHORITY, PATH],
    "missing-path": [METHOD, SCHEME, AUTHORITY],
    "empty-path": [METHOD, SCHEME, AUTHORITY, (b":path", b"")],
    "te-not-trailers": [*REQUEST, (b"te", b"gzip")],
}
for _name, _fields in MALFORMED.items():
    STREAM_ERRORS[_name] = ((lambda f: lambda c: headers_with(c, f))(_fields), PROTOCOL_ERROR)


@pytest.mark.parametrize("case", list(STREAM_ERRORS))
async def test_stream_error(tmp_path, case):
    build, code = STREAM_ERRORS[case]
    async with h2_lb(tmp_path) as (lb, be):
        c = await Raw.connect(lb.port)
        await c.send(build(c))
        r = await c.rst(1)
        assert r.error_code == code, (case, r)
        assert not any(isinstance(f, GoAwayFrame) for f in c.frames) and not c.eof
        if case in MALFORMED:
            await asyncio.sleep(0.05)
            assert not be.seen, be.seen  # a malformed request never reaches the backend
        await ok_after(c, 3, be)
        if case in MALFORMED:
            assert [s.path for s in be.seen] == ["/next"]
        c.close()


# -- ignored or answered: the connection keeps working --------------------------------------------


async def test_unknown_setting_is_ignored(tmp_path):
    # 6.5.2: "An endpoint that receives a SETTINGS frame with any unknown or unsupported
    # identifier MUST ignore that setting" -- and still acknowledges the frame.
    async with h2_lb(tmp_path) as (lb, be):
        c = await Raw.connect(lb.port)
        await c.wait(lambda f: isinstance(f, SettingsFrame) and "ACK" in f.flags)
        mark = len(c.frames)
        await c.send(setting(0xFF, 12345))
        await c.wait(
            lambda f: f in c.frames[mark:] and isinstance(f, SettingsFrame) and "ACK" in f.flags
        )
        await ok_after(c, 1, be)
        c.close()


async def test_ping_is_answered_with_the_same_payload(tmp_path):
    # 6.7: the receiver of a PING without ACK MUST send one with ACK and an identical payload.
    async with h2_lb(tmp_path) as (lb, be):
        c = await Raw.connect(lb.port)
        await c.send(frame(PING, 0, 0, b"h2specok"))
        p = await c.wait(lambda f: isinstance(f, PingFrame) and "ACK" in f.flags)
        assert p.opaque_data == b"h2specok" and p.stream_id == 0
        await ok_after(c, 1, be)
        c.close()


async def test_unknown_frame_types_are_ignored(tmp_path):
    # 4.1/5.5: frames of unknown types MUST be ignored and discarded.
    async with h2_lb(tmp_path) as (lb, be):
        c = await Raw.connect(lb.port)
        await c.send(
            frame(0x20, 0, 0, b"unknown on stream 0")
            + frame(0xFF, 0xFF, 1, b"unknown on an idle stream")
            + request(c, 1, end_stream=False)
            + frame(0x42, 0x1, 1, b"unknown on an open stream")
            + frame(DATA, END_STREAM, 1, b"")
        )
        status, _ = await c.response(1)
        assert status == 200
        assert not any(isinstance(f, GoAwayFrame | RstStreamFrame) for f in c.frames)
        await ok_after(c, 3, be)
        c.close()
