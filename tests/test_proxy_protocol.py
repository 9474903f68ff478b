"""PROXY protocol v1/v2: the parser (lb/proxy/tcp/proxy_protocol.py) on valid, malformed,
oversize and random input; tcp listeners accepting it from trusted proxies only; lb sending
it to backends."""

import asyncio
import ipaddress
import struct

import pytest
from conftest import free_port, running_lb
from hypothesis import given, settings
from hypothesis import strategies as st
from tcp_util import (
    closed_by_peer,
    connect,
    echo,
    listener,
    log_lines,
    roundtrip,
    sample,
    scrape,
    servers,
    service,
    tcp_config,
)

from lb.proxy.tcp import proxy_protocol as pp
from lb.proxy.tcp.proxy_protocol import ProxyProtocolError, Result, parse

SIG = pp.V2_SIGNATURE


def v2(command: int, family: int, payload: bytes) -> bytes:
    return SIG + bytes([0x20 | command, family]) + struct.pack("!H", len(payload)) + payload


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


# -- v1 ------------------------------------------------------------------------------------------
def test_v1_tcp4_tcp6_unknown():
    line = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n"
    assert parse(line + b"GET /") == (
        Result(1, ("203.0.113.7", 56324), ("192.0.2.1", 443)),
        len(line),
    )
    line6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n"
    assert parse(line6) == (Result(1, ("2001:db8::1", 1), ("2001:db8::2", 65535)), len(line6))
    assert parse(b"PROXY UNKNOWN\r\n") == (Result(1, None, None), 15)
    unknown = b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"
    assert parse(unknown) == (Result(1, None, None), len(unknown))


def test_v1_incomplete_needs_more():
    line = b"PROXY TCP4 203.0.113.7 192.0.2.1 56324 443\r\n"
    for cut in range(len(line)):
        assert parse(line[:cut]) == (None, 0)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 203.0.113.7 192.0.2.1 56324\r\n",  # a field missing
        b"PROXY TCP4 203.0.113.7  192.0.2.1 56324 443\r\n",  # two spaces
        b"PROXY TCP4 2001:db8::1 192.0.2.1 1 2\r\n",  # family mismatch
        b"PROXY TCP6 203.0.113.7 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.700 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.07 192.0.2.1 1 2\r\n",  # leading zero
        b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 2\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 080 2\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 -1 2\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 +1 2\r\n",
        b"PROXY UDP4 203.0.113.7 192.0.2.1 1 2\r\n",
        b"PROXY TCP4 203.0.113.7 192.0.2.1 1 2\n",  # LF alone
        b"PROXY TCP4 203.0.113.7\x00 192.0.2.1 1 2\r\n",
        b"PROXY " + b"A" * 120,  # no CRLF within 107 bytes
        b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
        b"GET / HTTP/1.1\r\n",
        b"\x16\x03\x01\x02\x00\x01",  # a TLS ClientHello
    ],
)
def test_v1_malformed_is_refused(line):
    with pytest.raises(ProxyProtocolError):
        parse(line)


def test_v1_longest_header_is_accepted():
    six = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    longest = f"PROXY UNKNOWN {six} {six} 65535 65535\r\n".encode()  # the spec's worst case
    assert len(longest) == pp.V1_MAX
    assert parse(longest) == (Result(1, None, None), pp.V1_MAX)
    tcp6 = f"PROXY TCP6 {six} {six} 65535 65535\r\n".encode()
    assert parse(tcp6)[0] == Result(1, (six, 65535), (six, 65535))
    with pytest.raises(ProxyProtocolError):
        parse(longest[:-2] + b" \r\n")  # one byte over


# -- v2 ------------------------------------------------------------------------------------------
def test_v2_inet_inet6_local_unspec_unix_and_tlvs():
    head = v2(1, 0x11, inet4("203.0.113.7", "192.0.2.1", 56324, 443))
    assert parse(head + b"rest") == (Result(2, ("203.0.113.7", 56324), ("192.0.2.1", 443)), 28)
    six = (
        ipaddress.IPv6Address("2001:db8::1").packed
        + ipaddress.IPv6Address("2001:db8::2").packed
        + struct.pack("!HH", 1, 2)
    )
    assert parse(v2(1, 0x21, six))[0] == Result(2, ("2001:db8::1", 1), ("2001:db8::2", 2))
    local = v2(0, 0x00, b"")
    assert parse(local) == (Result(2, None, None, local=True), 16)
    assert parse(v2(0, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2)))[0].local  # addresses ignored
    assert parse(v2(1, 0x00, b"")) == (Result(2, None, None), 16)
    assert parse(v2(1, 0x31, b"/tmp/a".ljust(216, b"\0")))[0] == Result(2, None, None)
    tlvs = b"\x01\x00\x02h2" + b"\x04\x00\x03\0\0\0" + b"\xe0\x00\x00"  # ALPN, NOOP, custom
    with_tlvs = v2(1, 0x11, inet4("10.0.0.1", "10.0.0.2", 3, 4) + tlvs)
    assert parse(with_tlvs) == (Result(2, ("10.0.0.1", 3), ("10.0.0.2", 4)), len(with_tlvs))


