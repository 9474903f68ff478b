"""Per-route policies compiled from one field of each route's config (`compress`, `mirror`):
every compiled route table (the config's, and each reload's, through `Runtime.compile_hooks`)
gets the policy on each route whose config sets the field, and None on the others, which
then pay one None check. A policy is kept across reloads while its settings are equal, with
whatever state it holds (compressors, a sampling sum, copies in flight)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from .table import RouteTable

if TYPE_CHECKING:
    from ..runtime import Runtime


class Configured(Protocol):
    @property
    def cfg(self) -> object: ...


P = TypeVar("P", bound=Configured)


class RoutePolicies(Generic[P]):
    """`Route.<field>` from `route.config.<field>`, made by `make(cfg, route name)`."""

    def __init__(self, field: str, make: Callable[[object, str], P]) -> None:
        self.field = field
        self.make = make
        self.policies: dict[str, P] = {}  # by route name

    def compile(self, table: RouteTable) -> None:
        made: dict[str, P] = {}
        for route in table.routes:
            cfg = getattr(route.config, self.field)
            if cfg is None:
                setattr(route, self.field, None)
                continue
            old = self.policies.get(route.name)
            policy = old if old is not None and old.cfg == cfg else self.make(cfg, route.name)
            setattr(route, self.field, policy)
            made[route.name] = policy
        self.policies = made

    def install(self, runtime: Runtime) -> None:
        runtime.compile_hooks.append(self.compile)
        self.compile(runtime.table)
