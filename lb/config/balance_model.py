"""How a service chooses its backend: `services.NAME.balance` (least connections, least
latency, or a consistent hash of a request key) and `services.NAME.affinity` (a cookie naming
the backend).

lb/balancer/balance.py compiles the hashes and affinity into `Service.balance`; least latency
is a mode of the service's picker (lb/balancer/service.py). README "Least latency (Peak EWMA)"
and "Consistent hashing and backend affinity" describe the behaviour.
"""

import os
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from .fieldtypes import Duration, Report
from .schema import Check, marks

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # header and cookie names (RFC 9110 5.6.2)
MAX_TABLE_SIZE = 5_000_011  # Envoy's limit on a Maglev table
DEFAULT_TABLE_SIZE = 65_537  # Envoy's default


def _prime(n: int) -> bool:
    if n < 2:
        return False
    k = 2
    while k * k <= n:
        if n % k == 0:
            return False
        k += 1
    return True


@dataclass
class HashOn:
    """The request key hashed: one header, cookie or query parameter, or the client address
    (as the rate limiter's client_ip: behind `trusted_proxies`, the X-Forwarded-For client)."""

    header: str | None = None
    cookie: str | None = None
    query: str | None = None
    client_ip: bool = False

    @classmethod
    def from_scalar(cls, text: str) -> "HashOn":
        if text != "client_ip":
            raise ValueError(
                f'client_ip, {{header: NAME}}, {{cookie: NAME}} or {{query: NAME}}, found "{text}"'
            )
        return cls(client_ip=True)

    def check(self, report: Report) -> None:
        given = [k for k in ("header", "cookie", "query") if getattr(self, k) is not None]
        if len(given) + self.client_ip != 1:
            report("", "expected exactly one of header, cookie, query, client_ip")
        for k in ("header", "cookie"):
            name = getattr(self, k)
            if name is not None and not _TOKEN.fullmatch(name):
                report(k, f'"{name}" is not a {k} name')
        if self.query is not None and (not self.query or any(c in self.query for c in "&=#")):
            report("query", f'"{self.query}" is not a query parameter name')


HASH_MODES = ("ring_hash", "maglev")
_LATENCY_FIELDS = ("decay", "penalty")
_HASH_FIELDS = ("hash_on", "bounded_load", "virtual_nodes", "table_size")


@dataclass
class Balance:
    mode: Literal["least_connections", "least_latency", "ring_hash", "maglev"] = "least_connections"
    hash_on: HashOn | None = None
    # Consistent hashing with bounded loads: no backend above this times its weighted share of
    # the in-flight requests (Google's c; 1.25 is the paper's example). None: unbounded.
    bounded_load: Annotated[float, Check(lambda v: v >= 1, "a factor >= 1")] | None = None
    virtual_nodes: Annotated[int, Check(lambda v: 1 <= v <= 10_000, "1 to 10000")] = 160
    table_size: int = DEFAULT_TABLE_SIZE
    # least_latency, Peak EWMA (Finagle, Linkerd): the moving average's time constant
    # (Finagle's 10 s), and the RTT that a 429, a 503 or a failed attempt counts as.
    decay: Duration = 10.0
    penalty: Duration = 1.0

    def check(self, report: Report) -> None:
        given = marks(self)
        for name in _LATENCY_FIELDS:
            if self.mode != "least_latency" and name in given:
                report(name, f"{name} applies to mode: least_latency")
            elif getattr(self, name) <= 0:
                report(name, "expected a positive duration")
        if self.mode not in HASH_MODES:
            for name in _HASH_FIELDS:
                if name in given:
                    report(name, f"{name} applies to mode: ring_hash and maglev")
            return
        if self.hash_on is None:
            report("hash_on", f"mode: {self.mode} needs hash_on (header, cookie, query, client_ip)")
        if self.mode == "ring_hash" and "table_size" in given:
            report("table_size", "table_size applies to mode: maglev")
        if self.mode == "maglev":
            if "virtual_nodes" in given:
                report("virtual_nodes", "virtual_nodes applies to mode: ring_hash")
            if not (_prime(self.table_size) and self.table_size <= MAX_TABLE_SIZE):
                report(
                    "table_size",
                    f"expected a prime up to {MAX_TABLE_SIZE}, found {self.table_size}",
                )


@dataclass
class Affinity:
    """A cookie naming the backend that served the client, so later requests go back to it."""

    cookie: str = "lb_affinity"
    ttl: Duration | None = None  # Max-Age; None: a session cookie
    secure: bool = False
    path: str = "/"
    # Key of the backend ids; without it the id is an unkeyed hash of service and address.
    secret_file: str | None = None

    def check(self, report: Report) -> None:
        if not _TOKEN.fullmatch(self.cookie):
            report("cookie", f'"{self.cookie}" is not a cookie name')
        if self.ttl is not None and self.ttl < 1:
            report("ttl", "expected at least 1s")
        if not self.path.startswith("/") or any(c in self.path for c in "; \r\n"):
            report("path", f'a path starting with "/", without ";" or spaces, found "{self.path}"')
        if self.secret_file is not None:
            if not os.path.isfile(self.secret_file):
                report("secret_file", f'file not found: "{self.secret_file}"')
            elif os.path.getsize(self.secret_file) == 0:
                report("secret_file", f'"{self.secret_file}" is empty')
