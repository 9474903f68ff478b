"""How lb reaches Consul: the connection fields that `consul:` (discovery, self-registration)
and `config_source.consul` (config from KV) share, checked alike."""

import os
from dataclasses import dataclass, field
from typing import Literal

from .fieldtypes import Duration, InputFile, Report


@dataclass
class ConsulConnection:
    address: str = field(
        default_factory=lambda: os.environ.get("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500")
    )
    token: str | None = None
    ca_file: InputFile | None = None
    cert_file: InputFile | None = None
    key_file: InputFile | None = None
    consistency: Literal["default", "stale", "consistent"] = "default"
    wait: Duration = 300.0

    def check(self, report: Report) -> None:
        if not 0 < self.wait <= 600:
            report("wait", "expected a blocking wait between 0 and 10m")
        # The client's own parser, so that `lb check` accepts exactly the addresses lb runs with.
        from ..discovery.consul import split_address

        try:
            split_address(self.address)
        except ValueError as exc:
            report("address", str(exc))
        if self.key_file and not self.cert_file:
            report("key_file", "a client key needs cert_file")
