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

With `lb run --workers N` both count across the workers, in the shared segment's counts per
client (lb/shm.py, `ClientCounts`): a worker first counts a client there, keeps the row it got
while it holds any of that client's connections or requests, and counts in that row only from
then on (one compare-and-swap each way). A client that finds no free row there (the table holds
65,536 clients at once) is counted in its worker alone, as in a single process.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import TYPE_CHECKING

from ..config.edge_model import ClientInFlight
from ..shm import shared_client_counts

if TYPE_CHECKING:
    from .._shm import ClientCounts
    from ..proxy.exchange import Exchange
    from ..traffic.admission import Key

CountsRegistry = dict[tuple[str, ...], int]


class ConnectionCaps:
    """One listener's connections per client address. Kept across reloads while the listener
    has a cap (a changed cap applies to the counts as they are); a listener that gains the cap
    on a reload counts only the connections it accepts from then on."""

    __slots__ = ("_refused", "counts", "limit", "listener", "refused", "rows", "shared")

    def __init__(self, listener: str, limit: int, refused: CountsRegistry) -> None:
        self.listener = listener
        self.limit = limit
        self.counts: dict[bytes, int] = {}  # this process's connections per client
        self.refused = refused  # runtime.counters["client_connections_refused"]
        self._refused = (listener, "max_connections_per_client")
        self.shared: ClientCounts | None = shared_client_counts()
        self.rows: dict[bytes, int] = {}  # client -> its shared row, while counted there

    def enter(self, ip: bytes) -> bool:
        counts = self.counts
        n = counts.get(ip, 0)
        shared = self.shared
        if shared is not None:
            if n == 0:
                row = shared.enter(hash((self.listener, ip)), self.limit)
                if row >= 0:
                    self.rows[ip] = row
                    counts[ip] = 1
                    return True
                if row == -1:
                    return self._refuse()
                # no free row: counted here alone
            else:
                row = self.rows.get(ip, -2)
                if row >= 0:
                    if not shared.enter_row(row, self.limit):
                        return self._refuse()
                    counts[ip] = n + 1
                    return True
        if n >= self.limit:
            return self._refuse()
        counts[ip] = n + 1
        return True

    def _refuse(self) -> bool:
        self.refused[self._refused] += 1
        return False

    def leave(self, ip: bytes) -> None:
        counts = self.counts
        n = counts.get(ip, 0)
        if not n:
            return
        if self.shared is not None:
            row = self.rows.get(ip, -2)
            if row >= 0:
                self.shared.leave(row)
                if n == 1:
                    del self.rows[ip]
        if n > 1:
            counts[ip] = n - 1
        else:
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

    __slots__ = ("count", "key", "row", "table")

    def __init__(self, table: InFlight, key: Hashable | None) -> None:
        self.table = table
        self.key = key  # None: the overflow slot, never dropped
        self.count = 0  # in this process
        self.row = -2  # the key's shared row while counted there (workers), else < 0

    def leave(self, ex: Exchange) -> None:
        self.count -= 1
        if self.row >= 0:
            self.table.shared.leave(self.row)  # type: ignore[union-attr]
        if self.count == 0 and self.key is not None:
            del self.table.slots[self.key]


class InFlight:
    """One route's `client_in_flight`. `max`, `status` and `max_keys` may change in place on
    a reload; the key spec may not (the controller builds a new table then)."""

    __slots__ = (
        "key", "key_parts", "max", "max_keys", "overflow", "route", "shared", "slots", "status",
    )  # fmt: skip

    def __init__(self, route: str, cfg: ClientInFlight, key: Key) -> None:
        self.route = route
        self.key = key
        self.key_parts = tuple(cfg.key)
        self.slots: dict[Hashable, Slot] = {}
        self.overflow = Slot(self, None)
        self.shared: ClientCounts | None = shared_client_counts()
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
        shared = self.shared
        if slot is None:
            if len(self.slots) >= self.max_keys:
                slot = self.overflow
            else:
                slot = Slot(self, key)
                if shared is not None:
                    # The key's first request in this process: counted across the workers,
                    # or here alone when the shared table has no free row for it.
                    row = shared.enter(hash((self.route, key)), self.max)
                    if row == -1:
                        return None
                    if row >= 0:
                        slot.row = row
                        slot.count = 1
                        self.slots[key] = slot
                        return slot
                self.slots[key] = slot
        elif slot.row >= 0:
            if not shared.enter_row(slot.row, self.max):  # type: ignore[union-attr]
                return None
            slot.count += 1
            return slot
        if slot.count >= self.max:
            return None
        slot.count += 1
        return slot
