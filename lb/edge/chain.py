"""`Route.guard`: a route's edge policies, composed in order, as one `Guard` (lb/hooks.py).

Order: the listener's policies first (ip_filter, jwt), then the route's (ip_filter,
basic_auth, jwt, forward_auth, client_in_flight). The chain runs synchronously while each
policy decides synchronously (the common case: a cached verification is a dict lookup), and
continues in a task after one that defers (a bcrypt verification off the loop, a
subrequest), calling `ex.admitted()` once the last one has let the request on.

A policy is any object of the `Policy` protocol: a `name` (the `policy` label of
`lb_edge_decisions_total` and the access log's `refused_by`) and `check(ex)`, which returns

- None: the request may go on (the policy may have changed `ex.info.forward`: claims
  copied into headers, an Authorization header removed);
- a `Refusal`: what lb answers instead; the chain counts it, names the policy in
  `ex.refused_by` and replies;
- an awaitable of either: the policy decides later. The chain checks that the client is
  still there when it has (the exchange is DONE otherwise) before going on.

A policy that holds something per exchange (client_in_flight's slot) sets `ex.guard` to a
`Holder` (lb/hooks.py) as it admits, which the exchange leaves exactly once as it finishes,
whoever answers it then: at most one such policy per chain, the last one.

A listener-level policy that copies claims into headers asks for a new route lookup after it
(`reroute`), so that routes can match on those headers: the exchange moves to the route the
lookup finds and starts again there, with that route's chain.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ..proxy import responses
from ..proxy.downstream import _route_host
from ..proxy.exchange import DONE
from ..proxy.headers import RequestInfo, lower_name
from .metrics import Decisions

if TYPE_CHECKING:
    from ..proxy.exchange import Exchange

log = logging.getLogger("lb.edge")

Headers = list[tuple[bytes, bytes]]
AUTHORIZATION = b"authorization"
COOKIE = b"cookie"
_NOTED = frozenset({AUTHORIZATION, COOKIE})


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a policy answers instead of letting the request on."""

    status: int
    body: bytes | None = None  # None: lb's canned page for the status
    headers: Headers = field(default_factory=list)
    result: str = "denied"  # the `result` label of lb_edge_decisions_total
    content_type: bytes | None = responses.TEXT  # None: `headers` carry their own


Verdict = Refusal | Awaitable[Refusal | None] | None


class Policy(Protocol):
    @property
    def name(self) -> str: ...

    def check(self, ex: Exchange) -> Verdict: ...


class Step:
    """One policy of a chain, with its decision counters on the chain's route."""

    __slots__ = ("decisions", "policy", "reroute")

    def __init__(self, policy: Policy, decisions: Decisions, reroute: bool = False) -> None:
        self.policy = policy
        self.decisions = decisions
        self.reroute = reroute  # look the route up again once this policy has admitted


class Chain:
    """The guard of one route: its steps per listener (the listener's policies, then the
    route's), and the route's own steps for listeners without policies."""

    __slots__ = ("by_listener", "default", "tasks")

    def __init__(self, by_listener: dict[str, tuple[Step, ...]], default: tuple[Step, ...]):
        self.by_listener = by_listener
        self.default = default
        self.tasks: set[asyncio.Task[None]] = set()

    def admit(self, ex: Exchange) -> bool:
        by_listener = self.by_listener
        steps = self.default
        if by_listener:
            steps = by_listener.get(ex.client.listener.name, steps)
        return self._run(ex, steps, 0)

    def _run(self, ex: Exchange, steps: tuple[Step, ...], start: int) -> bool:
        for i in range(start, len(steps)):
            step = steps[i]
            verdict = step.policy.check(ex)
            if verdict is None:
                step.decisions.allowed()
                if step.reroute and not self._same_route(ex):
                    return False
                continue
            if type(verdict) is Refusal:
                _refuse(ex, step, verdict)
                return False
            task = ex.client.loop.create_task(self._later(ex, steps, i, verdict))  # type: ignore[arg-type]
            self.tasks.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self.tasks.discard)
            return False
        return True

    async def _later(
        self,
        ex: Exchange,
        steps: tuple[Step, ...],
        i: int,
        pending: Awaitable[Refusal | None],
    ) -> None:
        try:
            verdict = await pending
            if ex.phase == DONE:
                return  # the client left while the policy decided
            if verdict is not None:
                _refuse(ex, steps[i], verdict)
                return
            step = steps[i]
            step.decisions.allowed()
            if step.reroute and not self._same_route(ex):
                return
            if self._run(ex, steps, i + 1):
                ex.admitted()
        except Exception:
            # Nothing above should raise; if it does, answer rather than leave the client hanging.
            log.exception("edge policy decision failed")
            if ex.phase != DONE:
                ex.reply_error(500)

    def _same_route(self, ex: Exchange) -> bool:
        """After a listener's policy copied claims: the route a lookup finds now. False when
        it differs, and the exchange has started again on the new one (or answered 404)."""
        info = ex.info
        runtime = ex.client.listener.runtime
        route = runtime.table.lookup(
            _route_host(info.host), ex.method, ex.path, ex.query, info.forward
        )
        if route is ex.route:
            return True
        ex.route = route
        # The new route's chain runs the listener's policies again (cached verifications,
        # idempotent header copies): its lookup finds this same route, so it goes on there.
        ex.start()
        return False


def _refuse(ex: Exchange, step: Step, refusal: Refusal) -> None:
    step.decisions.refused(refusal.result)
    ex.refused_by = step.policy.name
    ex.reply(refusal.status, refusal.body, refusal.headers, refusal.content_type)


def without(headers: Headers, names: frozenset[bytes]) -> Headers:
    """`headers` less those named in `names` (lower case)."""
    return [h for h in headers if lower_name(h[0]) not in names]


def vouch(ex: Exchange, strip: frozenset[bytes], headers: Headers) -> None:
    """Headers a policy vouches for (claims, an auth service's answer) onto the forwarded
    request, after the client's own headers of the names in `strip` are removed: a client
    cannot forge what a policy sets."""
    info = ex.info
    if strip:
        forward = without(info.forward, strip)
        forward.extend(headers)
        info.forward = forward
        if not strip.isdisjoint(_NOTED):
            _note(info)
    elif headers:
        info.forward = [*info.forward, *headers]


def _note(info: RequestInfo) -> None:
    """The head's noted credentials (lb/proxy/headers.py) after `forward` changed."""
    info.authorization = info.cookie = None
    for name, value in info.forward:
        low = lower_name(name)
        if low == AUTHORIZATION:
            if info.authorization is None:
                info.authorization = value
        elif low == COOKIE:
            info.cookie = value if info.cookie is None else info.cookie + b"; " + value
