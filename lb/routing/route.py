"""A route compiled for the request path: its matchers, its action and its precomputed pieces."""

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config import model

if TYPE_CHECKING:
    from ..compress.policy import CompressPolicy
    from ..hooks import Admitter, Guard
    from ..mirror.policy import MirrorPolicy
    from ..observe.recorder import RouteStats
    from ..traffic.gates import RouteRetry

Headers = list[tuple[bytes, bytes]]


@dataclass(eq=False)
class Condition:
    """Everything besides host and path prefix; None means "matches everything"."""

    methods: frozenset[bytes] | None
    headers: tuple[tuple[bytes, str, Any], ...]  # (lower name, kind, operand)
    query: tuple[tuple[str, str, Any], ...]

    def test(self, method: bytes, headers: Headers, query: str) -> bool:
        if self.methods is not None and method not in self.methods:
            return False
        for name, kind, operand in self.headers:
            value = next((v for n, v in headers if n.lower() == name), None)
            if not _value_ok(kind, operand, value):
                return False
        if self.query:
            params = _parse_query(query)
            for qname, kind, operand in self.query:
                qv = params.get(qname)
                if not _value_ok(kind, operand, None if qv is None else qv.encode()):
                    return False
        return True


def _value_ok(kind: str, operand: Any, value: bytes | None) -> bool:
    if kind == "present":
        return (value is not None) == operand
    if value is None:
        return False
    if kind == "exact":
        return value == operand
    return operand.search(value.decode("latin-1")) is not None


