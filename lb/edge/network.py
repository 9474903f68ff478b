"""The network edge policies in the chain's vocabulary (lb/edge/chain.py): IP allow and deny
lists, and the cap on one client's requests in flight on a route.

The client an `ip_filter` judges is the rate limiter's `client_ip` key, the same function:
the peer address, or behind the listener's `trusted_proxies` the right-most untrusted
X-Forwarded-For hop. Refused: 403. A `client_in_flight` cap over its `max` answers its
`status` (429 by default); a request let in holds its key's slot as `ex.guard` until the
exchange finishes, whatever ends it.

Per-listener connection caps are not here: a listener applies them as it accepts
(lb/proxy/listener.py, lb/proxy/tcp/listener.py), before any request exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..observe.metrics import register_counter
from .chain import Refusal, Verdict
from .client_caps import InFlight
from .ipfilter import IpRule

if TYPE_CHECKING:
    from ..proxy.exchange import Exchange
    from ..traffic.admission import ClientIp

# Counted by the listeners as they accept (lb/edge/client_caps.py, lb/proxy/listener.py).
register_counter(
    "client_connections_refused",
    "lb_client_connections_refused_total",
    "Connections closed as they were accepted, by listener and policy "
    "(max_connections_per_client, ip_filter on tcp listeners).",
    ("listener", "policy"),
)

_FORBIDDEN = Refusal(403)
_BUSY = {status: Refusal(status) for status in (429, 503)}


class IpFilterPolicy:
    """One `ip_filter`: `ip_filter` on a route, `listener_ip_filter` on a listener."""

    __slots__ = ("client_ip", "name", "rule")

    def __init__(self, name: str, rule: IpRule, client_ip: ClientIp) -> None:
        self.name = name
        self.rule = rule
        self.client_ip = client_ip

    def check(self, ex: Exchange) -> Verdict:
        return None if self.rule.admits(self.client_ip.of(ex)) else _FORBIDDEN


class ClientInFlightPolicy:
    """One route's `client_in_flight`."""

    __slots__ = ("in_flight", "name")

    def __init__(self, in_flight: InFlight) -> None:
        self.name = "client_in_flight"
        self.in_flight = in_flight

    def check(self, ex: Exchange) -> Verdict:
        in_flight = self.in_flight
        slot = in_flight.take(ex)
        if slot is None:
            return _BUSY[in_flight.status]
        ex.guard = slot  # left once in Exchange._finish
        return None
