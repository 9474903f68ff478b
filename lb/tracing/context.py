"""W3C Trace Context (Level 1) on the request path: a request's `traceparent` read, or a trace
started, the sampling decided, and the backend handed lb's own `traceparent`.

`Propagator.begin(info)` runs once per request head while tracing is on (the client sides
call it right after `analyze_request`, HTTP/1.1 and HTTP/2 alike), and only then: with tracing
off, `ListenerRuntime.runtime.tracer` is None and nothing here runs. It costs one look at each
header's length and first letter; only a request that carries trace headers takes the slow path
that parses and rebuilds its header list.

A valid `traceparent` (version 00 exactly as specified; a later version by its first four
fields; version ff, upper-case hex, all-zero ids or a wrong length are invalid) continues its
trace and its sampled flag decides. Without one, a new trace starts and the sampling ratio
decides on the trace id's low 64 bits as OpenTelemetry's TraceIdRatioBased sampler does, so
that every lb instance and every SDK configured with the same ratio agrees. An invalid
`traceparent` is dropped with any `tracestate` (which belongs to the trace it named). Either
way the backend gets version 00 with the trace id, lb's own span id and the sampled flag, and
the `tracestate` as it came: the unsampled requests propagate too, without a span.
"""

import re
from random import getrandbits  # reseeded in a forked worker, unlike a Random() of our own

from ..proxy.headers import RequestInfo, lower_name

TRACEPARENT = b"traceparent"
TRACESTATE = b"tracestate"
_FIELDS = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16
_T = 116  # "t"; a header name's first byte | 32 folds "T" onto it


class TraceContext:
    """A request's place in its trace: ids as lower-case hex, as they travel in headers."""

    __slots__ = ("parent_id", "sampled", "span_id", "trace_id", "tracestate")

    def __init__(
        self,
        trace_id: bytes,
        span_id: bytes,
        parent_id: bytes | None,
        sampled: bool,
        tracestate: bytes | None,
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id  # lb's span: the parent of whatever the backend records
        self.parent_id = parent_id  # the client's span, when it sent a valid traceparent
        self.sampled = sampled
        self.tracestate = tracestate


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


def _span_id() -> bytes:
    return b"%016x" % (getrandbits(64) or 1)


class Propagator:
    """`Runtime.tracer`: one per config, its sampling bound computed once."""

    __slots__ = ("bound",)

    def __init__(self, sampling: float) -> None:
        # Sampled when the trace id's low 64 bits are below this (TraceIdRatioBased's bound).
        self.bound = round(sampling * (1 << 64))

    def begin(self, info: RequestInfo) -> None:
        forward = info.forward
        for item in forward:
            name = item[0]
            n = len(name)
            if (n == 11 or n == 10) and (name[0] | 32) == _T:
                lname = lower_name(name)
                if lname in (TRACEPARENT, TRACESTATE):
                    self._continue(info)
                    return
        high = getrandbits(64)
        low = getrandbits(64) or 1  # never the all-zero trace id
        sampled = low < self.bound
        ctx = TraceContext(b"%016x%016x" % (high, low), _span_id(), None, sampled, None)
        info.trace = ctx
        forward.append((TRACEPARENT, _header(ctx)))

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
        # Two traceparent headers name no single parent: invalid, as the spec has it.
        parsed = parse_traceparent(parents[0]) if len(parents) == 1 else None
        if parsed is None:
            info.forward = rest
            self.begin(info)  # a new trace, without the invalid parent's tracestate
            return
        trace_id, parent_id, sampled = parsed
        state = b",".join([s for s in states if s]) or None  # several headers are one list
        ctx = TraceContext(trace_id, _span_id(), parent_id, sampled, state)
        info.trace = ctx
        if state is not None:
            rest.append((TRACESTATE, state))
        rest.append((TRACEPARENT, _header(ctx)))
        info.forward = rest


def _header(ctx: TraceContext) -> bytes:
    return b"00-%b-%b-%b" % (ctx.trace_id, ctx.span_id, b"01" if ctx.sampled else b"00")
