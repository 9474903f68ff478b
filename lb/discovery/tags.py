"""Routes declared by the tags of a Consul service's instances.

Tag grammar (tags on a Consul service's instances; they declare a route to the service):

    lb.enable=true                 route this service; without it all other lb.* tags are ignored
    lb.host=<host>                 match requests for this Host (case-insensitive; "*.example.com"
                                   matches any subdomain); default: any host
    lb.path=<prefix>               match this path prefix; must start with "/"; default "/"
    lb.strip_prefix=true|false     remove the prefix before proxying; default false
    lb.priority=<int>              the higher wins when two routes match a request; default 0
    lb.canary=<service>:<percent>  send <percent> (an integer 0-100) of this route's requests to
                                   the Consul service <service>
    lb.weight=<int>                on one instance: its weight (0-10000), instead of Consul's
                                   Weights.Passing; 0 drains the instance

Booleans are `true` or `false`. Several instances may carry the same tag; two different values
of one key (other than lb.weight, which is per instance) are a conflict. An unknown `lb.` key, a
malformed value or a conflict is an error: the service gets no route, and `parse_tags` reports
why rather than guessing (a dropped `lb.path` would otherwise route every path to it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Canary:
    service: str
    percent: int


@dataclass(frozen=True)
class TagRoute:
    """A route declared by `lb.*` tags (see the module docstring)."""

    host: str | None = None
    path_prefix: str = "/"
    strip_prefix: bool = False
    priority: int = 0
    canary: Canary | None = None


_HOST = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_SERVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_INT = re.compile(r"^[+-]?\d{1,9}$")
MAX_TAG_WEIGHT = 10000
_ROUTE_KEYS = ("enable", "host", "path", "strip_prefix", "priority", "canary")


def _parse_bool(value: str) -> bool:
    low = value.lower()
    if low in ("true", "false"):
        return low == "true"
    raise ValueError("expected true or false")


def _parse_weight(value: str) -> int:
    if not _INT.match(value) or not 0 <= int(value) <= MAX_TAG_WEIGHT:
        raise ValueError(f"expected an integer from 0 to {MAX_TAG_WEIGHT}")
    return int(value)


def _parse_value(key: str, value: str) -> Any:
    if key in ("enable", "strip_prefix"):
        return _parse_bool(value)
    if key == "host":
        host = value.lower()
        if not _HOST.match(host):
            raise ValueError('expected a host name such as "api.example.com" or "*.example.com"')
        return host
    if key == "path":
        if not value.startswith("/") or any(c.isspace() or c in "?#" for c in value):
            raise ValueError('expected a path prefix starting with "/", without spaces, ? or #')
        return value
    if key == "priority":
        if not _INT.match(value):
            raise ValueError("expected an integer")
        return int(value)
    if key == "canary":
        service, sep, percent = value.rpartition(":")
        if not sep or not _SERVICE.match(service) or not percent.isdigit():
            raise ValueError("expected <service>:<percent>, e.g. web-v2:10")
        if not 0 <= int(percent) <= 100:
            raise ValueError("the percent must be from 0 to 100")
        return Canary(service, int(percent))
    if key == "weight":
        return _parse_weight(value)
    raise ValueError(f"unknown key lb.{key}")


def parse_tags(tags: Iterable[str], errors: list[str] | None = None) -> TagRoute | None:
    """The route that `lb.*` tags declare, or None when there is none.

    None means either no `lb.enable=true`, or an invalid tag; every problem is appended to
    `errors` as a readable message (the function itself never raises on bad tags).
    """
    found: dict[str, Any] = {}
    problems: list[str] = []
    for tag in tags:
        if not tag.startswith("lb."):
            continue
        key, sep, value = tag[3:].partition("=")
        if not sep:
            problems.append(f"tag {tag!r}: expected lb.<key>=<value>")
            continue
        try:
            parsed = _parse_value(key, value)
        except ValueError as exc:
            problems.append(f"tag {tag!r}: {exc}")
            continue
        if key == "weight":
            continue  # per instance: applied by ServiceWatch, only validated here
        if key in found and found[key] != parsed:
            problems.append(f"tag {tag!r}: conflicts with another lb.{key} tag of the service")
            continue
        found[key] = parsed
    if errors is not None:
        errors.extend(problems)
    if problems or found.get("enable") is not True:
        return None
    return TagRoute(
        host=found.get("host"),
        path_prefix=found.get("path", "/"),
        strip_prefix=found.get("strip_prefix", False),
        priority=found.get("priority", 0),
        canary=found.get("canary"),
    )


def tag_weight(tags: Iterable[str]) -> int | None:
    """An instance's own `lb.weight` tag, None without a valid one."""
    for tag in tags:
        if tag.startswith("lb.weight="):
            try:
                return _parse_weight(tag[len("lb.weight=") :])
            except ValueError:
                return None  # parse_tags reports it; Consul's weight stays in force
    return None
