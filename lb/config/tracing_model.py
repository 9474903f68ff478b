"""The tracing schema (`tracing:` at the top level): W3C Trace Context on every request, and
the sampled ones exported as OpenTelemetry spans over OTLP/HTTP (lb/tracing)."""

import re
from dataclasses import dataclass, field
from typing import Annotated
from urllib.parse import urlsplit

from .fieldtypes import Duration, Positive, Report
from .schema import Check

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 5.6.2)

Ratio = Annotated[float, Check(lambda v: 0 <= v <= 1, "a ratio from 0 to 1")]


@dataclass
class Otlp:
    # OTLP/HTTP with protobuf bodies: the collector's traces URL, path included
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    timeout: Duration = 5.0  # one export, its retries of a collector that is down included
    headers: dict[str, str] = field(default_factory=dict)  # e.g. an API key, from ${ENV}
    compression: bool = False  # gzip the export bodies

    def check(self, report: Report) -> None:
        parts = urlsplit(self.endpoint)
        try:
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            report("endpoint", f'an http:// or https:// URL, found "{self.endpoint}"')
        if self.timeout <= 0:
            report("timeout", "expected a positive duration")
        for name, value in self.headers.items():
            if not _TOKEN.fullmatch(name):
                report("headers", f'"{name}" is not a header name')
            elif any(c in value for c in "\r\n\0"):
                report("headers", f'the value of "{name}" holds a line break or NUL')


@dataclass
class Tracing:
    otlp: Otlp = field(default_factory=Otlp)
    # The share of new traces (requests without a valid traceparent) that are recorded, decided
    # on the trace id like OpenTelemetry's TraceIdRatioBased; a parent's sampled flag wins.
    sampling: Ratio = 0.01
    service_name: str = "lb"  # the spans' resource `service.name`
    max_queue: Positive = 2048  # finished spans waiting for the exporter; beyond: dropped
    batch: Positive = 512  # spans per export request
    interval: Duration = 1.0  # a batch that is not full goes out after this long

    def check(self, report: Report) -> None:
        if not self.service_name:
            report("service_name", "expected a non-empty name")
        if self.batch > self.max_queue:
            report("batch", "expected at most max_queue")
        if self.interval <= 0:
            report("interval", "expected a positive duration")
