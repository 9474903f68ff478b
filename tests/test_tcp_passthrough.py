"""TLS passthrough: a tcp listener routes by the ClientHello's SNI without terminating TLS.

The SNI parser (lb/proxy/tcp/sni.py) is fuzzed with hypothesis; the listener is tested with
two real TLS servers (trustme certificates), the handshake going end to end through lb."""

import asyncio
import ipaddress
import itertools
import random
import ssl

import pytest
import trustme
from conftest import free_port, running_lb
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from tcp_util import (
    closed_by_peer,
    connect,
    listener,
    log_lines,
    sample,
    scrape,
    servers,
    service,
    tagged,
    tcp_config,
)

from lb.proxy.tcp import sni
from lb.proxy.tcp.listener import SniRoutes

_HELLO_CTX = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_HELLO_CTX.check_hostname = False
_HELLO_CTX.verify_mode = ssl.CERT_NONE


def client_hello(server_name: str | None) -> bytes:
    """A real ClientHello, as Python's TLS client writes it."""
    obj = _HELLO_CTX.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


HELLO = client_hello("api.example.com")


def reframe(hello: bytes, size: int) -> bytes:
    """The same handshake message in records of at most `size` bytes (RFC 8446 5.1)."""
    body = hello[5:]
    return b"".join(
        hello[:3] + len(part).to_bytes(2, "big") + part
        for part in (body[i : i + size] for i in range(0, len(body), size))
    )


# -- the parser --------------------------------------------------------------------------------
def test_parse_real_hellos():
    assert sni.parse(HELLO) == sni.Hello("api.example.com", len(HELLO))
    assert sni.parse(client_hello(None)).server_name is None
    assert sni.parse(client_hello("MiXeD.Example.COM")).server_name == "mixed.example.com"
    assert sni.parse(HELLO + b"early data follows").length == len(HELLO)
    framed = reframe(HELLO, 64)
    assert sni.parse(framed) == sni.Hello("api.example.com", len(framed))
    for cut in (0, 1, 4, 5, 6, 42, len(HELLO) - 1):
        assert sni.parse(HELLO[:cut]) is None
        assert sni.parse(framed[:cut]) is None


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.2\r\n",
        b"\x16\x02\x01\x00\x10",  # not TLS record version 3.x
        b"\x16\x03\x01\x00\x00",  # empty record
        b"\x16\x03\x01\x40\x01",  # record longer than 2^14
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
        b"\x17\x03\x03\x00\x05hello",  # application data
        b"\x80\x2e\x01\x03\x01",  # SSLv2-style hello
        b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",  # truncated ClientHello body
    ],
)
def test_garbage_is_refused(garbage):
    with pytest.raises(sni.BadHello):
        sni.parse(garbage)


def test_oversize_and_duplicate_names_are_refused():
    huge = b"\x16\x03\x01\x40\x00\x01\x00\xff\xff"  # declares a 64 KiB ClientHello
    with pytest.raises(sni.BadHello):
        sni.parse(huge)
    assert sni.parse(reframe(HELLO, 1)).server_name == "api.example.com"  # odd, but valid
    # 10,000 bytes declared, sent a byte per record: 6 bytes each, past MAX_HELLO on the way
    slow = b"\x16\x03\x01\x00\x04\x01\x00\x27\x10" + b"\x16\x03\x01\x00\x01\x00" * 3000
    with pytest.raises(sni.BadHello, match="over"):
        sni.parse(slow)
    # a second server_name extension appended: the routing could disagree with the backend's
    ext = b"\x00\x00\x00\x0c\x00\x0a\x00\x00\x07evil.io"
    body = bytearray(HELLO[9:])
    ext_len_at = _extensions_offset(bytes(body))
    old = int.from_bytes(body[ext_len_at : ext_len_at + 2], "big")
    body[ext_len_at : ext_len_at + 2] = (old + len(ext)).to_bytes(2, "big")
    body += ext
    msg = b"\x01" + len(body).to_bytes(3, "big") + bytes(body)
    twice = b"\x16\x03\x01" + len(msg).to_bytes(2, "big") + msg
    with pytest.raises(sni.BadHello, match="twice"):
        sni.parse(twice)


