"""How much one client may hold at once: connections on a listener, requests in flight on a
route.

`ConnectionCaps` is a listener's `max_connections_per_client` (HAProxy's `conn_cur`): the
listener asks `enter` as it accepts a socket, before any byte is read or written, and a
client at its cap has the socket closed; `leave` runs once the connection is gone. A count at
0 is dropped, so memory follows the connections open.

`InFlight` is a route's `client_in_flight` (Traefik's InFlightReq): at most `max` requests of
one key (the rate limiter's key parts) at once, the others answered 429 or 503. A request let
in holds its key's `Slot` as `ex.guard`, which the exchange leaves exactly once as it
finishes, whatever ended it (the response, the client leaving, the backend failing). At
`max_keys` keys in flight, new keys share one overflow slot, capped at `max` as a whole, as
the rate limiter treats a flood of distinct keys.

Both count in this process only: with `lb run --workers N`, each worker applies the cap to the
connections and requests it serves.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from ..config.edge_model import ClientInFlight

if TYPE_CHECKING:
    from ..proxy.exchange import Exchange
    from ..traffic.admission import Key

CountsRegistry = dict[tuple[str, ...], int]


class ConnectionCaps:
    """One listener's connections per client address. Kept across reloads while the listener
    has a cap (a changed cap applies to the counts as they are); a listener that gains the cap
    on a reload counts only the connections it accepts from then on."""

    __slots__ = ("_refused", "counts", "limit", "refused")

    def __init__(self, listener: str, limit: int, refused: CountsRegistry) -> None:
        self.limit = limit
        self.counts: dict[bytes, int] = {}
        self.refused = refused  # runtime.counters["client_connections_refused"]
        self._refused = (listener, "max_connections_per_client")

    def enter(self, ip: bytes) -> bool:
        counts = self.counts
        n = counts.get(ip, 0)
        if n >= self.limit:
            self.refused[self._refused] += 1
            return False
        counts[ip] = n + 1
        return True

    def leave(self, ip: bytes) -> None:
        counts = self.counts
        n = counts.get(ip, 0)
        if n > 1:
            counts[ip] = n - 1
        elif n:
            del counts[ip]


def connection_caps(
    old: ConnectionCaps | None, listener: str, limit: int | None, refused: CountsRegistry
) -> ConnectionCaps | None:
    """A listener's caps after a (re)configuration: the same counts while it keeps a cap."""
    if limit is None:
        return None
    if old is None:
        return ConnectionCaps(listener, limit, refused)
    old.limit = limit
    return old


class Slot:
    """One key's requests in flight on one route; what an admitted exchange holds."""

    __slots__ = ("count", "key", "table")

    def __init__(self, table: InFlight, key: Hashable | None) -> None:
        self.table = table
        self.key = key  # None: the overflow slot, never dropped
        self.count = 0

    def leave(self, ex: Exchange) -> None:
        self.count -= 1
        if self.count == 0 and self.key is not None:
            del self.table.slots[self.key]


class InFlight:
    """One route's `client_in_flight`. `max`, `status` and `max_keys` may change in place on
    a reload; the key spec may not (the controller builds a new table then)."""

    __slots__ = ("key", "key_parts", "max", "max_keys", "overflow", "slots", "status")

    def __init__(self, cfg: ClientInFlight, key: Key) -> None:
        self.key = key
        self.key_parts = tuple(cfg.key)
        self.slots: dict[Hashable, Slot] = {}
        self.overflow = Slot(self, None)
        self.configure(cfg)

    def configure(self, cfg: ClientInFlight) -> None:
        self.max = cfg.max
        self.status = cfg.status
        self.max_keys = cfg.max_keys

    @property
    def in_flight(self) -> int:
        return sum(s.count for s in self.slots.values()) + self.overflow.count

    def take(self, ex: Exchange) -> Slot | None:
        """The slot the exchange now holds, or None when its key is at the cap."""
        key = self.key.of(ex)
        slot = self.slots.get(key)
        if slot is None:
            if len(self.slots) < self.max_keys:
                slot = self.slots[key] = Slot(self, key)
            else:
                slot = self.overflow
        if slot.count >= self.max:
            return None
        slot.count += 1
        return slot
