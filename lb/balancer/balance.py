"""`Service.balance`: how a service whose config sets a hash mode or an affinity cookie picks
its backend. A service with neither has `balance` None and the exchange's inline
least-connections pick, untouched.

Consistent hashing (`balance.mode: ring_hash | maglev`)
    The request's key (`hash_on`) is looked up in the service's `HashTable` (lb/_hashring,
    or its twin), which walks to the first eligible backend (with `bounded_load`: the first
    below its share). A request without the key, or when no backend of the table can take it,
    is picked by least connections like any other.

    The table holds the backends that are not removed and have a weight; it is rebuilt (at
    `Service.update`: config, discovery) when that set or a weight changes, never per request.
    Eligibility (drain, health, ejection, open breaker) is a flag per slot, mirrored from
    `Service.refresh`: a backend going down moves only its own keys, which come back to it
    when it is up again, and a flap costs O(1) rather than a rebuild.

    The bound compares the picker's in-flight counts (whichever pick chose the backend): the
    table reads them itself, keeping none of its own. With `lb run --workers N` they are the
    counts of every worker in shared memory, the service's total in a row of its own
    (`lb.shm.attach_service`), so the bound holds for the whole tree.

    Slow start: a backend that ramps admits the share of its keys its ramp has reached (see
    ext/hashring.pyx), refreshed at most every RAMP_STEP seconds while some backend ramps.
    When every backend ramps (a cold start), none is held back.

Affinity (`affinity`)
    First: a request whose cookie names an eligible backend goes there (a retry excepted,
    which goes elsewhere); any other is picked as above and its response sets the cookie
    (`Exchange.set_cookie`, sent by `Exchange.response_head`).

Counters (runtime.counters): `lb_balance_fallbacks_total{service, reason}` with reason
"no_key" (the request had no key), "unavailable" (no backend of the table could take it) or
"bounded_load" (the key's backend was full and the walk went on); `lb_affinity_total{service,
result}`, result "hit", "moved" (the cookie named a backend that is gone or not eligible, so it
is rewritten) or "new"; `lb_balance_rebuilds_total{service}`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..config import model
from ..observe.metrics import Counters, register_counter
from ..shm import attach_service
from .affinity import Affinity
from .backend import Backend
from .hash_key import HashKey
from .hashring import MAGLEV, RING, HashTable

if TYPE_CHECKING:
    from ..proxy.exchange import Exchange
    from .service import Service

FALLBACKS = "balance_fallbacks"
AFFINITY = "affinity"
REBUILDS = "balance_rebuilds"
register_counter(
    FALLBACKS,
    "lb_balance_fallbacks_total",
    "Consistent-hash picks that did not go to the key's backend: no_key and unavailable went "
    "to least connections, bounded_load to the next backend below its share.",
    ("service", "reason"),
)
register_counter(
    AFFINITY,
    "lb_affinity_total",
    "Requests of services with an affinity cookie: hit (its backend), moved (cookie "
    "rewritten: its backend is gone or not eligible), new (no cookie yet).",
    ("service", "result"),
)
register_counter(
    REBUILDS, "lb_balance_rebuilds_total", "Consistent-hash table rebuilds.", ("service",)
)

RAMP_STEP = 0.05  # seconds between slow-start refreshes of the table while a backend ramps
ADMIT_TRIES = 8  # half-open breakers refusing in a row before least connections decides


class Balance:
    __slots__ = (
        "_members",
        "_next_ramp",
        "_ramps",
        "affinity",
        "counts",
        "key",
        "keys",
        "service",
        "signature",
        "size",
        "table",
    )

    def __init__(
        self,
        service: Service,
        key: HashKey | None,
        affinity: Affinity | None,
        counters: Counters,
    ) -> None:
        cfg: model.Service = service.config
        self.service = service
        self.key = key
        self.affinity = affinity
        self.table: HashTable | None = None
        self.size = 0
        bound = 0.0
        if key is not None:
            mode = cfg.balance.mode
            kind = RING if mode == "ring_hash" else MAGLEV
            bound = cfg.balance.bounded_load or 0.0
            self.table = HashTable(kind, bound, service.picker)
            self.size = cfg.balance.virtual_nodes if mode == "ring_hash" else cfg.balance.table_size
        if bound:
            attach_service(service.picker, service.name)  # no-op unless --workers
        else:
            service.picker.detach_sum()  # a bound dropped by a reload: no more shared sum
        self.counts = counters
        name = service.name
        self.keys = {
            reason: (name, reason)
            for reason in ("no_key", "unavailable", "bounded_load", "hit", "moved", "new")
        }
        self.signature: tuple[tuple[str, int], ...] | None = None
        self._ramps: set[int] = set()
        self._next_ramp = 0.0
        self._members = 0
        self.rebuild(service.clock())

    # -- off the request path: membership, eligibility, ramps ------------------------------------
    def rebuild(self, now: float) -> None:
        """`Service.update`: rebuild the table and the cookie ids if the set or a weight moved."""
        svc = self.service
        live = [b for b in svc.backends.values() if not b.removed and b.weight > 0]
        signature = tuple(sorted((b.name, b.weight) for b in live))
        if self.affinity is not None:
            self.affinity.rebuild(svc.backends.values())
        table = self.table
        if table is None:
            return
        for b in svc.backends.values():
            table.set_eligible(b.slot, b.eligible(now))
        if signature != self.signature:
            table.rebuild([(b.slot, b.weight, b.name.encode()) for b in live], self.size)
            self.signature = signature
            self.counts[REBUILDS][(svc.name,)] += 1
        self._members = len(live)
        self._ramps = {b.slot for b in live if self._ramping(b, now)}
        for b in svc.backends.values():
            if b.slot not in self._ramps:
                table.set_permille(b.slot, 1000)
        self._advance(now)

    def refreshed(self, b: Backend, eligible: bool, now: float) -> None:
        """`Service.refresh`: one backend's eligibility changed (or may have)."""
        table = self.table
        if table is None:
            return
        table.set_eligible(b.slot, eligible)
        if eligible and self._ramping(b, now):
            self._ramps.add(b.slot)
            self._advance(now)

    def _ramping(self, b: Backend, now: float) -> bool:
        svc = self.service
        return svc.config.slow_start > 0 and svc.picker.effective_weight(b.slot, now) < b.weight

    def _advance(self, now: float) -> None:
        """Each ramping slot admits its ramp's share of its keys; all of them when all ramp."""
        table, picker = self.table, self.service.picker
        assert table is not None
        everyone = len(self._ramps) >= self._members
        for slot in list(self._ramps):
            b = self.service.by_slot[slot]
            if b is None or b.weight <= 0:
                self._ramps.discard(slot)
                continue
            permille = round(picker.effective_weight(slot, now) * 1000 / b.weight)
            if permille >= 1000:
                self._ramps.discard(slot)
            table.set_permille(slot, 1000 if everyone else permille)
        self._next_ramp = now + RAMP_STEP

    # -- Service.admit ----------------------------------------------------------------------------
    def refused(self, slot: int) -> None:
        """A half-open breaker with its probes out: out of the walk until it reports."""
        if self.table is not None:
            self.table.set_eligible(slot, False)

    # -- the request path -------------------------------------------------------------------------
    def pick(self, ex: Exchange, now: float, tried: Sequence[Backend] | None) -> Backend | None:
        """Choose and take a backend for `ex` (in-flight + 1), or None when none can serve."""
        aff = self.affinity
        if aff is None:
            return self._choose(ex, now, tried)
        svc = self.service
        wanted = aff.requested(ex.info.cookie)
        if wanted is not None:
            b = aff.backends.get(wanted)
            if b is not None and b.eligible(now) and (tried is None or b not in tried):
                svc.picker.take(b.slot)
                if svc.admit(b.slot, now) is not None:
                    ex.set_cookie = None
                    self.counts[AFFINITY][self.keys["hit"]] += 1
                    return b
        b = self._choose(ex, now, tried)
        if b is not None:
            header = aff.headers.get(b)
            same = header is not None and wanted is not None and aff.backends.get(wanted) is b
            ex.set_cookie = None if same else header
            result = "hit" if same else "new" if wanted is None else "moved"
            self.counts[AFFINITY][self.keys[result]] += 1
        return b

    def _choose(self, ex: Exchange, now: float, tried: Sequence[Backend] | None) -> Backend | None:
        svc = self.service
        table = self.table
        if table is None:
            return svc.pick(now, tried or ())
        key = self.key.of(ex) if self.key is not None else None
        if key is None:
            self.counts[FALLBACKS][self.keys["no_key"]] += 1
            return svc.pick(now, tried or ())
        if tried and svc.panic:  # panic walks every backend: only Service.pick can pass some over
            return svc.pick(now, tried)
        if self._ramps and now >= self._next_ramp:
            self._advance(now)
        # A retry walks past the backends that failed it, as Service.pick passes them over.
        skipped = [b.slot for b in tried if table.eligible(b.slot)] if tried else ()
        for slot in skipped:
            table.set_eligible(slot, False)
        try:
            for _ in range(ADMIT_TRIES):
                slot = table.pick(key, svc.panic)
                if slot < 0:
                    break
                svc.picker.take(slot)
                b = svc.admit(slot, now)
                if b is not None:
                    if table.spilled:
                        self.counts[FALLBACKS][self.keys["bounded_load"]] += 1
                    return b
        finally:
            for slot in skipped:
                table.set_eligible(slot, True)
        self.counts[FALLBACKS][self.keys["unavailable"]] += 1
        return svc.pick(now, tried or ())
