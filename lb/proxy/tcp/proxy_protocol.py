"""The PROXY protocol (HAProxy's, versions 1 and 2): parsing the header a trusted proxy puts in
front of a connection, and building the header lb sends to backends.

Spec: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt. `parse` takes the first
bytes of a connection and returns the header (or None while more bytes are needed) with how
many bytes it took; anything that cannot be a valid header raises `ProxyProtocolError`, the one
exception this module raises. It has no state and does no I/O, so the HTTP listener can use
it as the TCP one does.

Bounds: a v1 header is at most 107 bytes (the spec's limit, CRLF included); a v2 header at most
MAX_V2 bytes (its length field allows 64 KiB; real ones carry addresses and a few TLVs, well
under 1 KiB). TLVs are walked to check they fit and are otherwise skipped.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

V1_SIGNATURE = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107
MAX_V2 = 16 * 1024
_V2_HEADER = 16  # signature, version/command, family/protocol, length
_ADDRESS_LEN = {1: 12, 2: 36, 3: 216}  # INET, INET6, UNIX
_PORT_MAX = 65535

Address = tuple[str, int]  # (ip, port)


class ProxyProtocolError(ValueError):
    """Not a valid PROXY protocol header (or not one at all)."""


@dataclass(frozen=True, slots=True)
class Result:
    version: Literal[1, 2]
    # The client and the address it connected to, as the proxy saw them. None for a LOCAL
    # connection (the proxy's own, e.g. a health check), v1's UNKNOWN, and v2 families lb does
    # not route by (UNSPEC, UNIX): the connection's own addresses stand then.
    source: Address | None
    destination: Address | None
    local: bool = False  # v2 LOCAL command


def looks_like(buf: bytes | bytearray) -> bool | None:
    """Whether `buf` starts with a PROXY header signature; None while too short to tell."""
    undecided = False
    for sig in (V1_SIGNATURE, V2_SIGNATURE):
        n = min(len(buf), len(sig))
        if buf[:n] == sig[:n]:
            if n == len(sig):
                return True
            undecided = True
    return None if undecided else False


def parse(buf: bytes | bytearray) -> tuple[Result | None, int]:
    """(header, bytes it took) from the start of `buf`; (None, 0) while more are needed."""
    seen = looks_like(buf)
    if seen is None:
        return None, 0
    if not seen:
        raise ProxyProtocolError("no PROXY protocol header")
    if buf[:1] == b"P":
        return _parse_v1(bytes(buf[:V1_MAX]))
    return _parse_v2(buf)


def _parse_v1(buf: bytes) -> tuple[Result | None, int]:
    end = buf.find(b"\r\n")
    if end < 0:
        if len(buf) >= V1_MAX:
            raise ProxyProtocolError(f"v1 header longer than {V1_MAX} bytes")
        if any(c < 0x20 or c > 0x7E for c in buf if c != 0x0D):
            raise ProxyProtocolError("v1 header with a non-printable byte")
        return None, 0
    line = buf[:end]
    if any(c < 0x20 or c > 0x7E for c in line):
        raise ProxyProtocolError("v1 header with a non-printable byte")
    parts = line.decode("ascii").split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return Result(1, None, None), end + 2  # the rest of the line is to be ignored
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"v1 header not understood: {line[:60]!r}")
    version = 4 if parts[1] == "TCP4" else 6
    src = (_v1_ip(parts[2], version), _v1_port(parts[4]))
    dst = (_v1_ip(parts[3], version), _v1_port(parts[5]))
    return Result(1, src, dst), end + 2


def _v1_ip(text: str, version: int) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"v1 header: bad address {text[:45]!r}") from None
    if addr.version != version:
        raise ProxyProtocolError(f"v1 header: {text!r} is not an IPv{version} address")
    return str(addr)


def _v1_port(text: str) -> int:
    # Decimal without a sign or leading zeros, as the spec writes them.
    if not text.isdigit() or not text.isascii() or len(text) > 5 or text != str(int(text)):
        raise ProxyProtocolError(f"v1 header: bad port {text[:8]!r}")
    port = int(text)
    if port > _PORT_MAX:
        raise ProxyProtocolError(f"v1 header: bad port {text!r}")
    return port


def _parse_v2(buf: bytes | bytearray) -> tuple[Result | None, int]:
    if len(buf) < _V2_HEADER:
        return None, 0
    version, command = buf[12] >> 4, buf[12] & 0x0F
    if version != 2:
        raise ProxyProtocolError(f"v2 header: version {version}")
    if command > 1:
        raise ProxyProtocolError(f"v2 header: command {command}")
    family, protocol = buf[13] >> 4, buf[13] & 0x0F
    total = _V2_HEADER + int.from_bytes(buf[14:16], "big")
    if total > MAX_V2:
        raise ProxyProtocolError(f"v2 header longer than {MAX_V2} bytes")
    if len(buf) < total:
        return None, 0
    payload = bytes(buf[_V2_HEADER:total])
    if command == 0:  # LOCAL: the proxy's own connection; whatever follows is ignored
        return Result(2, None, None, local=True), total
    if family > 3 or protocol > 2:
        raise ProxyProtocolError(f"v2 header: family {family}, protocol {protocol}")
    if protocol == 2:
        raise ProxyProtocolError("v2 header describes a datagram on a stream connection")
    size = _ADDRESS_LEN.get(family, 0)
    if len(payload) < size:
        raise ProxyProtocolError("v2 header shorter than its addresses")
    _check_tlvs(payload[size:])
    if family == 1 and protocol == 1:
        src = (str(ipaddress.IPv4Address(payload[0:4])), int.from_bytes(payload[8:10], "big"))
        dst = (str(ipaddress.IPv4Address(payload[4:8])), int.from_bytes(payload[10:12], "big"))
        return Result(2, src, dst), total
    if family == 2 and protocol == 1:
        src = (str(ipaddress.IPv6Address(payload[0:16])), int.from_bytes(payload[32:34], "big"))
        dst = (str(ipaddress.IPv6Address(payload[16:32])), int.from_bytes(payload[34:36], "big"))
        return Result(2, src, dst), total
    return Result(2, None, None), total  # UNSPEC or UNIX: nothing lb can use


def _check_tlvs(tlvs: bytes) -> None:
    pos = 0
    while pos < len(tlvs):
        if pos + 3 > len(tlvs):
            raise ProxyProtocolError("v2 header: truncated TLV")
        pos += 3 + int.from_bytes(tlvs[pos + 1 : pos + 3], "big")
        if pos > len(tlvs):
            raise ProxyProtocolError("v2 header: truncated TLV")


# -- sending --------------------------------------------------------------------------------------
def encode(version: Literal["v1", "v2"], source: Address | None, dest: Address | None) -> bytes:
    """The header lb sends a backend for a client at `source` that connected to `dest`."""
    pair = _same_family(source, dest)
    if version == "v1":
        if pair is None:
            return b"PROXY UNKNOWN\r\n"
        ip_version, (sip, sport), (dip, dport) = pair
        return f"PROXY TCP{ip_version} {sip} {dip} {sport} {dport}\r\n".encode("ascii")
    if pair is None:
        # PROXY command, UNSPEC family: the backend uses the connection's own addresses.
        return V2_SIGNATURE + b"\x21\x00\x00\x00"
    ip_version, (sip, sport), (dip, dport) = pair
    packed = (
        ipaddress.ip_address(sip).packed
        + ipaddress.ip_address(dip).packed
        + sport.to_bytes(2, "big")
        + dport.to_bytes(2, "big")
    )
    family = b"\x11" if ip_version == 4 else b"\x21"  # INET or INET6, STREAM
    return V2_SIGNATURE + b"\x21" + family + len(packed).to_bytes(2, "big") + packed


def _same_family(
    source: Address | None, dest: Address | None
) -> tuple[int, Address, Address] | None:
    """Both addresses in one family, as the header needs: IPv4-mapped IPv6 addresses (a
    dual-stack listener) written as IPv4, or IPv4 mapped when the other one is IPv6."""
    if source is None or dest is None:
        return None
    try:
        a, b = ipaddress.ip_address(source[0]), ipaddress.ip_address(dest[0])
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    if isinstance(b, ipaddress.IPv6Address) and b.ipv4_mapped is not None:
        b = b.ipv4_mapped
    if a.version != b.version:
        a, b = (ipaddress.IPv6Address(f"::ffff:{x}") if x.version == 4 else x for x in (a, b))
    return a.version, (str(a), source[1]), (str(b), dest[1])
