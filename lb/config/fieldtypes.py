"""The field types the config dataclasses share: units (durations, sizes, rates), checked
scalars (percentages, weights, statuses, gRPC statuses, HTTP/2 sizes, regexes, CIDRs),
addresses, and `Report`, the callback a dataclass's `check()` reports its cross-field
problems through.

An `Annotated` type's metadata is what schema.py converts and checks a YAML scalar by.
"""

import ipaddress
import re
from collections.abc import Callable
from typing import Annotated

from ..proxy.grpc import parse_code
from .schema import Check, ReadsFile, Unit
from .units import parse_duration, parse_rate, parse_size

Report = Callable[[str, str], None]

# A file lb reads (certificates, keys, htpasswd, JWKS): a change to it alone reloads.
InputFile = Annotated[str, ReadsFile]
Duration = Annotated[float, Unit(parse_duration, numbers_ok=True)]
Size = Annotated[int, Unit(parse_size)]
Rate = Annotated[tuple[float, float], Unit(parse_rate)]
Percent = Annotated[float, Check(lambda v: 0 <= v <= 100, "a percentage from 0 to 100")]
Positive = Annotated[int, Check(lambda v: v > 0, "a positive integer")]
NonNegative = Annotated[int, Check(lambda v: v >= 0, "an integer >= 0")]
Weight = Annotated[int, Check(lambda v: 0 <= v <= 1_000_000, "a weight from 0 to 1000000")]
Status = Annotated[int, Check(lambda v: 100 <= v <= 599, "an HTTP status from 100 to 599")]
# A gRPC error status: its name as Envoy spells it ("unavailable") or its code (14)
GrpcStatus = Annotated[int, Unit(parse_code)]
# HTTP/2 SETTINGS values (RFC 9113 6.5.2), sizes with units
FrameSize = Annotated[
    Size, Check(lambda v: 16384 <= v <= 16777215, "a size from 16384 to 16777215")
]
WindowSize = Annotated[Size, Check(lambda v: 0 <= v < 1 << 31, "a size from 0 to 2147483647")]
ConnectionWindow = Annotated[
    Size, Check(lambda v: 65535 <= v < 1 << 31, "a size from 65535 to 2147483647")
]
Size32 = Annotated[Size, Check(lambda v: 0 <= v < 1 << 32, "a size from 0 to 4294967295")]


def _valid_regex(text: str) -> bool:
    try:
        re.compile(text)
    except re.error:
        return False
    return True


def split_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'an address "host:port", found "{text}"')
    return host.strip("[]"), int(port)


def _valid_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError:
        return False
    return True


Regex = Annotated[str, Check(_valid_regex, "a valid regular expression")]
Address = Annotated[tuple[str, int], Unit(split_hostport)]
Cidr = Annotated[str, Check(_valid_cidr, "a CIDR like 10.0.0.0/8")]
