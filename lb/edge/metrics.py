"""The edge policies' counters, declared once for every policy (lb/edge/*).

`lb_edge_decisions_total{policy, route, result}`: one decision of one policy on one request.
`result` is "allowed" when the policy let the request on, else why it refused: "denied"
(missing or wrong credentials, a refused address), "overloaded" (basic auth's verifications
are all busy), "error" (forward auth: the auth service failed and `on_error: deny`), or
whatever else a policy documents. `route` is the route the request was matched to, "" when a
listener's policy refused a request that matched no route.

`lb_forward_auth_errors_total{route, reason}`: the auth service did not answer usably
("timeout", "unreachable", "bad_response"), whatever `on_error` then decided.

A `Decisions` is made per (policy, route) when the routes are compiled, so that counting on
the request path is one increment of a `runtime.counters` entry under a prebuilt key.
"""

from ..observe.metrics import Counters, register_counter

DECISIONS = "edge_decisions"
FORWARD_AUTH_ERRORS = "forward_auth_errors"

register_counter(
    DECISIONS,
    "lb_edge_decisions_total",
    "Edge policy decisions (basic_auth, jwt, forward_auth, ip_filter, ...) by route and result.",
    ("policy", "route", "result"),
)
register_counter(
    FORWARD_AUTH_ERRORS,
    "lb_forward_auth_errors_total",
    "Forward-auth subrequests that got no usable answer (timeout, unreachable, bad_response).",
    ("route", "reason"),
)


class Decisions:
    """The decision counters of one policy on one route."""

    __slots__ = ("_allowed", "_counts", "policy", "route")

    def __init__(self, counters: Counters, policy: str, route: str) -> None:
        self._counts = counters[DECISIONS]
        self.policy = policy
        self.route = route
        self._allowed = (policy, route, "allowed")

    def allowed(self) -> None:
        self._counts[self._allowed] += 1

    def refused(self, result: str) -> None:
        self._counts[(self.policy, self.route, result)] += 1


def count(counters: Counters, policy: str, route: str, result: str) -> None:
    """One decision, for callers without a `Decisions` at hand (rare paths)."""
    counters[DECISIONS][(policy, route, result)] += 1