def _extensions_offset(body: bytes) -> int:
    pos = 2 + 32
    pos += 1 + body[pos]
    pos += 2 + int.from_bytes(body[pos : pos + 2], "big")
    pos += 1 + body[pos]
    return pos


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_only_ever_bad_hello(data):
    for buf in (data, b"\x16\x03\x01" + data, HELLO[:9] + data):
        try:
            result = sni.parse(buf)
        except sni.BadHello:
            continue
        assert result is None or isinstance(result, sni.Hello)


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(1, 8))
def test_fuzz_mutated_hellos(rnd: random.Random, flips: int):
    buf = bytearray(HELLO)
    for _ in range(flips):
        buf[rnd.randrange(len(buf))] = rnd.randrange(256)
    try:
        result = sni.parse(bytes(buf))
    except sni.BadHello:
        return
    assert result is None or result.length <= len(buf)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


_LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LABEL, min_size=1, max_size=4), st.integers(16, 600), st.data())
def test_fuzz_hostnames_and_splits(labels, record_size, data):
    """Any host name survives any record framing and any split into reads."""
    host = ".".join(labels)
    # An IP literal is never sent as SNI (RFC 6066 3): the client leaves the extension out.
    assume(not _is_ip(host))
    hello = reframe(client_hello(host), record_size)
    cut = data.draw(st.integers(0, len(hello) - 1))
    assert sni.parse(hello[:cut]) is None
    assert sni.parse(hello) == sni.Hello(host, len(hello))


def test_sni_routes_exact_then_longest_wildcard_then_default():
    routes = SniRoutes(
        {"a.example.com": "a", "*.example.com": "b", "*.deep.example.com": "c", "X.IO": "x"},
        "d",
    )
    assert routes.service_for("a.example.com") == "a"
    assert routes.service_for("z.example.com") == "b"
    assert routes.service_for("y.z.example.com") == "b"
    assert routes.service_for("q.deep.example.com") == "c"
    assert routes.service_for("example.com") == "d"  # a wildcard needs a subdomain
    assert routes.service_for("x.io") == "x"
    assert routes.service_for(None) == "d"
    assert SniRoutes({"*.example.com": "b"}, None).service_for("other.test") is None


# -- through lb --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


def server_ctx(ca, *hosts):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*hosts).configure_cert(ctx)
    return ctx


def client_ctx(ca, verify=True):
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if not verify:
        ctx.check_hostname = False
    return ctx


def passthrough(name, port, routes, default=None, extra=""):
    items = ", ".join(f'"{h}": {s}' for h, s in routes.items())
    body = f"    tls_passthrough: true\n    sni_routes: {{{items}}}\n"
    if default:
        body += f"    default_service: {default}\n"
    return listener(name, port, body + "    timeouts: {client_head: 500ms}\n" + extra)


async def tls_tag(port, ca, host, verify=True):
    """Handshake through lb with SNI `host` (None: no SNI); the backend's tag."""
    ctx = client_ctx(ca, verify)
    r, w = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host), 5
    )
    try:
        tag = await asyncio.wait_for(r.readexactly(1), 5)
        w.write(b"echo me")
        assert await asyncio.wait_for(r.readexactly(7), 5) == b"echo me"
        return tag
    finally:
        w.close()


async def pumped_handshake(port, ca, host, hello_parts):
    """A TLS client driven by hand, its ClientHello cut (by `hello_parts`) into separate
    writes and records; returns the backend's tag."""
    obj = client_ctx(ca).wrap_bio(
        inc := ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=host
    )
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    r, w = await connect(port)
    try:
        for part in hello_parts(out.read()):
            w.write(part)
            await w.drain()
            await asyncio.sleep(0.01)  # separate reads on lb's side
        async with asyncio.timeout(5):
            while True:
                try:
                    obj.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    w.write(out.read())
                    inc.write(await r.read(65536))
            w.write(out.read())
            obj.write(b"ping")
            w.write(out.read())
            got = b""
            while len(got) < 5:
                try:
                    got += obj.read(5)
                except ssl.SSLWantReadError:
                    inc.write(await r.read(65536))
        assert got[1:] == b"ping"
        return got[:1]
    finally:
        w.close()


@pytest.fixture
async def two_tls_servers(ca):
    async with (
        servers(tagged(b"A"), tls=server_ctx(ca, "a.example.com", "other.test")) as (a,),
        servers(tagged(b"B"), tls=server_ctx(ca, "*.example.com", "deep.sub.example.com")) as (b,),
    ):
        yield a, b


