"""Turn composed YAML nodes into typed config dataclasses, keeping every node's position.

The schema is the dataclasses themselves: field types drive conversion, `Annotated` metadata
carries units and checks, and a dataclass may define `check(self, report)` for rules that
span fields. Every problem is collected (not raised one by one) with its file:line:col.
"""

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml

from .errors import Mark, Problem


@dataclass(frozen=True)
class Unit:
    """A scalar parsed from text by `parse` (which raises ValueError with the expectation)."""

    parse: Callable[[str], Any]
    numbers_ok: bool = False  # a bare YAML number is accepted as is (durations in seconds)


@dataclass(frozen=True)
class Check:
    """A predicate on the converted value; `message` says what was expected."""

    ok: Callable[[Any], bool]
    message: str


class OneOrMany:
    """Marker: a list field that also accepts a single scalar."""


class ReadsFile:
    """Marker: a path to a file lb reads when it applies the config (a certificate, a key, an
    htpasswd or JWKS file). Its bytes are part of the config's digest and the watcher polls it
    like a config file, so replacing it alone reloads (lb/config/inputs.py)."""


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_resolver = yaml.resolver.Resolver()


def mark_of(node: yaml.Node) -> Mark:
    m = node.start_mark
    return Mark(m.name, m.line + 1, m.column + 1)


def marks(obj: Any) -> dict[str, Mark]:
    """Positions of a built dataclass's fields (and "" for the object itself)."""
    return getattr(obj, "_marks", {})


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f'"{node.value}"' if node.value != "" else "nothing"


