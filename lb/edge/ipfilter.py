"""IP allow and deny lists, compiled once per config into a lookup whose cost does not grow
with the lists.

A `CidrSet` keeps, per prefix length present, a hash set of the networks' addresses shifted
right by the host bits: an address is in the set when, for some present length, its shifted
value is a member. A lookup is one integer shift and one set probe per distinct prefix length
(at most 33 for IPv4 and 129 for IPv6, in practice a handful), so 10 or 10,000 CIDRs cost
the same. IPv4-mapped IPv6 addresses (::ffff:a.b.c.d, what a dual-stack socket reports for
an IPv4 peer) are judged as the IPv4 address, in the lists and in the lookups.

`IpRule` is one `ip_filter` (deny wins; with an allow list, what is outside it is refused),
with a memo of its verdicts per address: the request path pays a dict look-up for a client
seen before. The memo is emptied rather than grown when full, since behind trusted proxies
the addresses come from X-Forwarded-For.
"""

from __future__ import annotations

import ipaddress
import socket

from ..config.edge_model import IpFilter

_MEMO_MAX = 4096
_MAPPED = 0xFFFF  # the upper 96 bits of an IPv4-mapped IPv6 address

Address = tuple[int, int]  # (4 or 6, the address as an integer)
Table = tuple[tuple[int, frozenset[int]], ...]  # (host bits, shifted network addresses)


def parse_address(ip: bytes) -> Address | None:
    """The address of a peer or X-Forwarded-For hop; None when it is not one."""
    text = ip.decode("latin-1").strip()
    try:
        if ":" not in text:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, text.partition("%")[0]), "big")
    except OSError:
        return None
    if value >> 32 == _MAPPED:
        return 4, value & 0xFFFFFFFF
    return 6, value


def _network(cidr: str) -> tuple[int, int, int]:
    """(version, host bits, network address) of a CIDR; mapped IPv6 ranges become IPv4."""
    net = ipaddress.ip_network(cidr, strict=False)
    value = int(net.network_address)
    if net.version == 6 and net.prefixlen >= 96 and value >> 32 == _MAPPED:
        return 4, 128 - net.prefixlen, value & 0xFFFFFFFF
    return net.version, net.max_prefixlen - net.prefixlen, value


def _table(by_bits: dict[int, set[int]]) -> Table:
    return tuple((bits, frozenset(values)) for bits, values in sorted(by_bits.items()))


class CidrSet:
    """A list of CIDRs (IPv4 and IPv6 mixed), for membership of addresses."""

    __slots__ = ("size", "v4", "v6")

    def __init__(self, cidrs: list[str]) -> None:
        v4: dict[int, set[int]] = {}
        v6: dict[int, set[int]] = {}
        for cidr in cidrs:
            version, bits, value = _network(cidr)
            (v4 if version == 4 else v6).setdefault(bits, set()).add(value >> bits)
        self.v4: Table = _table(v4)
        self.v6: Table = _table(v6)
        self.size = len(cidrs)

    def __contains__(self, address: Address) -> bool:
        version, value = address
        for bits, networks in self.v4 if version == 4 else self.v6:
            if value >> bits in networks:
                return True
        return False


class IpRule:
    """One `ip_filter`: `admits(ip)` is the verdict on a client address (as bytes)."""

    __slots__ = ("_memo", "allow", "cfg", "deny")

    def __init__(self, cfg: IpFilter) -> None:
        self.cfg = cfg
        self.allow = CidrSet(cfg.allow) if cfg.allow else None
        self.deny = CidrSet(cfg.deny)
        self._memo: dict[bytes, bool] = {}

    def admits(self, ip: bytes) -> bool:
        verdict = self._memo.get(ip)
        if verdict is None:
            verdict = self.judge(ip)
            memo = self._memo
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            memo[ip] = verdict
        return verdict

    def judge(self, ip: bytes) -> bool:
        address = parse_address(ip)
        if address is None:
            return False  # not an address (a garbled forwarded hop): nothing vouches for it
        if address in self.deny:
            return False
        return self.allow is None or address in self.allow
