"""W3C Trace Context (Level 1) on the request path: a request's `traceparent` read, or a trace
started, the sampling decided, and the backend handed lb's own `traceparent`.

`Propagator.begin(info)` runs once per request head while tracing is on (the client sides
call it right after `analyze_request`, HTTP/1.1 and HTTP/2 alike), and only then: with tracing
off, `Runtime.tracer` is None and nothing here runs. It costs one call that makes the ids
and writes lb's traceparent (`TraceIds`, compiled from ext/traceids.pyx) and one small object:
the head analysis notes whether trace headers came (`RequestInfo.trace_headers`), and only a
request that carries them takes the slow path that parses and rebuilds its header list.

A valid `traceparent` (version 00 exactly as specified; a later version by its first four
fields; version ff, upper-case hex, all-zero ids or a wrong length are invalid) continues its
trace and its sampled flag decides. Without one, a new trace starts and the sampling ratio
decides on the trace id's low 64 bits as OpenTelemetry's TraceIdRatioBased sampler does, so
that every lb instance and every SDK configured with the same ratio agrees. An invalid
`traceparent` is dropped with any `tracestate` (which belongs to the trace it named). Either
way the backend gets version 00 with the trace id, lb's own span id and the sampled flag, and
the `tracestate` as it came: the unsampled requests propagate too, without a span.
"""

import os
import re
from collections.abc import Callable

from ..proxy.headers import RequestInfo, lower_name
from .ids import TraceIds

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
_FIELDS = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
_M = 0xFFFFFFFFFFFFFFFF
_ONE = 49  # "1", the sampled flag's last digit


class TraceContext:
    """A request's place in its trace. `header` is the traceparent lb forwards (version 00),
    so that the ids are made and formatted once and read back only when something needs them
    (a sampled span, an access-log line)."""

    __slots__ = ("header", "parent_id", "sampled", "tracestate")

    def __init__(
        self, header: bytes, parent_id: bytes | None, sampled: bool, tracestate: bytes | None
    ) -> None:
        self.header = header  # "00-<trace id>-<lb's span id>-<flags>"
        self.parent_id = parent_id  # the client's span, when it sent a valid traceparent
        self.sampled = sampled
        self.tracestate = tracestate  # as forwarded

    @property
    def trace_id(self) -> bytes:
        return self.header[3:35]

    @property
    def span_id(self) -> bytes:
        """lb's span: the parent of whatever the backend records."""
        return self.header[36:52]


def parse_traceparent(value: bytes) -> tuple[bytes, bytes, bool] | None:
    """(trace id, parent id, sampled) of a valid `traceparent` value, else None."""
    value = value.strip(b" \t")
    m = _FIELDS.match(value)
    if m is None:
        return None
    version = m.group(1)
    if version == b"ff":
        return None
    if version == b"00":
        if len(value) != 55:
            return None
    elif len(value) != 55 and value[55:56] != b"-":  # a later version may append fields
        return None
    trace_id, parent_id = m.group(2), m.group(3)
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, bool(int(m.group(4), 16) & 1)


class Propagator:
    """`Runtime.tracer`: one per config, its sampling bound computed once."""

    __slots__ = ("_new_span", "_new_trace")

    def __init__(self, sampling: float) -> None:
        # Sampled when the trace id's low 64 bits are below the bound (TraceIdRatioBased's).
        bound = round(sampling * (1 << 64))
        seed = int.from_bytes(os.urandom(8), "little")  # its own per process and config
        ids = TraceIds(seed, min(bound, _M), bound > _M)
        # Bound once: a method looked up by name on every request costs more than the call.
        self._new_trace: Callable[[], bytes] = ids.new_trace
        self._new_span: Callable[[], bytes] = ids.new_span

    def begin(self, info: RequestInfo) -> None:
        if info.trace_headers:  # noted by the head analysis (lb/proxy/headers.py)
            self._continue(info)
            return
        header = self._new_trace()
        info.trace = _context(header, None, header[54] == _ONE, None)
        info.forward.append((TRACEPARENT, header))

    def _continue(self, info: RequestInfo) -> None:
        """The slow path: a request with trace headers; its header list is rebuilt."""
        parents: list[bytes] = []
        states: list[bytes] = []
        rest: list[tuple[bytes, bytes]] = []
        for item in info.forward:
            lname = lower_name(item[0])
            if lname == TRACEPARENT:
                parents.append(item[1])
            elif lname == TRACESTATE:
                states.append(item[1].strip(b" \t"))
            else:
                rest.append(item)
        info.trace_headers = False  # they are all in `parents` and `states` now
        # Two traceparent headers name no single parent: invalid, as the spec has it.
        parsed = parse_traceparent(parents[0]) if len(parents) == 1 else None
        if parsed is None:
            info.forward = rest
            self.begin(info)  # a new trace, without the invalid parent's tracestate
            return
        trace_id, parent_id, sampled = parsed
        state = b",".join([s for s in states if s]) or None  # several headers are one list
        span = self._new_span()
        header = b"00-%b-%b-%b" % (trace_id, span, b"01" if sampled else b"00")
        info.trace = _context(header, parent_id, sampled, state)
        if state is not None:
            rest.append((TRACESTATE, state))
        rest.append((TRACEPARENT, header))
        info.forward = rest


def _context(
    header: bytes, parent_id: bytes | None, sampled: bool, tracestate: bytes | None
) -> TraceContext:
    """A TraceContext without the generic constructor call (compiled: tp_new and four
    stores), as every request while tracing is on makes one."""
    ctx = TraceContext.__new__(TraceContext)
    ctx.header = header
    ctx.parent_id = parent_id
    ctx.sampled = sampled
    ctx.tracestate = tracestate
    return ctx
