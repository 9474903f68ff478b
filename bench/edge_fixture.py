"""The `lb_edge` entry's policies: every edge policy that can admit without a subrequest,
configured so that every request of the benchmark passes them.

- ip_filter: an allow list of 10,000 CIDRs that holds 127.0.0.0/8 (lookup must not grow
  with the list);
- basic_auth: a bcrypt htpasswd line (the verification is cached, so the benchmark measures
  the cached path, as a client reusing its credentials sees it);
- jwt: an HS256 token in a cookie, with issuer and audience checked and a claim copied into
  a request header;
- client_in_flight: a cap per client address far above the benchmark's concurrency.

Forward auth is left out: it costs a subrequest to a service of the operator's, which would
measure that service. Every proxy of the run is sent the same two headers, so the requests
that `lb` and `lb_edge` answer are the same bytes.
"""

import base64
import time
from pathlib import Path

import bcrypt
import jwt

USER, PASSWORD = "bench", "bench-password"
SECRET = b"lb-bench-hs256-secret-of-32-bytes"
ISSUER, AUDIENCE = "https://issuer.bench", "lb-bench"


def _cidrs(n: int) -> list[str]:
    """n - 1 networks in 10.0.0.0/8 of assorted lengths, and the loopback network."""
    out = [f"10.{(i >> 8) & 255}.{i & 255}.0/{24 + i % 8}" for i in range(n - 1)]
    return [*out, "127.0.0.0/8"]


def write(home: Path) -> tuple[str, list[str]]:
    """The route's YAML lines (indented for a route of lb_config) and wrk's -H arguments."""
    htpasswd = home / "htpasswd"
    digest = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    htpasswd.write_text(f"{USER}:{digest}\n")
    secret = home / "jwt.secret"
    secret.write_bytes(SECRET)
    token = jwt.encode(
        {"sub": "bench", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 86400},
        SECRET,
        algorithm="HS256",
    )
    cidrs = ", ".join(f'"{c}"' for c in _cidrs(10_000))
    yaml = (
        f"    ip_filter: {{allow: [{cidrs}]}}\n"
        f'    basic_auth: {{htpasswd: "{htpasswd}"}}\n'
        f'    jwt: {{secret_file: "{secret}", algorithms: [HS256], issuer: "{ISSUER}", '
        f'audiences: ["{AUDIENCE}"], cookie: token, claims_to_headers: {{sub: x-user}}}}\n'
        "    client_in_flight: {max: 100000}\n"
    )
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    headers = ["-H", f"Authorization: Basic {basic}", "-H", f"Cookie: token={token}"]
    return yaml, headers
