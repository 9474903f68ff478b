"""The files a config names for lb to read (certificates, keys, htpasswd, JWKS, secrets):
the fields the schema marks `InputFile`.

Their bytes go into the config's digest and the watcher polls them beside the config files,
so that a certificate renewed in place, or a user added to an htpasswd file, reloads like an
edit of the YAML, and a reload asked for with unchanged YAML is not skipped when they changed.
"""

import dataclasses
import hashlib
import types
from functools import cache
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

from .schema import ReadsFile


def input_files(config: object) -> tuple[str, ...]:
    """Every path in `config` given to a field marked ReadsFile, each once, in config order."""
    found: dict[str, None] = {}
    _collect(config, found)
    return tuple(found)


def digest_of(paths: tuple[str, ...]) -> bytes:
    """A hash of the files' bytes, and of which cannot be read (the config check says why)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(b"\0" + path.encode() + b"\0")
        try:
            with open(path, "rb") as f:
                digest.update(hashlib.sha256(f.read()).digest())
        except OSError:
            digest.update(b"unreadable")
    return digest.digest()


def _collect(value: object, found: dict[str, None]) -> None:
    if isinstance(value, list | tuple):
        for item in value:
            _collect(item, found)
    elif isinstance(value, dict):
        for item in value.values():
            _collect(item, found)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        files, nested = _fields(type(value))
        for name in files:
            path = getattr(value, name)
            if path:
                found[path] = None
        for name in nested:
            _collect(getattr(value, name), found)


@cache
def _fields(cls: type) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A dataclass's fields marked ReadsFile, and those that may hold further dataclasses."""
    files: list[str] = []
    nested: list[str] = []
    for name, tp in get_type_hints(cls, include_extras=True).items():
        if name not in {f.name for f in dataclasses.fields(cls)}:
            continue
        if _marked(tp):
            files.append(name)
        elif _may_nest(tp):
            nested.append(name)
    return tuple(files), tuple(nested)


def _marked(tp: Any) -> bool:
    if get_origin(tp) in (Union, types.UnionType):
        return any(_marked(a) for a in get_args(tp))
    return get_origin(tp) is Annotated and ReadsFile in get_args(tp)[1:]


def _may_nest(tp: Any) -> bool:
    if get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return True
    return any(_may_nest(a) for a in get_args(tp))
