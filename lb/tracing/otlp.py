"""OTLP encoding of lb's spans: an `ExportTraceServiceRequest` built with opentelemetry-proto's
message classes, from the span tuples of spans.py.

The SDK's own encoder (`encode_spans` on `ReadableSpan`s) costs some 75 µs a span, which at 1%
sampling is 0.75 µs of every request's share of the process: as much as the whole tracing
budget. Here a span is its few varying fields encoded as a `Span`, followed by the encodings of
its attributes, each made once per (key, value) and kept (bounded), since route, service,
backend, method and status repeat: protobuf reads a repeated field's items wherever they come,
so the concatenation is the span with all its attributes. About 13 µs a span.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

if TYPE_CHECKING:
    from .spans import SpanRecord

MAX_CACHED = 10_000  # attribute encodings kept; past this the cache starts over
_SERVER = Span.SPAN_KIND_SERVER
_ERROR = Status.STATUS_CODE_ERROR
# W3C flags in the low byte (sampled), and the parent's remoteness known (OTLP 1.4 span flags)
_FLAGS_LOCAL_PARENT = 0x101
_FLAGS_REMOTE_PARENT = 0x301
_VERSIONS = {"2.0": "2", "3.0": "3"}  # network.protocol.version as the conventions spell it


def _value(value: str | int) -> AnyValue:
    return AnyValue(int_value=value) if isinstance(value, int) else AnyValue(string_value=value)


class Encoder:
    def __init__(self, resource: dict[str, str | int], version: str) -> None:
        self._resource = Resource(
            attributes=[KeyValue(key=k, value=_value(v)) for k, v in resource.items()]
        )
        self._scope = InstrumentationScope(name="lb", version=version)
        self._cached: dict[tuple[str, str | int], bytes] = {}

    def request(self, spans: list[bytes]) -> bytes:
        """One export's body: the spans under lb's resource and scope."""
        scope = ScopeSpans(scope=self._scope)
        for span in spans:
            scope.spans.add().MergeFromString(span)
        resource = ResourceSpans(resource=self._resource, scope_spans=[scope])
        return ExportTraceServiceRequest(resource_spans=[resource]).SerializeToString()

    def span(self, r: SpanRecord, offset: int) -> bytes:
        """One span's encoding; `offset` turns the loop's monotonic clock into Unix time."""
        (trace, t0, t1, method, path, host, route, service, backend, status, retries,
         failure, error, client, protocol, grpc_status) = r  # fmt: skip
        verb = method.decode("latin-1")
        core = Span(
            trace_id=bytes.fromhex(trace.trace_id.decode()),
            span_id=bytes.fromhex(trace.span_id.decode()),
            name=f"{verb} {route}" if route is not None else verb,
            kind=_SERVER,
            start_time_unix_nano=int(t0 * 1e9) + offset,
            end_time_unix_nano=int(t1 * 1e9) + offset,
            flags=_FLAGS_LOCAL_PARENT,
        )
        if trace.parent_id is not None:
            core.parent_span_id = bytes.fromhex(trace.parent_id.decode())
            core.flags = _FLAGS_REMOTE_PARENT
        if trace.tracestate is not None:
            core.trace_state = trace.tracestate.decode("latin-1")
        if error:
            core.status.code = _ERROR
            core.status.message = failure or str(status)
        kv = self._kv
        parts = [
            core.SerializeToString(),
            kv("http.request.method", verb),
            kv("url.path", path),
            kv("client.address", client.decode("latin-1")),
            kv("lb.retries", retries),
        ]
        if host is not None:
            parts += self._address("server", host.decode("latin-1"))
        if protocol is not None:
            version = protocol.rpartition("/")[2]
            parts.append(kv("network.protocol.version", _VERSIONS.get(version, version)))
        if status:
            parts.append(kv("http.response.status_code", status))
        if route is not None:
            parts.append(kv("lb.route", route))
        if service is not None:
            parts.append(kv("lb.service", service))
        if backend:
            parts.append(kv("lb.backend", backend))
            parts += self._address("network.peer", backend)
        if failure is not None:
            parts.append(kv("lb.failure", failure))
        if grpc_status is not None and grpc_status.isdigit():
            parts.append(kv("rpc.grpc.status_code", int(grpc_status)))
        return b"".join(parts)

    def _kv(self, key: str, value: str | int) -> bytes:
        """An attribute as a `Span` holding only it: the bytes to append to a span's."""
        cached = self._cached.get((key, value))
        if cached is None:
            cached = Span(attributes=[KeyValue(key=key, value=_value(value))]).SerializeToString()
            if len(self._cached) >= MAX_CACHED:
                self._cached.clear()
            self._cached[(key, value)] = cached
        return cached

    def _address(self, prefix: str, authority: str) -> list[bytes]:
        """`host[:port]` as semantic conventions' `<prefix>.address` and `<prefix>.port`."""
        host, sep, port = authority.rpartition(":")
        if sep and port.isdigit():
            return [
                self._kv(prefix + ".address", host.strip("[]")),
                self._kv(prefix + ".port", int(port)),
            ]
        return [self._kv(prefix + ".address", authority.strip("[]"))]
