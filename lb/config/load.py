"""Load a config file, or a directory of them merged in name order, into a validated Config;
the documents of a Consul KV prefix (lb/config/kv.py) merge after them the same way."""

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .errors import ConfigError, Mark, Problem
from .inputs import digest_of, input_files
from .model import Config
from .schema import Builder, mark_of, marks

if TYPE_CHECKING:
    from .kv import KvSnapshot

Document = tuple[str, bytes]  # (name in problems: a path or "consul:<key>", the YAML bytes)

_LISTS = ("listeners", "routes")  # concatenated across files; names must stay unique
_MAPS = ("services",)  # merged across files; a name may appear once


@dataclass(frozen=True)
class Loaded:
    config: Config
    files: tuple[str, ...]  # the documents' names: paths, then "consul:<key>"s
    digest: str  # sha256 of the documents' bytes: the config "hash" shown to operators
    warnings: tuple[Problem, ...]
    inputs: tuple[str, ...] = ()  # the files it names for lb to read (lb/config/inputs.py)
    kv: "KvSnapshot | None" = None  # the Consul KV documents merged in (config_source)


def config_files(path: str) -> list[str]:
    p = Path(path)
    if p.is_dir():
        return sorted(str(f) for f in p.iterdir() if f.suffix in (".yaml", ".yml") and f.is_file())
    return [str(p)]


def read_files(path: str) -> list[Document]:
    """The config file, or a directory's files in name order, as (name, bytes) documents."""
    files = config_files(path)
    if not files:
        raise ConfigError([Problem(Mark(path, 1, 1), "", "no .yaml files in this directory")])
    docs = []
    for name in files:
        try:
            docs.append((name, Path(name).read_bytes()))
        except OSError as exc:
            raise ConfigError(
                [Problem(Mark(name, 1, 1), "", f"cannot read: {exc.strerror}")]
            ) from exc
    return docs


def load(path: str, environ: Mapping[str, str] | None = None) -> Loaded:
    """Parse, merge and validate; raises ConfigError listing every problem."""
    return load_documents(read_files(path), environ)


