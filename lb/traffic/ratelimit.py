"""Local rate limiting with GCRA (the generic cell rate algorithm).

Why GCRA rather than a token bucket or a sliding window:
- one float of state per key (the theoretical arrival time, TAT), so a table of 100,000 clients
  costs one dict entry each and nothing else;
- the answer is exact and closed-form: how many requests remain, when the key is fully
  recovered, and precisely when a rejected request would be admitted (Retry-After), with no
  counters to sum and no window-boundary double bursts;
- no refill timer: state only changes when a request arrives, so idle keys cost no CPU and a
  key whose TAT is in the past is indistinguishable from a key never seen, which makes
  eviction of such keys free of any effect.

Semantics: `rate` requests per `period` seconds at steady state; a client that has been idle may
send `limit = rate + burst` requests back to back (the quota of one period plus the extra
allowance), after which it is paced at one request per `period / rate` seconds.

Bounded memory: at most `max_keys` keys are held. Keys whose TAT has passed are dropped lazily,
a few per newcomer, by sweeping from the least recently admitted end. A key still paying off
its debt is never dropped, because dropping it would hand an abusive client a fresh burst (the
flaw of Envoy's 20-entry per-IP LRU). When the table is full and the sweep finds no recovered
key, the newcomer is not given a slot of its own but judged against one shared "overflow"
bucket with the same rate and burst: during a flood of distinct keys, the flood as a whole gets
one client's allowance, while every client already tracked keeps its own bucket unchanged.

Built with Cython (setup.py), `GcraLimit` and `LocalLimiter` are extension types typed by
ratelimit.pxd: `allow` runs once per rate-limited request. A key's TAT is held in a `Tat`
(compiled, a C double in an object the size of a float) that an admission updates in place,
so admitting a known key probes the table once and moves the key to its end, no more.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import NamedTuple

# Entries inspected per newcomer: a couple while there is room (keeps the table near the active
# set), more when full (so a recovered entry is found before falling back to overflow). Both
# constant, so a check stays O(1) amortised.
_SWEEP_WITH_ROOM = 2
_SWEEP_WHEN_FULL = 8


class Decision(NamedTuple):
    """Outcome of one check.

    A NamedTuple rather than a frozen dataclass: same immutable, attribute-access value, but it
    is built on every request and costs ~250 ns against ~630 ns for a frozen dataclass.
    """

    allowed: bool
    limit: int  # requests an idle client may send back to back
    remaining: int  # requests of cost 1 that would be admitted right now, after this one
    reset_after: float  # seconds until the key is fully recovered (remaining == limit)
    retry_after: float  # seconds until this request would be admitted; 0.0 when allowed


def _sf_string(name: str) -> bytes:
    """Serialise `name` as a structured-field string (RFC 8941 section 3.3.3)."""
    if any(not (0x20 <= ord(c) <= 0x7E) for c in name):
        raise ValueError(f"rate-limit policy name must be printable ASCII: {name!r}")
    return b'"' + name.replace("\\", "\\\\").replace('"', '\\"').encode("ascii") + b'"'


class PolicyHeaders:
    """RateLimit-Policy / RateLimit / Retry-After fields (draft-ietf-httpapi-ratelimit-headers).

    The draft's `q` and `w` are integers, so the steady rate is expressed over a whole number of
    seconds: `w` is the period rounded to seconds (at least 1) and `q` the quota in that window;
    a rate below one per second widens `w` until `q` is at least 1. The burst allowance is not
    part of the policy (the draft has no parameter for it): `r` may therefore exceed `q` for a
    client that has been idle.
    """

    def __init__(self, rate: float, period: float) -> None:
        interval = period / rate
        window = max(1, round(period))
        quota = round(window / interval)
        if quota < 1:
            window = math.ceil(interval)
            quota = 1
        self.quota = quota
        self.window = window
        # Policy names come from configuration, so this stays as small as the set of policies.
        self._by_name: dict[str, tuple[tuple[bytes, bytes], bytes]] = {}

    def _for(self, name: str) -> tuple[tuple[bytes, bytes], bytes]:
        item = _sf_string(name)
        policy = (b"RateLimit-Policy", b"%s;q=%d;w=%d" % (item, self.quota, self.window))
        cached = self._by_name[name] = (policy, item + b";r=")
        return cached

    def build(self, decision: Decision, name: str) -> list[tuple[bytes, bytes]]:
        cached = self._by_name.get(name) or self._for(name)
        policy, prefix = cached
        out = [
            policy,
            (
                b"RateLimit",
                b"%s%d;t=%d" % (prefix, decision.remaining, math.ceil(decision.reset_after)),
            ),
        ]
        if not decision.allowed:
            out.append((b"Retry-After", b"%d" % max(1, math.ceil(decision.retry_after))))
        return out


class Tat:
    """One key's theoretical arrival time, held by reference in a LocalLimiter's table."""

    __slots__ = ("at",)

    def __init__(self, at: float) -> None:
        self.at = at

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tat) and other.at == self.at

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Tat({self.at!r})"


class GcraLimit:
    """One limit's GCRA figures, from `rate` per `period` plus `burst`, and the header fields
    that announce it. The in-process, worker-shared and Redis limiters all derive from it, so
    they validate alike and admit alike."""

    __slots__ = ("_headers", "_slack", "burst", "interval", "limit", "period", "rate", "tolerance")

    def __init__(self, rate: float, period: float, burst: int) -> None:
        if rate <= 0 or period <= 0:
            raise ValueError("rate and period must be positive")
        if burst < 0:
            raise ValueError("burst must not be negative")
        self.rate = rate
        self.period = period
        self.burst = burst
        self.interval = period / rate  # seconds one request of cost 1 adds to a key's TAT
        self.limit = max(1, int(rate + burst))
        self.tolerance = self.limit * self.interval
        # TATs are sums of many float additions; without a hair of slack the `limit`-th request
        # of a burst can be rejected by a rounding error. A thousandth of an interval is far
        # above float noise and far below anything a client could exploit.
        self._slack = self.interval * 1e-3
        self._headers = PolicyHeaders(rate, period)

    def headers(self, decision: Decision, policy_name: str) -> list[tuple[bytes, bytes]]:
        """Response header fields for `decision`; Retry-After is added on rejection."""
        return self._headers.build(decision, policy_name)

    def allow(self, key: Hashable, now: float) -> bool:
        """Admit one request of cost 1 now, or not. The in-process limiters answer it (declared
        here so that a limit calls it directly, compiled); a Redis limiter decides
        asynchronously, through `check`."""
        raise NotImplementedError


class LocalLimiter(GcraLimit):
    """Per-key GCRA limiter for one process. Not thread-safe; one event loop owns it."""

    __slots__ = ("_last", "_overflow_tat", "_tats", "max_keys", "overflowed")

    def __init__(self, rate: float, period: float, burst: int, *, max_keys: int = 100_000) -> None:
        super().__init__(rate, period, burst)
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.max_keys = max_keys
        self._tats: OrderedDict[Hashable, Tat] = OrderedDict()
        self._last: Tat | None = None  # the Tat of the table's last key (or of none in it)
        self._overflow_tat = -math.inf
        self.overflowed = 0  # checks judged against the shared overflow bucket

    def __len__(self) -> int:
        return len(self._tats)

    def check(self, key: Hashable, now: float, cost: int = 1) -> Decision:
        """Admit or reject one request of `cost` units (0 peeks without consuming)."""
        tats = self._tats
        held = tats.get(key)
        tat = None if held is None else held.at
        overflow = False
        if held is None and not self._room_for_newcomer(now):
            overflow = True
            self.overflowed += 1
            tat = self._overflow_tat
        interval = self.interval
        tolerance = self.tolerance
        if tat is None or tat < now:
            tat = now
        new_tat = tat + cost * interval
        wait = new_tat - tolerance - now
        if wait > self._slack:
            if cost > self.limit:
                raise ValueError(f"cost {cost} exceeds the limit {self.limit}; never admissible")
            remaining = int((tolerance - (tat - now)) / interval + 1e-3)
            return Decision(False, self.limit, remaining, tat - now, wait)
        if overflow:
            self._overflow_tat = new_tat
        elif held is None:
            self._last = tats[key] = Tat(new_tat)  # a newcomer: at the end already
        else:
            held.at = new_tat
            tats.move_to_end(key)
            self._last = held
        remaining = int((tolerance - (new_tat - now)) / interval + 1e-3)
        return Decision(True, self.limit, remaining, new_tat - now, 0.0)

    def allow(self, key: Hashable, now: float) -> bool:
        """`check(key, now).allowed` without building a Decision, for the request path's
        common case: a known key, admitted. A rejected request consumes nothing, so the caller
        may follow with `check` for the figures of its 429."""
        tats = self._tats
        # An OrderedDict is a dict, and keeps dict's `get`: called on dict, compiled, this is a
        # direct dict look-up instead of a method call.
        held = dict.get(tats, key)
        if held is None:
            return self.check(key, now).allowed  # newcomers: room to make, maybe overflow
        tat = held.at
        if tat < now:
            tat = now
        new_tat = tat + self.interval
        if new_tat - self.tolerance - now > self._slack:
            return False
        held.at = new_tat
        if held is not self._last:
            # A limit keyed by route, or one busy client, admits the same key again and again:
            # the key already last in the table needs no move.
            tats.move_to_end(key)
            self._last = held
        return True

    def _room_for_newcomer(self, now: float) -> bool:
        """Drop recovered entries, oldest admission first; True if a new key fits.

        Live entries are rotated to the back (a CLOCK sweep), so successive newcomers inspect
        different entries and every recovered entry is eventually found, wherever it sits.
        """
        tats = self._tats
        full = len(tats) >= self.max_keys
        for _ in range(min(_SWEEP_WHEN_FULL if full else _SWEEP_WITH_ROOM, len(tats))):
            key, held = tats.popitem(last=False)
            if held.at > now:
                self._last = tats[key] = held
            elif full:
                return True
        return len(tats) < self.max_keys
