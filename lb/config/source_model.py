"""`config_source`: where the rest of the config comes from besides the local files.

It is read from the local files only (`lb run -c`), before anything else: it says how to
reach Consul, which KV prefix holds the config documents, and where the last good copy of them
is cached for a boot while Consul is down (lb/config/kv.py, lb/discovery/kvconfig.py).
"""

import os
from dataclasses import dataclass, field
from typing import Literal

from .fieldtypes import Duration, InputFile, Report


@dataclass
class ConsulSource:
    prefix: str
    address: str = field(
        default_factory=lambda: os.environ.get("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500")
    )
    token: str | None = None
    ca_file: InputFile | None = None
    cert_file: InputFile | None = None
    key_file: InputFile | None = None
    consistency: Literal["default", "stale", "consistent"] = "default"
    wait: Duration = 300.0
    # The last good KV documents, rewritten (atomically) after every good apply; read at boot
    # when Consul cannot be reached. None: no cache, and no boot without Consul.
    cache: str | None = None

    def check(self, report: Report) -> None:
        from ..discovery.consul import split_address

        self.prefix = kv_folder(self.prefix)
        if self.prefix == "/" or self.prefix.startswith("/"):
            report("prefix", 'a KV folder such as "lb/config/" (no leading "/")')
        if not 0 < self.wait <= 600:
            report("wait", "expected a blocking wait between 0 and 10m")
        try:
            split_address(self.address)
        except ValueError as exc:
            report("address", str(exc))
        if self.key_file and not self.cert_file:
            report("key_file", "a client key needs cert_file")


def kv_folder(prefix: str) -> str:
    """A prefix names a folder: "lb/config" and "lb/config/" are the same, and neither takes
    in "lb/configuration/"."""
    return prefix if prefix.endswith("/") else prefix + "/"


@dataclass
class ConfigSource:
    consul: ConsulSource
