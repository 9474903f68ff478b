"""`config_source`: where the rest of the config comes from besides the local files.

It is read from the local files only (`lb run -c`), before anything else: it says how to
reach Consul, which KV prefix holds the config documents, and where the last good copy of them
is cached for a boot while Consul is down (lb/config/kv.py, lb/discovery/kvconfig.py).
"""

from dataclasses import dataclass

from .consul_model import ConsulConnection
from .fieldtypes import Report


@dataclass(kw_only=True)
class ConsulSource(ConsulConnection):
    prefix: str
    # The last good KV documents, rewritten (atomically) after every good apply; read at boot
    # when Consul cannot be reached. None: no cache, and no boot without Consul.
    cache: str | None = None

    def check(self, report: Report) -> None:
        super().check(report)
        self.prefix = kv_folder(self.prefix)
        if self.prefix == "/" or self.prefix.startswith("/"):
            report("prefix", 'a KV folder such as "lb/config/" (no leading "/")')


def kv_folder(prefix: str) -> str:
    """A prefix names a folder: "lb/config" and "lb/config/" are the same, and neither takes
    in "lb/configuration/"."""
    return prefix if prefix.endswith("/") else prefix + "/"


@dataclass
class ConfigSource:
    consul: ConsulSource