class Builder:
    def __init__(self, environ: typing.Mapping[str, str] | None = None) -> None:
        self.env = os.environ if environ is None else environ
        self.problems: list[Problem] = []

    def error(self, node: yaml.Node | Mark, path: str, message: str) -> None:
        mark = node if isinstance(node, Mark) else mark_of(node)
        self.problems.append(Problem(mark, path, message))

    # -- scalars ---------------------------------------------------------------------------------
    def _interpolate(self, node: yaml.ScalarNode, path: str) -> str:
        def sub(m: re.Match[str]) -> str:
            value = self.env.get(m.group(1))
            if value is None:
                if m.group(2) is None:
                    self.error(
                        node,
                        path,
                        f"environment variable {m.group(1)} is not set "
                        f"(give a default with ${{{m.group(1)}:-value}})",
                    )
                    return ""
                return m.group(2)
            return value

        return _ENV.sub(sub, node.value)

    def scalar(self, node: yaml.ScalarNode, path: str) -> tuple[Any, str]:
        """The typed value and the raw (interpolated) text of a scalar."""
        text = self._interpolate(node, path) if "${" in node.value else node.value
        if node.style is not None:  # quoted: always a string
            return text, text
        tag = _resolver.resolve(yaml.ScalarNode, text, (True, False))
        if tag.endswith(":null"):
            return None, text
        if tag.endswith(":bool"):
            return text.lower() in ("true", "yes", "on", "y"), text
        if tag.endswith(":int"):
            try:
                return int(text.replace("_", ""), 0), text
            except ValueError:
                return text, text
        if tag.endswith(":float"):
            try:
                return float(text.replace("_", "")), text
            except ValueError:
                return text, text
        return text, text

    # -- conversion ------------------------------------------------------------------------------
    def build(self, tp: Any, node: yaml.Node, path: str) -> Any:
        """Convert node to type tp; on error records a problem and returns None."""
        meta: tuple[Any, ...] = ()
        if get_origin(tp) is Annotated:
            tp, *rest = get_args(tp)
            meta = tuple(rest)
        value = self._build(tp, meta, node, path)
        if value is None:
            return None
        for m in meta:
            if isinstance(m, Check) and not m.ok(value):
                self.error(node, path, f"expected {m.message}, found {_describe(node)}")
                return None
        return value

    def _build(self, tp: Any, meta: tuple[Any, ...], node: yaml.Node, path: str) -> Any:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            options = [a for a in get_args(tp) if a is not type(None)]
            if isinstance(node, yaml.ScalarNode) and self.scalar(node, path)[0] is None:
                return None
            if len(options) == 1:
                return self.build(options[0], node, path)
            return self._union(options, node, path)
        unit = next((m for m in meta if isinstance(m, Unit)), None)
        if unit is not None:
            return self._unit(unit, node, path)
        if origin is list:
            (item,) = get_args(tp)
            if isinstance(node, yaml.SequenceNode):
                # Failed items stay as None so cross-checks see the names that exist.
                return [self.build(item, n, f"{path}[{i}]") for i, n in enumerate(node.value)]
            if OneOrMany in meta and isinstance(node, yaml.ScalarNode):
                v = self.build(item, node, path)
                return None if v is None else [v]
            self.error(node, path, f"expected a list, found {_describe(node)}")
            return None
        if origin is dict:
            _, item = get_args(tp)
            if not isinstance(node, yaml.MappingNode):
                self.error(node, path, f"expected a mapping, found {_describe(node)}")
                return None
            out_d: dict[str, Any] = {}
            for knode, vnode in node.value:
                key = str(self.scalar(knode, path)[1])
                if key in out_d:
                    self.error(knode, f"{path}.{key}", "duplicate key")
                    continue
                out_d[key] = self.build(item, vnode, f"{path}.{key}")
            return out_d
        if origin is Literal:
            choices = get_args(tp)
            if isinstance(node, yaml.ScalarNode):
                value, text = self.scalar(node, path)
                for c in choices:
                    if value == c or (isinstance(c, str) and text == c):
                        return c
            names = ", ".join(repr(c) for c in choices)
            self.error(node, path, f"expected one of {names}, found {_describe(node)}")
            return None
        if dataclasses.is_dataclass(tp):
            return self._dataclass(tp, node, path)
        return self._plain(tp, node, path)

    def _union(self, options: list[Any], node: yaml.Node, path: str) -> Any:
        # Pick the first option whose shape fits the node, so errors speak of that option.
        for opt in options:
            o = get_origin(opt)
            if isinstance(node, yaml.MappingNode) and (dataclasses.is_dataclass(opt) or o is dict):
                return self.build(opt, node, path)
            if isinstance(node, yaml.SequenceNode) and o is list:
                return self.build(opt, node, path)
        for opt in options:
            if isinstance(node, yaml.ScalarNode) and not (
                dataclasses.is_dataclass(opt) or get_origin(opt) in (list, dict)
            ):
                return self.build(opt, node, path)
        self.error(node, path, f"unexpected {_describe(node)}")
        return None

    def _unit(self, unit: Unit, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, path, f"expected a scalar, found {_describe(node)}")
            return None
        value, text = self.scalar(node, path)
        if unit.numbers_ok and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        try:
            return unit.parse(str(text))
        except ValueError as exc:
            self.error(node, path, f"expected {exc}")
            return None

    def _plain(self, tp: Any, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, path, f"expected {_type_name(tp)}, found {_describe(node)}")
            return None
        value, text = self.scalar(node, path)
        if tp is str:
            if value is None:
                self.error(node, path, "expected a string, found nothing")
                return None
            return text
        if tp is bool and isinstance(value, bool):
            return value
        if tp is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if tp is Any:
            return value
        self.error(node, path, f"expected {_type_name(tp)}, found {_describe(node)}")
        return None

    def build_root(self, cls: Any, node: yaml.MappingNode) -> Any:
        """The top-level object, built even when parts failed, so cross-checks still run."""
        return self._dataclass(cls, node, "", partial=True)

    def _dataclass(self, cls: Any, node: yaml.Node, path: str, partial: bool = False) -> Any:
        from_scalar = getattr(cls, "from_scalar", None)
        if isinstance(node, yaml.ScalarNode) and from_scalar is not None:
            value, text = self.scalar(node, path)
            try:
                obj = from_scalar(text)
            except ValueError as exc:
                self.error(node, path, f"expected {exc}")
                return None
            object.__setattr__(obj, "_marks", {"": mark_of(node)})
            return obj
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, f"expected a mapping, found {_describe(node)}")
            return None
        hints = typing.get_type_hints(cls, include_extras=True)
        problems_before = len(self.problems)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        kwargs: dict[str, Any] = {}
        where: dict[str, Mark] = {"": mark_of(node)}
        failed = False
        for knode, vnode in node.value:
            key = str(self.scalar(knode, path)[1])
            sub = f"{path}.{key}" if path else key
            name = key.replace("-", "_")
            if name not in fields:
                hint = difflib.get_close_matches(key, list(fields), n=1)
                extra = f' (did you mean "{hint[0]}"?)' if hint else ""
                self.error(knode, sub, f"unknown key{extra}")
                failed = True
                continue
            if name in kwargs:
                self.error(knode, sub, "duplicate key")
                continue
            value = self.build(hints[name], vnode, sub)
            where[name] = mark_of(vnode)
            if value is None and not _nullable(hints[name]):
                failed = True
                continue
            kwargs[name] = value
        for name, f in fields.items():
            if (
                name not in kwargs
                and f.default is dataclasses.MISSING
                and (f.default_factory is dataclasses.MISSING)
            ):
                if not failed or name not in {k.replace("-", "_") for k, _ in _keys(node)}:
                    self.error(
                        node, f"{path}.{name}" if path else name, "required field is missing"
                    )
                failed = True
        if failed and not partial:
            return None
        obj = cls(**kwargs)
        object.__setattr__(obj, "_marks", where)
        check = getattr(obj, "check", None)
        # Cross-field rules only make sense once every field built cleanly.
        if check is not None and len(self.problems) == problems_before:

            def report(field: str, message: str) -> None:
                sub = f"{path}.{field}" if field else path
                self.error(where.get(field, where[""]), sub, message)

            check(report)
        return obj


def _keys(node: yaml.MappingNode) -> list[tuple[str, yaml.Node]]:
    return [(str(k.value), v) for k, v in node.value]


def _nullable(tp: Any) -> bool:
    if get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return get_origin(tp) in (Union, types.UnionType) and type(None) in get_args(tp)


def _type_name(tp: Any) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )
