"""The compression counters, exported in /metrics.

`lb_compressed_responses_total{route, codec}`: responses compressed, by the codec chosen.
`lb_compress_bytes_total{route, codec, direction}`: body bytes taken from backends
(direction="in") and sent to clients compressed ("out"), so in/out is the ratio achieved.
`lb_compress_skipped_total{route, reason}`: responses a compressing route sent as they were,
by why (encoded, range, no_transform, type, small, not_accepted; lb/compress/policy.py).
"""

from ..observe.metrics import register_counter

RESPONSES = "compressed_responses"
BYTES = "compress_bytes"
SKIPPED = "compress_skipped"

register_counter(
    RESPONSES,
    "lb_compressed_responses_total",
    "Responses compressed, by route and codec (zstd, br, gzip).",
    ("route", "codec"),
)
register_counter(
    BYTES,
    "lb_compress_bytes_total",
    'Body bytes of compressed responses: direction="in" from backends, "out" to clients.',
    ("route", "codec", "direction"),
)
register_counter(
    SKIPPED,
    "lb_compress_skipped_total",
    "Responses of compressing routes sent uncompressed, by reason.",
    ("route", "reason"),
)
