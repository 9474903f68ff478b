"""Peers for lb._h2's tests, all in memory: a recording delegate, an `h2` library connection
pumped against a Session, and a raw client writing frames by hand (hyperframe + hpack) for what
a well-behaved library refuses to send."""

import itertools
from collections import defaultdict
from typing import Any

import h2.config
import h2.connection
import h2.settings
import hpack
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"https"),
    (b":authority", b"example.test"),
    (b":path", b"/"),
]
POST = [(b":method", b"POST"), *REQUEST[1:]]


class Recorder:
    """A Session delegate that records every callback; `on_head` lets a test answer."""

    def __init__(self, auto_consume: bool = True) -> None:
        self.session: Any = None
        self.auto_consume = auto_consume
        self.events: list[tuple[Any, ...]] = []
        self.body: dict[int, bytearray] = defaultdict(bytearray)
        self.on_head: Any = None
        self.on_drain: Any = None

    def on_headers(self, stream_id: int, headers: list, end_stream: bool) -> None:
        self.events.append(("headers", stream_id, headers, end_stream))
        if self.on_head is not None:
            self.on_head(stream_id, headers, end_stream)

    def on_trailers(self, stream_id: int, headers: list) -> None:
        self.events.append(("trailers", stream_id, headers))

    def on_data(self, stream_id: int, data: bytes) -> None:
        self.events.append(("data", stream_id, len(data)))
        self.body[stream_id] += data
        if self.auto_consume:
            self.session.consume(stream_id, len(data))

    def on_end_stream(self, stream_id: int) -> None:
        self.events.append(("end", stream_id))

    def on_stream_close(self, stream_id: int, error_code: int) -> None:
        self.events.append(("close", stream_id, error_code))

    def on_goaway(self, error_code: int, last_stream_id: int) -> None:
        self.events.append(("goaway", error_code, last_stream_id))

    def on_drained(self, stream_id: int) -> None:
        self.events.append(("drained", stream_id))
        if self.on_drain is not None:
            self.on_drain(stream_id)

    def kind(self, name: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[0] == name]

    def closed(self) -> dict[int, int]:
        return {e[1]: e[2] for e in self.kind("close")}


def session(module: Any, server: bool, delegate: Recorder | None = None, **settings: int) -> Any:
    delegate = delegate or Recorder()
    s = module.Session(delegate, server=server, settings=settings)
    delegate.session = s
    return s


def raw_server(module: Any, **settings: int) -> tuple[Any, Recorder, "RawClient"]:
    """A server Session past the connection preface, and the raw client that sent it."""
    rec = Recorder()
    s = session(module, True, rec, **settings)
    raw = RawClient()
    s.receive(raw.preface())
    s.output()
    return s, rec, raw


def h2_peer(client_side: bool, **settings: int) -> h2.connection.H2Connection:
    config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
    conn = h2.connection.H2Connection(config=config)
    if settings:
        codes = {name: getattr(h2.settings.SettingCodes, name.upper()) for name in settings}
        conn.local_settings = h2.settings.Settings(
            client=client_side, initial_values={codes[k]: v for k, v in settings.items()}
        )
    conn.initiate_connection()
    return conn


def pump(sess: Any, peer: h2.connection.H2Connection, rounds: int = 50, on_events: Any = None):
    """Move bytes both ways until both sides are quiet; returns the peer's events. on_events
    sees each batch of the peer's events as it comes, to answer or acknowledge."""
    events: list[Any] = []
    for _ in range(rounds):
        out = sess.output()
        if out:
            new = peer.receive_data(out)
            events += new
            if on_events is not None:
                on_events(new)
        back = peer.data_to_send()
        if back:
            sess.receive(back)
        if not out and not back:
            return events
    raise AssertionError(f"no quiet after {rounds} rounds")


def handshake(sess: Any, peer: h2.connection.H2Connection) -> None:
    pump(sess, peer)


class RawClient:
    """Frames by hand; one HPACK encoder so header blocks stay in step with the server's."""

    def __init__(self) -> None:
        self.encoder = hpack.Encoder()

    @staticmethod
    def preface() -> bytes:
        return PREFACE + SettingsFrame(0).serialize()

    def block(self, headers: list[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        return self.encoder.encode(headers, huffman=huffman)

    def headers(
        self, stream_id: int, headers: list | None = None, end_stream: bool = True
    ) -> bytes:
        f = HeadersFrame(stream_id)
        f.data = self.block(REQUEST if headers is None else headers)
        f.flags.add("END_HEADERS")
        if end_stream:
            f.flags.add("END_STREAM")
        return f.serialize()

    def split_headers(
        self, stream_id: int, headers: list, pieces: int, huffman: bool = True
    ) -> bytes:
        """One header block (END_STREAM) as HEADERS + (pieces - 1) CONTINUATION frames."""
        block = self.block(headers, huffman)
        cuts = [len(block) * i // pieces for i in range(pieces + 1)]
        parts = [block[a:b] for a, b in itertools.pairwise(cuts)]
        first = HeadersFrame(stream_id)
        first.data = parts[0]
        first.flags.add("END_STREAM")
        frames = [first]
        for part in parts[1:]:
            c = ContinuationFrame(stream_id)
            c.data = part
            frames.append(c)
        frames[-1].flags.add("END_HEADERS")
        return b"".join(f.serialize() for f in frames)

    @staticmethod
    def rst(stream_id: int, code: int = 8) -> bytes:
        return RstStreamFrame(stream_id, error_code=code).serialize()

    @staticmethod
    def settings(**values: int) -> bytes:
        return SettingsFrame(0, settings=values).serialize()

    @staticmethod
    def ping(n: int) -> bytes:
        return PingFrame(0, opaque_data=n.to_bytes(8, "big")).serialize()


def frames(data: bytes) -> list[Frame]:
    """Parse a byte string of whole frames (no preface)."""
    out: list[Frame] = []
    view = memoryview(data)
    while view:
        frame, length = Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        out.append(frame)
        view = view[9 + length :]
    return out


def goaway(data: bytes) -> GoAwayFrame:
    found = [f for f in frames(data) if isinstance(f, GoAwayFrame)]
    assert found, f"no GOAWAY in {frames(data)}"
    return found[-1]
