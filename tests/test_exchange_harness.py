"""The exchange's phases and timers, driven without sockets (tests/harness.py): bytes in,
bytes out, and a clock that moves only when the test says so."""

from conftest import ok_response
from harness import Harness

from lb.proxy.exchange import ADMITTED, DONE, SENT, STREAMING

CONFIG = """\
listeners:
  - name: web
    bind: "127.0.0.1:18080"
    timeouts: {client_head: 10s, keepalive_idle: 60s, client_body_idle: 20s}
admin: {bind: "127.0.0.1:19980"}
services:
  app:
    backends: ["127.0.0.1:19001"]
    timeouts: {response_head: 30s, idle: 300s}
routes:
  - {name: all, match: {path: {prefix: /}}, service: app}
"""
GET = b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n"


def test_a_request_goes_through_its_phases() -> None:
    h = Harness(CONFIG)
    client, backend = h.client(), h.pooled()
    client.send(GET)
    ex = client.protocol.current
    assert ex.phase == SENT
    sent = backend.received()
    assert sent.startswith(b"GET /x HTTP/1.1\r\n") and b"x-forwarded-for: 127.0.0.1" in sent
    backend.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n")
    assert ex.phase == STREAMING
    assert client.received() == (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n"
    )
    backend.send(b"0\r\nx-trailer: 1\r\n\r\n")
    assert ex.phase == DONE
    assert client.received() == b"0\r\nx-trailer: 1\r\n\r\n"
    assert client.protocol.current is None and not client.closed  # keep-alive


def test_the_response_head_timeout_answers_504_and_drops_the_connection() -> None:
    h = Harness(CONFIG)
    client, backend = h.client(), h.pooled()
    client.send(GET)
    h.advance(29)
    assert client.received() == b"" and not backend.closed
    h.advance(2)
    assert client.received().startswith(b"HTTP/1.1 504 ")
    assert backend.transport.aborted


def test_keepalive_idle_closes_after_its_time_and_not_before() -> None:
    h = Harness(CONFIG)
    client, backend = h.client(), h.pooled()
    client.send(GET)
    backend.send(ok_response(b"hi"))
    assert client.received().endswith(b"hi")
    h.advance(59)
    assert not client.closed
    h.advance(2)
    assert client.closed and client.received() == b""  # closed quietly, no 408


def test_a_slow_head_gets_408_at_client_head() -> None:
    h = Harness(CONFIG)
    client = h.client()
    client.send(b"GET / HTTP/1.1\r\nhost:")
    h.advance(9.5)
    assert client.received() == b""
    h.advance(1)
    assert client.received().startswith(b"HTTP/1.1 408 ")


def test_a_tunnel_outlives_every_listener_timer() -> None:
    h = Harness(CONFIG)
    client, backend = h.client(), h.pooled()
    client.send(b"GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
    assert b"upgrade: websocket" in backend.received()
    backend.send(
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    )
    assert client.received().startswith(b"HTTP/1.1 101 ")
    for _ in range(10):  # 10 times past client_head, traffic flowing
        h.advance(15)
        client.send(b"ping")
        assert backend.received() == b"ping"
        backend.send(b"pong")
        assert client.received() == b"pong"
    assert not client.closed
    h.advance(301)  # the tunnel's own idle timeout (the service's idle)
    assert client.closed and backend.closed


def test_a_lb_answer_is_admitted_and_done_without_a_backend() -> None:
    h = Harness(CONFIG.replace("service: app}", "respond: {status: 204}}"))
    client = h.client()
    client.send(GET)
    assert client.received().startswith(b"HTTP/1.1 204 ")
    assert client.protocol.current is None
    assert ADMITTED < DONE