async def test_sni_selects_the_backend_exact_wildcard_default(tmp_path, ca, two_tls_servers):
    a, b = two_tls_servers
    port, strict, admin = free_port(), free_port(), free_port()
    routes = {"a.example.com": "a", "*.example.com": "b"}
    listeners = passthrough("tls", port, routes, default="a") + passthrough(
        "strict", strict, {"a.example.com": "a"}
    )
    services = service("a", [a.address]) + service("b", [b.address])
    async with running_lb(tmp_path, tcp_config(admin, listeners, services)):
        assert await tls_tag(port, ca, "a.example.com") == b"A"
        assert await tls_tag(port, ca, "x.example.com") == b"B"
        assert await tls_tag(port, ca, "deep.sub.example.com") == b"B"  # any depth
        assert await tls_tag(port, ca, "other.test") == b"A"  # default_service
        assert await tls_tag(port, ca, None, verify=False) == b"A"  # no SNI: default too
        assert await tls_tag(strict, ca, "a.example.com") == b"A"
        for host in ("x.example.com", None):  # no default: closed
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await tls_tag(strict, ca, host, verify=False)
        m = await scrape(admin)
        assert sample(m, "lb_tcp_terminations_total", listener="strict", reason="no-service") == 2
        assert (
            sample(m, "lb_tcp_connections_total", listener="tls", service="b", backend=b.address)
            == 2
        )


async def test_garbage_and_oversize_hellos_close_cleanly(tmp_path, ca, two_tls_servers):
    a, _ = two_tls_servers
    port, admin = free_port(), free_port()
    text = tcp_config(
        admin, passthrough("tls", port, {"a.example.com": "a"}), service("a", [a.address])
    )
    async with running_lb(tmp_path, text):
        for junk in (
            b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n",
            bytes(range(256)),
            b"\x16\x03\x01\x40\x00\x01\x00\xff\xff",
        ):
            r, w = await connect(port)
            w.write(junk)
            assert await closed_by_peer(r, 2)
            w.close()
        assert await tls_tag(port, ca, "a.example.com") == b"A"  # still serving
        m = await scrape(admin)
        assert sample(m, "lb_tcp_terminations_total", listener="tls", reason="bad-hello") == 3
        assert a.accepted == 1  # nothing of the garbage reached a backend


async def test_hello_split_over_reads_and_records(tmp_path, ca, two_tls_servers):
    a, b = two_tls_servers
    port, admin = free_port(), free_port()
    log = tmp_path / "tls.log"
    text = tcp_config(
        admin,
        passthrough(
            "tls",
            port,
            {"a.example.com": "a", "*.example.com": "b"},
            extra=f'    access_log: {{path: "{log}"}}\n',
        ),
        service("a", [a.address]) + service("b", [b.address]),
    )
    async with running_lb(tmp_path, text):

        def cut(hello):
            points = [0, 1, 3, 5, 9, 40, 41, len(hello) // 2, len(hello)]
            return [hello[i:j] for i, j in itertools.pairwise(points)]

        assert await pumped_handshake(port, ca, "x.example.com", cut) == b"B"
        assert await pumped_handshake(port, ca, "a.example.com", lambda h: [reframe(h, 50)]) == b"A"

        def byte_by_byte_records(hello):
            framed = reframe(hello, 200)
            return [framed[i : i + 30] for i in range(0, len(framed), 30)]

        assert await pumped_handshake(port, ca, "a.example.com", byte_by_byte_records) == b"A"
        lines = await log_lines(log, 3)
    assert [line["sni"] for line in lines] == ["x.example.com", "a.example.com", "a.example.com"]
    assert [line["service"] for line in lines] == ["b", "a", "a"]


async def test_incomplete_hello_times_out_at_client_head(tmp_path, ca, two_tls_servers):
    a, _ = two_tls_servers
    port, admin = free_port(), free_port()
    text = tcp_config(
        admin, passthrough("tls", port, {"a.example.com": "a"}), service("a", [a.address])
    )
    async with running_lb(tmp_path, text):
        r, w = await connect(port)
        w.write(HELLO[:20])
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await closed_by_peer(r, 3)
        assert 0.3 < loop.time() - t0 < 1.5
        w.close()
        m = await scrape(admin)
        reason = {"listener": "tls", "reason": "client-head-timeout"}
        assert sample(m, "lb_tcp_terminations_total", **reason) == 1


async def test_plain_tcp_listener_forwards_tls_untouched(tmp_path, ca, two_tls_servers):
    """Without passthrough, TLS is just bytes: the handshake goes end to end."""
    a, _ = two_tls_servers
    port, admin = free_port(), free_port()
    async with running_lb(
        tmp_path,
        tcp_config(admin, listener("t", port, "    service: a\n"), service("a", [a.address])),
    ):
        assert await tls_tag(port, ca, "a.example.com") == b"A"