def test_v2_incomplete_needs_more():
    head = v2(1, 0x11, inet4("203.0.113.7", "192.0.2.1", 1, 2) + b"\x01\x00\x02h2")
    for cut in range(len(head)):
        assert parse(head[:cut]) == (None, 0)


@pytest.mark.parametrize(
    "header",
    [
        SIG + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in a v2 header
        SIG + b"\x22\x11\x00\x0c" + bytes(12),  # command 2
        v2(1, 0x12, inet4("1.2.3.4", "5.6.7.8", 1, 2)),  # DGRAM on a stream
        v2(1, 0x41, bytes(12)),  # family 4
        v2(1, 0x11, bytes(8)),  # shorter than its addresses
        v2(1, 0x21, bytes(12)),
        v2(1, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2) + b"\x01\x00\x05ab"),  # truncated TLV
        v2(1, 0x11, inet4("1.2.3.4", "5.6.7.8", 1, 2) + b"\x01\x00"),
        SIG + b"\x21\x11\xff\xff",  # 64 KiB declared: over MAX_V2, refused before it comes
        b"\r\n\r\n\x00\r\nQUIX\n" + bytes(8),  # not the signature
    ],
)
def test_v2_malformed_or_oversize_is_refused(header):
    with pytest.raises(ProxyProtocolError):
        parse(header)


def test_looks_like():
    assert pp.looks_like(b"") is None
    assert pp.looks_like(b"PRO") is None
    assert pp.looks_like(b"\r\n\r\n") is None
    assert pp.looks_like(b"PROXY ") is True
    assert pp.looks_like(SIG) is True
    assert pp.looks_like(b"PROXZ") is False
    assert pp.looks_like(b"\r\n\r\n\x01") is False
    assert pp.looks_like(b"SSH-2.0") is False


# -- encoding and fuzzing ------------------------------------------------------------------------
_PORTS = st.integers(0, 65535)
_V4 = st.ip_addresses(v=4).map(str)
_V6 = st.ip_addresses(v=6).map(str)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["v1", "v2"]),
    st.one_of(st.tuples(_V4, _V4), st.tuples(_V6, _V6), st.tuples(_V4, _V6)),
    _PORTS,
    _PORTS,
    st.binary(max_size=40),
)
def test_encode_then_parse_round_trips(version, ips, sport, dport, rest):
    src, dst = (ips[0], sport), (ips[1], dport)
    header = pp.encode(version, src, dst)
    result, used = parse(header + rest)
    assert used == len(header) and result is not None
    assert result.version == (1 if version == "v1" else 2)

    def norm(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        addr = ipaddress.ip_address(ip)
        mapped = getattr(addr, "ipv4_mapped", None)
        return mapped or addr

    assert result.source is not None and result.destination is not None
    assert (norm(result.source[0]), result.source[1]) == (norm(src[0]), sport)
    assert (norm(result.destination[0]), result.destination[1]) == (norm(dst[0]), dport)
    if norm(ips[0]).version != norm(ips[1]).version:  # IPv4 mapped into IPv6: one family
        assert ":" in result.source[0] and ":" in result.destination[0]


def test_encode_without_addresses():
    assert pp.encode("v1", None, None) == b"PROXY UNKNOWN\r\n"
    assert parse(pp.encode("v2", None, ("1.2.3.4", 1))) == (Result(2, None, None), 16)
    mapped = pp.encode("v1", ("::ffff:127.0.0.1", 5), ("127.0.0.1", 6))
    assert mapped == b"PROXY TCP4 127.0.0.1 127.0.0.1 5 6\r\n"


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_ever_protocol_errors(data):
    for buf in (data, b"PROXY " + data, SIG + data, SIG[:6] + data):
        try:
            result, used = parse(buf)
        except ProxyProtocolError:
            continue
        assert (result is None and used == 0) or (result is not None and 0 < used <= len(buf))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["v1", "v2"]), _V4, _V4, _PORTS, _PORTS, st.data())
def test_fuzz_mutations_of_valid_headers(version, sip, dip, sport, dport, data):
    header = bytearray(pp.encode(version, (sip, sport), (dip, dport)))
    at = data.draw(st.integers(0, len(header) - 1))
    header[at] = data.draw(st.integers(0, 255))
    try:
        _, used = parse(bytes(header))
    except ProxyProtocolError:
        return
    assert used <= len(header)


# -- through lb ----------------------------------------------------------------------------------
def pp_listener(name, port, trusted, extra=""):
    body = f"    service: app\n    proxy_protocol: true\n    trusted_proxies: [{trusted}]\n"
    return listener(name, port, body + extra)