def compose(name: str, raw: bytes) -> yaml.Node | None:
    """One document's YAML nodes, marked with `name`; a syntax error raises ConfigError."""
    try:
        return yaml.compose(raw.decode("utf-8"), Loader=_loader(name))
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark
        line, col = (m.line + 1, m.column + 1) if m else (1, 1)
        raise ConfigError([Problem(Mark(name, line, col), "", f"YAML: {exc.problem}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([Problem(Mark(name, 1, 1), "", "not UTF-8 text")]) from exc


def load_documents(
    docs: list[Document],
    environ: Mapping[str, str] | None = None,
    kv: "KvSnapshot | None" = None,
) -> Loaded:
    """Merge documents (config files, then Consul KV keys) in the order given, as a config
    directory's files are, and validate; raises ConfigError listing every problem. Problems
    name the document: a file's path, or `consul:<key>` (lb/config/kv.py)."""
    b = Builder(environ)
    digest = hashlib.sha256()
    root: yaml.MappingNode | None = None
    owners: dict[str, yaml.Node] = {}
    for name, raw in docs:
        digest.update(raw)
        node = compose(name, raw)
        if node is None:
            continue
        if not isinstance(node, yaml.MappingNode):
            b.error(node, "", "expected a mapping at the top level")
            continue
        root = node if root is None else _merge(b, root, node, owners)
        if root is node:
            for k, v in node.value:
                owners[str(k.value)] = v
    if root is None:
        root = yaml.MappingNode("tag:yaml.org,2002:map", [])
    config = b.build_root(Config, root)
    if config is not None:
        _cross_check(b, config)
    errors = [p for p in b.problems if p.severity == "error"]
    if errors or config is None:
        raise ConfigError(errors or b.problems)
    warnings = tuple(p for p in b.problems if p.severity == "warning")
    inputs = input_files(config)
    digest.update(digest_of(inputs))
    names = tuple(name for name, _ in docs)
    return Loaded(config, names, digest.hexdigest(), warnings, inputs, kv)


def _loader(name: str) -> type[yaml.SafeLoader]:
    class Named(yaml.SafeLoader):
        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.name = name

    return Named


def _merge(
    b: Builder, root: yaml.MappingNode, node: yaml.MappingNode, owners: dict[str, yaml.Node]
) -> yaml.MappingNode:
    """Fold a later file into the merged root; clashes name both places."""
    index = {str(k.value): i for i, (k, _) in enumerate(root.value)}
    for knode, vnode in node.value:
        key = str(knode.value)
        if key not in index:
            root.value.append((knode, vnode))
            index[key] = len(root.value) - 1
            owners[key] = vnode
            continue
        prev = root.value[index[key]][1]
        if (
            key in _LISTS
            and isinstance(prev, yaml.SequenceNode)
            and isinstance(vnode, yaml.SequenceNode)
        ):
            merged = yaml.SequenceNode(prev.tag, prev.value + vnode.value, prev.start_mark)
            root.value[index[key]] = (root.value[index[key]][0], merged)
        elif (
            key in _MAPS
            and isinstance(prev, yaml.MappingNode)
            and isinstance(vnode, yaml.MappingNode)
        ):
            names = {str(k.value): k for k, _ in prev.value}
            for k2, _v2 in vnode.value:
                if str(k2.value) in names:
                    b.error(
                        k2,
                        f"{key}.{k2.value}",
                        f"duplicate name, also defined at {mark_of(names[str(k2.value)])}",
                    )
            merged_m = yaml.MappingNode(prev.tag, prev.value + vnode.value, prev.start_mark)
            root.value[index[key]] = (root.value[index[key]][0], merged_m)
        else:
            b.error(knode, key, f"already set at {mark_of(owners[key])}; set it in one file only")
    return root


def _cross_check(b: Builder, c: Config) -> None:
    def unique(items: list, what: str, attr: str) -> None:  # type: ignore[type-arg]
        seen: dict[object, Mark] = {}
        for i, item in enumerate(items):
            if item is None:
                continue
            key = getattr(item, attr)
            m = marks(item).get(attr, marks(item)[""])
            if key in seen:
                shown = key if isinstance(key, str) else f"{key[0]}:{key[1]}"
                b.error(m, f"{what}[{i}].{attr}", f'duplicate "{shown}", also at {seen[key]}')
            else:
                seen[key] = m

    unique(c.listeners, "listeners", "name")
    unique(c.listeners, "listeners", "bind")
    unique(c.routes, "routes", "name")

    def known(name: str | None, owner: object, field_name: str, path: str) -> None:
        if name is not None and name not in c.services:
            m = marks(owner).get(field_name, marks(owner)[""])
            b.error(
                m, path, f'unknown service "{name}" (services: {", ".join(c.services) or "none"})'
            )

    for i, r in enumerate(c.routes):
        if r is None:
            continue
        known(r.service, r, "service", f"routes[{i}].service")
        for j, t in enumerate(r.split or []):
            if t is not None:
                known(t.service, t, "service", f"routes[{i}].split[{j}].service")
        if r.mirror is not None:
            known(r.mirror.service, r.mirror, "service", f"routes[{i}].mirror.service")
            shadow = c.services.get(r.mirror.service)
            if shadow is not None and shadow.protocol != "http1":
                b.error(
                    marks(r.mirror)["service"],
                    f"routes[{i}].mirror.service",
                    "copies go out over HTTP/1.1: the shadow service needs protocol: http1",
                )
        uses_redis = r.rate_limit is not None and r.rate_limit.backend == "redis"
        if uses_redis and c.redis is None:
            b.error(
                marks(r)["rate_limit"],
                f"routes[{i}].rate_limit.backend",
                "backend: redis needs a top-level redis: {url: ...} block",
            )
    _check_tcp_listeners(b, c, known)
    for name, s in c.services.items():
        if s is None:
            continue
        known(s.fallback, s, "fallback", f"services.{name}.fallback")
        if s.fallback == name:
            b.error(
                marks(s)["fallback"],
                f"services.{name}.fallback",
                "a service cannot fall back to itself",
            )
    if not c.listeners:
        b.error(
            Mark(getattr(c, "_marks", {}).get("", Mark("?", 1, 1)).file, 1, 1),
            "listeners",
            "at least one listener is needed",
        )


def _check_tcp_listeners(
    b: Builder, c: Config, known: Callable[[str | None, object, str, str], None]
) -> None:
    """Services named by tcp listeners exist; what a tcp service cannot do is said."""
    tcp_services: set[str] = set()
    for i, lc in enumerate(c.listeners):
        if lc is None or lc.mode != "tcp":
            continue
        known(lc.service, lc, "service", f"listeners[{i}].service")
        known(lc.default_service, lc, "default_service", f"listeners[{i}].default_service")
        for host, name in lc.sni_routes.items():
            known(name, lc, "sni_routes", f"listeners[{i}].sni_routes.{host}")
        tcp_services.update(n for n in (lc.service, lc.default_service) if n)
        tcp_services.update(lc.sni_routes.values())
    http_services: set[str] = set()
    for r in c.routes:
        if r is not None:
            http_services.update(n for n in (r.service,) if n)
            http_services.update(t.service for t in r.split or [] if t is not None)
    for name, s in c.services.items():
        if s is None:
            continue
        if s.proxy_protocol is not None and name in http_services:
            b.error(
                marks(s)["proxy_protocol"],
                f"services.{name}.proxy_protocol",
                "only tcp listeners send the PROXY header, and routes send HTTP to this "
                "service: give the tcp listener a service of its own",
            )
        if s.tls is not None and name in tcp_services:
            b.error(
                marks(s)["tls"],
                f"services.{name}.tls",
                "a tcp listener forwards bytes as they are and does not open TLS to backends",
            )
