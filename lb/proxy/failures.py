"""What can go wrong in an exchange, once: each failure says what lb answers, how a retry
policy sees it, and what the breakers and the outlier detector count.

The data path sets `exchange.failure` to one of these (or leaves it None) and reports a
failed attempt through `Runtime.record_failure(service, backend, failure)`; everything that
reacts to failures (retries, breakers, outlier ejection, metrics, the access log) reads the
member's fields instead of keeping its own list of names.
"""

from __future__ import annotations

# Methods whose request may be sent twice: retried after the backend may have seen them.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# How retry policies see a failure (`lb.traffic.retry.RetryPolicy.should_retry`).
CONNECT = "connect-failure"  # the backend never saw the request: safe for any method
RESET = "reset"  # the connection broke after the request was sent: idempotent methods only
TIMEOUT = "timeout"  # no answer in time; the backend may have acted
STATUS = "status"  # an answer with a status the route may retry


class Failure:
    """One kind of failure; the members below are all there is."""

    __slots__ = ("attempt", "breaker", "label", "retry", "status")

    def __init__(
        self, label: str, status: int, retry: str, breaker: frozenset[str], attempt: bool
    ) -> None:
        self.label = label  # in metrics, the access log and the admin API
        # What lb answers when this ends the exchange before a response started; 0 when no
        # answer can be sent any more (the client connection is cut instead).
        self.status = status
        self.retry = retry  # how retry policies see it; "" is never retried
        # The `circuit_breaker.failure_on` words that count it; empty: no verdict on the backend
        self.breaker = breaker
        # Reported through record_failure when the attempt fails, before the exchange ends
        # (the others are judged from the exchange's outcome).
        self.attempt = attempt

    def __repr__(self) -> str:
        return f"<Failure {self.label}>"

    def __str__(self) -> str:
        return self.label


_CONNECT, _TIMEOUT, _5XX = frozenset({"connect"}), frozenset({"timeout"}), frozenset({"5xx"})

CONNECT_FAILURE = Failure("connect-failure", 502, CONNECT, _CONNECT, True)
CONNECT_TIMEOUT = Failure("connect-timeout", 504, CONNECT, _CONNECT | _TIMEOUT, True)
RESET_BEFORE_HEAD = Failure("reset", 502, RESET, _5XX, True)
PROTOCOL = Failure("protocol", 502, RESET, _5XX, True)  # the backend broke HTTP
RESPONSE_HEAD_TIMEOUT = Failure("response-head", 504, TIMEOUT, _TIMEOUT, True)
UPSTREAM_IDLE = Failure("upstream-idle", 504, "", _TIMEOUT, True)  # no bytes either way
RESET_AFTER_HEAD = Failure("reset-after-head", 0, "", _5XX, False)
BAD_STATUS = Failure("status", 0, STATUS, _5XX, False)  # a 5xx, retried or not
# A gRPC call answered trailers-only with a grpc-status its route retries (`retries.
# grpc_status`): reported for the backend as it is retried, counted like a retried 5xx.
GRPC_STATUS = Failure("grpc-status", 0, STATUS, _5XX, False)
CLIENT_GONE = Failure("client-gone", 0, "", frozenset(), False)
NO_DESCRIPTORS = Failure("no-descriptors", 503, "", frozenset(), False)  # lb's own shortage
# An HTTP/2 stream the backend did not process (RST_STREAM REFUSED_STREAM, above a GOAWAY's
# last stream id, or no stream could be opened): moved to another connection or backend
# whatever the method, REDISPATCH_REFUSED times without a retry policy and without using up
# an attempt; no verdict on the backend.
REFUSED_STREAM = Failure("refused-stream", 503, CONNECT, frozenset(), True)
REDISPATCH_REFUSED = 3

ALL = (
    CONNECT_FAILURE,
    CONNECT_TIMEOUT,
    RESET_BEFORE_HEAD,
    PROTOCOL,
    RESPONSE_HEAD_TIMEOUT,
    UPSTREAM_IDLE,
    RESET_AFTER_HEAD,
    BAD_STATUS,
    GRPC_STATUS,
    CLIENT_GONE,
    NO_DESCRIPTORS,
    REFUSED_STREAM,
)


def counted_by(failure_on: list[str]) -> frozenset[Failure]:
    """The failures a circuit breaker with this `failure_on` list counts."""
    words = set(failure_on)
    return frozenset(f for f in ALL if f.breaker & words)
