"""The mirroring counter, exported in /metrics.

`lb_mirror_requests_total{route, result}`: requests the route's sampling picked for a copy,
by what became of the copy: "sent" (the shadow answered; its answer was discarded),
"skipped_body" (the request body was over `max_body`), "skipped_busy" (`max_in_flight`
copies were under way), "failed" (no shadow backend, connection refused or reset, broken
HTTP, or no answer within `timeout`).
"""

from ..observe.metrics import register_counter

REQUESTS = "mirror_requests"

register_counter(
    REQUESTS,
    "lb_mirror_requests_total",
    "Requests picked for mirroring, by result (sent, skipped_body, skipped_busy, failed).",
    ("route", "result"),
)
