"""Passive health: eject a backend after consecutive errors, as Envoy's outlier detection does.

One detector per service. The data path reports each upstream outcome with `record`; "not ok"
means a connection failure, reset, timeout or 5xx/gateway error, whichever the caller counts.

- `consecutive_errors` failures in a row eject the backend (Envoy's consecutive_5xx, default 5).
- The ejection lasts `base_ejection` x the backend's ejection multiplier, capped at
  `max_ejection` (Envoy: 30 s and 300 s). The multiplier grows by one per ejection and, once the
  backend is back, shrinks by one per `interval` it stays in (Envoy's interval, 10 s), so a
  backend that keeps failing stays out longer and one that recovered is forgiven.
- At most `max_ejection_percent` of the service's backends are ejected at once: an ejection is
  allowed while (ejected + 1) / total <= max%. Envoy enforces this strictly since envoy#27909,
  which with the default 10% means no ejection at all in a service of fewer than 10 backends,
  the common case; it added always_eject_one_host (envoy#34796, off by default) to restore the
  older "at least one" behaviour. Here that is the default (`always_eject_one`):
  one backend may always be ejected when max% > 0, but only if the service has at least two,
  since ejecting a lone backend only moves its traffic into panic mode or nowhere.
- Refused ejections are counted in `overflows` (Envoy's ejections_overflow); the backend keeps
  its error count and is ejected on its next error once there is room.
- Un-ejection happens in `tick(now)`, which the owner calls periodically.

The panic threshold (Envoy's: too few healthy backends, balance over all of them) is the
service's, in `lb.balancer.service.panic`.

Built with Cython (setup.py), `OutlierDetector` is an extension type typed by outlier.pxd:
with outlier detection configured, `record` runs once per proxied request.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable


class OutlierDetector:
    __slots__ = (
        "_backends",
        "_ejected",
        "_errors",
        "_forgiving",
        "always_eject_one",
        "base_ejection",
        "consecutive_errors",
        "ejections_total",
        "interval",
        "max_ejection",
        "max_ejection_percent",
        "overflows",
        "times_ejected",
    )

    def __init__(
        self,
        consecutive_errors: int = 5,
        base_ejection: float = 30.0,
        max_ejection_percent: float = 10,
        max_ejection: float = 300.0,
        *,
        interval: float = 10.0,
        always_eject_one: bool = True,
    ) -> None:
        if consecutive_errors < 1:
            raise ValueError("consecutive_errors must be at least 1")
        if base_ejection <= 0 or interval <= 0:
            raise ValueError("base_ejection and interval must be positive")
        if not 0 <= max_ejection_percent <= 100:
            raise ValueError("max_ejection_percent must be within 0..100")
        self.consecutive_errors = consecutive_errors
        self.base_ejection = base_ejection
        self.max_ejection_percent = max_ejection_percent
        # Envoy applies the larger of max_ejection_time and base_ejection_time.
        self.max_ejection = max(max_ejection, base_ejection)
        self.interval = interval
        self.always_eject_one = always_eject_one
        self.times_ejected: dict[Hashable, int] = {}  # the current multiplier per backend
        self.ejections_total = 0
        self.overflows = 0
        self._backends: set[Hashable] = set()
        self._errors: dict[Hashable, int] = {}
        self._ejected: dict[Hashable, float] = {}
        self._forgiving: dict[Hashable, float] = {}  # back in service, multiplier > 0: since

    @property
    def ejected(self) -> dict[Hashable, float]:
        """Backends ejected now, mapped to the time they may return. Do not modify."""
        return self._ejected

    def set_backends(self, keys: Iterable[Hashable]) -> None:
        """Declare the service's backends (the denominator of the max percent)."""
        keys = set(keys)
        for gone in self._backends - keys:
            self._errors.pop(gone, None)
            self._ejected.pop(gone, None)
            self._forgiving.pop(gone, None)
            self.times_ejected.pop(gone, None)
        self._backends = keys

    def record(self, key: Hashable, ok: bool, now: float) -> bool:
        """Report one outcome; True when this call ejected `key`."""
        if ok:
            if key in self._errors:
                del self._errors[key]
            return False
        if key in self._ejected:
            return False  # requests sent before the ejection, finishing late
        errors = self._errors.get(key, 0) + 1
        self._errors[key] = errors
        if errors < self.consecutive_errors:
            return False
        # A backend not declared with set_backends still counts, so the cap stays meaningful.
        self._backends.add(key)
        if not self._may_eject():
            self.overflows += 1
            return False
        times = self.times_ejected.get(key, 0) + 1
        self.times_ejected[key] = times
        self._forgiving.pop(key, None)
        del self._errors[key]
        self._ejected[key] = now + min(self.base_ejection * times, self.max_ejection)
        self.ejections_total += 1
        return True

    def _may_eject(self) -> bool:
        if self.max_ejection_percent <= 0:
            return False
        total = len(self._backends)
        ejected = len(self._ejected)
        if (ejected + 1) * 100 <= self.max_ejection_percent * total:
            return True
        return self.always_eject_one and ejected == 0 and total >= 2

    def ejected_until(self, key: Hashable) -> float | None:
        return self._ejected.get(key)

    def tick(self, now: float) -> list[Hashable]:
        """Return expired ejections to service and decay multipliers; the keys that came back."""
        back = [key for key, until in self._ejected.items() if until <= now]
        for key in back:
            del self._ejected[key]
            self._forgiving[key] = now
        for key, since in list(self._forgiving.items()):
            steps = int((now - since) // self.interval)
            if steps <= 0:
                continue
            times = self.times_ejected.get(key, 0) - steps
            if times > 0:
                self.times_ejected[key] = times
                self._forgiving[key] = since + steps * self.interval
            else:
                self.times_ejected.pop(key, None)
                del self._forgiving[key]
        return back
