"""The compiled route table: host map, then each host's routes in match order.

Order (documented in the README): an explicit `priority` wins (higher first); then exact host
over wildcard host over any host; then exact path over longer prefix over shorter prefix over
regex over no path; then routes with extra conditions (method, header, query) before those
without; then file order. Lookup cost stays flat with route count: the host is one dict get
(wildcards walk the host's label suffixes), and runs of plain prefix routes are folded into a
dict probed once per distinct prefix length.
"""

from ..config import model
from ..config.errors import Problem
from ..config.schema import marks
from .route import Headers, Route, compile_route


class PrefixGroup:
    """Consecutive plain prefix routes: same outcome as testing them in order, in O(lengths)."""

    __slots__ = ("by_prefix", "lengths")

    def __init__(self, by_prefix: dict[str, Route], lengths: tuple[int, ...]) -> None:
        self.by_prefix = by_prefix
        self.lengths = lengths  # distinct prefix lengths, longest first

    def find(self, path: str) -> Route | None:
        for n in self.lengths:
            r = self.by_prefix.get(path[:n])
            if r is not None:
                return r
        return None


Step = Route | PrefixGroup


def _fold(routes: list[Route]) -> tuple[Step, ...]:
    steps: list[Step] = []
    run: list[Route] = []

    def flush() -> None:
        if run:  # even one: a dict probe beats a call to Route.matches
            by: dict[str, Route] = {}
            for r in run:
                by.setdefault(r.path_value if r.path_kind else "", r)
            steps.append(PrefixGroup(by, tuple(sorted({len(p) for p in by}, reverse=True))))
        else:
            steps.extend(run)
        run.clear()

    for r in routes:
        # Folding is only exact when prefixes arrive longest-first, which the order guarantees
        # within one priority and host class; a run breaks whenever that might not hold.
        if r.pure_prefix and (not run or run[-1].order[:3] == r.order[:3]):
            run.append(r)
        else:
            flush()
            if r.pure_prefix:
                run.append(r)
            else:
                steps.append(r)
    flush()
    return tuple(steps)


class RouteTable:
    __slots__ = ("_any", "_exact", "_wild", "by_name", "routes")

    def __init__(self, routes: list[model.Route]) -> None:
        compiled = sorted(
            (compile_route(r, i) for i, r in enumerate(routes)), key=lambda r: r.order
        )
        self.routes = compiled
        self.by_name = {r.name: r for r in compiled}
        exact: dict[str, list[Route]] = {}
        wild: dict[str, list[Route]] = {}
        anyhost: list[Route] = []
        for r in compiled:
            if not r.hosts:
                anyhost.append(r)
            for h in r.hosts:
                if h.startswith("*."):
                    wild.setdefault(h[1:], []).append(r)
                else:
                    exact.setdefault(h, []).append(r)

        def merged(*lists: list[Route]) -> tuple[Step, ...]:
            seen: dict[int, Route] = {}
            for lst in lists:
                for r in lst:
                    seen[id(r)] = r
            return _fold(sorted(seen.values(), key=lambda r: r.order))

        self._wild = {s: merged(rs, anyhost) for s, rs in wild.items()}
        self._exact = {
            h: merged(rs, *(wild[s] for s in _suffixes(h) if s in wild), anyhost)
            for h, rs in exact.items()
        }
        self._any = merged(anyhost)

    def steps_for(self, host: str) -> tuple[Step, ...]:
        steps = self._exact.get(host)
        if steps is not None:
            return steps
        if self._wild:
            # Longest suffix first: "a.b.example.com" tries ".b.example.com", ".example.com", ...
            dot = host.find(".")
            while dot != -1:
                steps = self._wild.get(host[dot:])
                if steps is not None:
                    return steps
                dot = host.find(".", dot + 1)
        return self._any

    def lookup(
        self, host: str, method: bytes, path: str, query: str, headers: Headers
    ) -> Route | None:
        steps = self._exact.get(host)
        if steps is None:
            steps = self.steps_for(host)
        for step in steps:
            if type(step) is PrefixGroup:
                group = step
                r = group.find(path)
                if r is not None:
                    return r
            elif step.matches(method, path, query, headers):
                return step
        return None

    def shadowed(self) -> list[Problem]:
        """Warnings for routes an earlier route always wins over (same hosts, covering path)."""
        out: list[Problem] = []
        for i, r in enumerate(self.routes):
            for earlier in self.routes[:i]:
                if _covers(earlier, r):
                    m = marks(r.config)
                    out.append(
                        Problem(
                            m[""],
                            f"route {r.name}",
                            f'can never match: route "{earlier.name}" always matches first',
                            "warning",
                        )
                    )
                    break
        return out


def _suffixes(host: str) -> list[str]:
    return [host[i:] for i, c in enumerate(host) if c == "."]


def _covers(a: Route, b: Route) -> bool:
    if a.condition is not None:
        return False
    if (a.hosts and set(b.hosts) - set(a.hosts)) or (a.hosts and not b.hosts):
        return False
    if a.path_kind is None:
        return True
    if a.path_kind == "prefix":
        return b.path_kind in ("prefix", "exact") and b.path_value.startswith(a.path_value)
    if a.path_kind == "exact":
        return b.path_kind == "exact" and b.path_value == a.path_value
    return False