def _parse_query(query: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in query.split("&"):
        if part:
            k, _, v = part.partition("=")
            out.setdefault(k, v)
    return out


@dataclass(eq=False)
class HeaderRules:
    """Header edits compiled once: lower-cased names for removal, encoded pairs to add."""

    remove: frozenset[bytes]
    add: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def compile(cls, ops: model.HeaderOps) -> "HeaderRules | None":
        if not (ops.set or ops.add or ops.remove):
            return None
        remove = {n.lower().encode() for n in ops.remove} | {n.lower().encode() for n in ops.set}
        add = [(n.encode(), v.encode()) for n, v in ops.set.items()]
        add += [(n.encode(), v.encode()) for n, v in ops.add.items()]
        return cls(frozenset(remove), tuple(add))

    def apply(self, headers: Headers) -> Headers:
        kept = [(n, v) for n, v in headers if n.lower() not in self.remove]
        kept.extend(self.add)
        return kept


def compile_rewrite(rw: model.Rewrite | None) -> Callable[[str], str] | None:
    if rw is None:
        return None
    strip, add = rw.strip_prefix, rw.add_prefix
    pattern = re.compile(rw.regex.pattern) if rw.regex else None
    replacement = rw.regex.replacement if rw.regex else ""

    def rewrite(path: str) -> str:
        if strip and path.startswith(strip):
            path = path[len(strip) :] or "/"
            if not path.startswith("/"):
                path = "/" + path
        if pattern is not None:
            path = pattern.sub(replacement, path)
        if add:
            path = add.rstrip("/") + path
        return path

    return rewrite


@dataclass(eq=False)
class Split:
    """Weighted choice among services: smooth weighted round robin, or a hash when sticky."""

    services: tuple[str, ...]
    weights: tuple[int, ...]
    sticky_header: bytes | None = None
    sticky_cookie: str | None = None
    _current: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._current = [0] * len(self.services)
        self._total = sum(self.weights)
        # Cumulative buckets for sticky hashing: stable as long as weights are.
        acc, self._bounds = 0, []
        for w in self.weights:
            acc += w
            self._bounds.append(acc)

    def choose(self, headers: Headers) -> str:
        key = self._sticky_key(headers)
        if key is not None:
            point = zlib.crc32(key) % self._total
            for i, bound in enumerate(self._bounds):
                if point < bound:
                    return self.services[i]
        best, cur = 0, self._current
        for i, w in enumerate(self.weights):
            cur[i] += w
            if cur[i] > cur[best]:
                best = i
        cur[best] -= self._total
        return self.services[best]

    def _sticky_key(self, headers: Headers) -> bytes | None:
        if self.sticky_header is not None:
            return next((v for n, v in headers if n.lower() == self.sticky_header), None)
        if self.sticky_cookie is not None:
            prefix = self.sticky_cookie + "="
            for n, v in headers:
                if n.lower() == b"cookie":
                    for part in v.decode("latin-1").split(";"):
                        part = part.strip()
                        if part.startswith(prefix):
                            return part[len(prefix) :].encode()
        return None


class Route:
    """Compiled, an extension type (route.pxd): the request path reads these as C fields."""

    # fmt: off
    __slots__ = (
        "compress", "condition", "config", "fixed", "guard", "hosts", "idle_timeout", "limiter",
        "max_body_size", "mirror", "name", "order", "path_kind", "path_value", "redirect",
        "request_rules", "response_head_timeout", "response_rules", "retry", "rewrite",
        "service", "split", "stats",
    )
    # fmt: on

    def __init__(
        self,
        name: str,
        config: model.Route,
        order: tuple[Any, ...],  # sort key: lower first
        hosts: tuple[str, ...],
        path_kind: str | None,  # "exact" | "prefix" | "regex" | None
        path_value: Any,
        condition: Condition | None,
        service: str | None = None,
        rewrite: Callable[[str], str] | None = None,
        request_rules: HeaderRules | None = None,
        response_rules: HeaderRules | None = None,
        response_head_timeout: float | None = None,
        idle_timeout: float | None = None,
        max_body_size: int | None = None,
        redirect: model.Redirect | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.order = order
        self.hosts = hosts
        self.path_kind = path_kind
        self.path_value = path_value
        self.condition = condition
        self.service = service
        self.split: Split | None = None
        self.rewrite = rewrite
        self.request_rules = request_rules
        self.response_rules = response_rules
        self.response_head_timeout = response_head_timeout
        self.idle_timeout = idle_timeout
        self.max_body_size = max_body_size
        self.guard: Guard | None = None  # set by the edge policies: who may come in
        self.limiter: Admitter | None = None  # set by traffic control: rate limits
        self.retry: RouteRetry | None = None  # set by traffic control: retry policy, budget
        self.compress: CompressPolicy | None = None  # set by lb/compress: response compression
        self.mirror: MirrorPolicy | None = None  # set by lb/mirror: copies to a shadow service
        self.redirect = redirect
        self.fixed: tuple[int, Headers, bytes] | None = None  # `respond`: status, headers, body
        self.stats: RouteStats | None = None  # per-route counters, attached by the metrics

    def path_ok(self, path: str) -> bool:
        kind = self.path_kind
        if kind is None:
            return True
        if kind == "prefix":
            return path.startswith(self.path_value)
        if kind == "exact":
            return path == self.path_value
        return self.path_value.search(path) is not None

    def matches(self, method: bytes, path: str, query: str, headers: Headers) -> bool:
        kind = self.path_kind
        if kind == "prefix":
            if not path.startswith(self.path_value):
                return False
        elif kind is not None and not self.path_ok(path):
            return False
        return self.condition is None or self.condition.test(method, headers, query)

    @property
    def pure_prefix(self) -> bool:
        return self.path_kind in ("prefix", None) and self.condition is None


def compile_route(r: model.Route, index: int) -> Route:
    m = r.match
    kind, value = None, None
    if m.path is not None:
        if m.path.exact is not None:
            kind, value = "exact", m.path.exact
        elif m.path.prefix is not None:
            kind, value = "prefix", m.path.prefix
        else:
            kind, value = "regex", re.compile(m.path.regex or "")
    cond = None
    if m.methods or m.headers or m.query:
        cond = Condition(
            frozenset(x.encode() for x in m.methods) if m.methods else None,
            tuple(_value_rule(h, h.name.lower().encode()) for h in m.headers),
            tuple(_value_rule(q, q.name) for q in m.query),
        )
    hosts = tuple(h.lower() for h in m.host)
    route = Route(
        name=r.name,
        config=r,
        order=_order(r, hosts, kind, value, index),
        hosts=hosts,
        path_kind=kind,
        path_value=value,
        condition=cond,
        service=r.service,
        rewrite=compile_rewrite(r.rewrite),
        request_rules=HeaderRules.compile(r.request_headers),
        response_rules=HeaderRules.compile(r.response_headers),
        response_head_timeout=r.timeouts.response_head,
        idle_timeout=r.timeouts.idle,
        max_body_size=r.max_body_size,
        redirect=r.redirect,
    )
    if r.split:
        route.split = Split(
            tuple(t.service for t in r.split),
            tuple(t.weight for t in r.split),
            r.sticky.header.lower().encode() if r.sticky and r.sticky.header else None,
            r.sticky.cookie if r.sticky else None,
        )
    if r.respond is not None:
        route.fixed = fixed_response(r.respond)
    return route


def _value_rule(v: model.ValueMatch, name: Any) -> tuple[Any, str, Any]:
    if v.present is not None:
        return (name, "present", v.present)
    if v.exact is not None:
        return (name, "exact", v.exact.encode())
    return (name, "regex", re.compile(v.regex or ""))


def _order(
    r: model.Route, hosts: tuple[str, ...], kind: str | None, value: Any, index: int
) -> tuple[Any, ...]:
    """Explicit priority first (higher wins), then specificity, then file order."""
    has_priority = r.priority is not None
    host_rank = 2 if not hosts else (1 if all(h.startswith("*.") for h in hosts) else 0)
    if kind == "exact":
        path_rank: tuple[int, int] = (0, 0)
    elif kind == "prefix":
        path_rank = (1, -len(value))
    elif kind == "regex":
        path_rank = (2, 0)
    else:
        path_rank = (3, 0)
    extra = 0 if (r.match.methods or r.match.headers or r.match.query) else 1
    return (0 if has_priority else 1, -(r.priority or 0), host_rank, path_rank, extra, index)


def fixed_response(resp: model.Respond) -> tuple[int, Headers, bytes]:
    """(status, headers, body) for a `respond` action; framing is added when sent."""
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in resp.headers.items()]
    if not any(n.lower() == b"content-type" for n, _ in headers):
        headers.append((b"content-type", b"text/plain; charset=utf-8"))
    return resp.status, headers, resp.body.encode()


def redirect_location(
    r: model.Redirect, scheme: str, host: str, path: str, query: str
) -> tuple[int, bytes]:
    """(status, Location) for a `redirect` action, from the request's scheme, Host (or the
    listener's address), path and query; each part the redirect names replaces it."""
    scheme = r.scheme or scheme
    host = r.host or host
    if r.host or r.port:
        host = host.split(":")[0] if not host.startswith("[") else host
    if r.port:
        host = f"{host}:{r.port}"
    target = r.path or path
    if query and not r.path:
        target = f"{target}?{query}"
    return r.status, f"{scheme}://{host}{target}".encode("latin-1")