async def test_accepted_from_trusted_proxies_only(tmp_path):
    log = tmp_path / "pp.log"
    async with servers(echo) as bes:
        port, other, admin = free_port(), free_port(), free_port()
        listeners = pp_listener(
            "edge", port, '"127.0.0.0/8"', f'    access_log: {{path: "{log}"}}\n'
        ) + pp_listener("strict", other, '"10.0.0.0/8"')
        text = tcp_config(admin, listeners, service("app", [bes[0].address]))
        async with running_lb(tmp_path, text):
            for header, _client in (
                (b"PROXY TCP4 203.0.113.7 192.0.2.1 5555 443\r\n", "203.0.113.7:5555"),
                (v2(1, 0x11, inet4("198.51.100.9", "192.0.2.1", 7, 443)), "198.51.100.9:7"),
                (v2(1, 0x21, bytes(15) + b"\x01" + bytes(16) + b"\x00\x08\x00\x09"), "[::1]:8"),
            ):
                r, w = await connect(port)
                for i in range(0, len(header), 5):  # the header arrives in pieces
                    w.write(header[i : i + 5])
                    await w.drain()
                    await asyncio.sleep(0.005)
                w.write(b"payload")
                assert await asyncio.wait_for(r.readexactly(7), 5) == b"payload"  # header gone
                w.close()
            local = v2(0, 0, b"")  # the proxy's own connection: its address stands
            r, w = await connect(port)
            w.write(local + b"ping")
            assert await asyncio.wait_for(r.readexactly(4), 5) == b"ping"
            own = w.get_extra_info("sockname")[1]
            w.close()
            lines = await log_lines(log, 4)
            assert [x["client"] for x in lines] == [
                "203.0.113.7:5555",
                "198.51.100.9:7",
                "[::1]:8",
                f"127.0.0.1:{own}",
            ]
            # a trusted peer without a header: closed
            r, w = await connect(port)
            w.write(b"no header here")
            assert await closed_by_peer(r, 3)
            w.close()
            # an untrusted peer: plain bytes pass (a server that speaks first works too)...
            await roundtrip(other, b"plain")
            r, w = await connect(other)
            w.write(b"PRO")  # could still be a header: held back...
            await asyncio.sleep(0.05)
            w.write(b"TOCOL")  # ...until it cannot
            assert await asyncio.wait_for(r.readexactly(8), 5) == b"PROTOCOL"
            w.close()
            # ...a PROXY header is refused
            for header in (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", SIG + b"\x21\x11\x00\x0c"):
                r, w = await connect(other)
                w.write(header)
                assert await closed_by_peer(r, 3)
                w.close()
            m = await scrape(admin)
        assert sample(m, "lb_tcp_terminations_total", listener="edge", reason="proxy-protocol") == 1
        assert (
            sample(m, "lb_tcp_terminations_total", listener="strict", reason="proxy-protocol") == 2
        )
        assert bes[0].accepted == 4 + 2 + 2  # refused ones may have dialled (untrusted), not sent


async def test_header_from_a_trusted_peer_must_come_in_time(tmp_path):
    async with servers(echo) as bes:
        port, admin = free_port(), free_port()
        extra = "    timeouts: {client_head: 300ms}\n"
        text = tcp_config(
            admin, pp_listener("edge", port, '"127.0.0.1"', extra), service("app", [bes[0].address])
        )
        async with running_lb(tmp_path, text):
            r, w = await connect(port)
            w.write(b"PROXY TCP4 1.2.3.4")
            assert await closed_by_peer(r, 3)
            w.close()
            assert bes[0].accepted == 0


async def test_lb_sends_v1_and_v2_to_backends(tmp_path):
    """A backend that parses the header with lb's own parser and answers with what it read."""

    async def parsing_backend(server, r, w):
        buf = b""
        while True:
            buf += await r.read(4096)
            result, used = parse(buf)
            if result is not None:
                break
        server.received.append(buf[:used])
        w.write(f"{result.version} {result.source[0]}:{result.source[1]}\n".encode())
        w.write(buf[used:])
        await echo(server, r, w)

    async with servers(parsing_backend, parsing_backend) as (b1, b2):
        p1, p2, p3, admin = free_port(), free_port(), free_port(), free_port()
        listeners = (
            listener("one", p1, "    service: v1\n")
            + listener("two", p2, "    service: v2\n")
            + pp_listener("chained", p3, '"127.0.0.1"').replace("service: app", "service: v2")
        )
        services = service("v1", [b1.address], "    proxy_protocol: v1\n") + service(
            "v2", [b2.address], "    proxy_protocol: v2\n"
        )
        async with running_lb(tmp_path, tcp_config(admin, listeners, services)):
            for port, version in ((p1, "1"), (p2, "2")):
                r, w = await connect(port)
                me = w.get_extra_info("sockname")
                w.write(b"hello")
                line = await asyncio.wait_for(r.readline(), 5)
                assert line == f"{version} 127.0.0.1:{me[1]}\n".encode()
                assert await asyncio.wait_for(r.readexactly(5), 5) == b"hello"
                w.close()
            assert b1.received[0].endswith(f" {p1}\r\n".encode())  # the address lb was reached on
            # a header from a trusted proxy is passed on, not lb's own view of the peer
            r, w = await connect(p3)
            w.write(b"PROXY TCP6 2001:db8::7 2001:db8::1 4242 443\r\nhi")
            assert await asyncio.wait_for(r.readline(), 5) == b"2 2001:db8::7:4242\n"
            assert await asyncio.wait_for(r.readexactly(2), 5) == b"hi"
            w.close()
