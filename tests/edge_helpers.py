"""Helpers of the edge-policy tests: curl as the client, configs with a policy on a route."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass
class CurlResult:
    status: int
    headers: dict[str, str]  # lower-case names; the last value of each
    body: bytes


async def curl(url: str, *args: str, timeout: float = 10.0) -> CurlResult:
    """One request with curl, run without blocking the loop that lb runs on."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-s", "-i", "--max-time", str(timeout), *args, url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout + 5)
    assert proc.returncode == 0, err.decode()
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return CurlResult(int(lines[0].split()[1]), headers, body)


async def run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()


def routes(*entries: tuple[str, str, str]) -> str:
    """Routes (name, path prefix, extra YAML lines indented under the route) to service app."""
    out = ["routes:"]
    for name, prefix, extra in entries:
        out += [f"  - name: {name}", f"    match: {{path: {{prefix: {prefix}}}}}"]
        out.append("    service: app")
        out += [f"    {line}" for line in extra.splitlines() if line]
    return "\n".join(out) + "\n"


def tcp_listener_config(port: int, admin_port: int, backend: str, policy: str) -> str:
    """One mode: tcp listener `db` on `port` with `policy` (a YAML line of the listener's, such
    as `max_connections_per_client: 1`) in front of one backend."""
    return (
        "listeners:\n  - name: db\n    mode: tcp\n"
        f'    bind: "127.0.0.1:{port}"\n    service: app\n    {policy}\n'
        f'admin: {{bind: "127.0.0.1:{admin_port}"}}\n'
        f'services:\n  app: {{backends: ["{backend}"]}}\n'
    )
