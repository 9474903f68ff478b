"""Reloads under keep-alive load, with the small timeouts of the soak configs: 50 valid
reloads spread over longer than the timeouts while WebSockets chat and a response streams;
and a storm of invalid and failing reloads, each of which must change nothing at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import LB, Client, RawBackend, Response, free_port, lb_yaml, running_lb
from soak import (
    SCALE,
    listener_timeouts,
    load,
    read_chunked_stream,
    report,
    serve_paths,
    service_timeouts,
    stream_response,
    ws_chat,
    ws_echo_backend,
)

pytestmark = pytest.mark.soak

T = SCALE.timeout
TICK = SCALE.tick
SLACK = SCALE.slack
RELOADS = 50
SPAN = max(SCALE.hold, 2 * T)  # the 50 reloads are spread over this: longer than the timeouts


def config(
    port: int,
    admin_port: int,
    apps: list[str],
    ws: str,
    *,
    tag: str,
    weight: int = 1,
    extra_listener: str = "",
) -> str:
    """The app service (two backends, the second weighted `weight`) behind a catch-all route
    that sets `X-Config: tag` on responses, a ws service on /ws; every timeout small."""
    app_backends = f'      - "{apps[0]}"\n      - {{address: "{apps[1]}", weight: {weight}}}\n'
    routes = (
        "routes:\n"
        "  - name: ws\n"
        "    match: {path: {prefix: /ws}}\n"
        "    service: ws\n"
        "  - name: all\n"
        "    match: {path: {prefix: /}}\n"
        "    service: app\n"
        f'    response_headers: {{set: {{X-Config: "{tag}"}}}}\n'
    )
    text = lb_yaml(
        None,
        port=port,
        admin_port=admin_port,
        extra_listener=listener_timeouts() + extra_listener,
        extra_service=service_timeouts() + f'  ws:\n    backends: ["{ws}"]\n' + service_timeouts(),
        routes=routes,
    )
    return text.replace("    backends: []\n", "    backends:\n" + app_backends, 1)


async def admin_reload(s: aiohttp.ClientSession, lb: LB, text: str) -> tuple[int, dict[str, Any]]:
    lb.config_path.write_text(text)
    async with s.post(f"{lb.admin}/api/reload") as resp:
        return resp.status, await resp.json()


async def admin_status(s: aiohttp.ClientSession, lb: LB) -> dict[str, Any]:
    async with s.get(f"{lb.admin}/api/status") as resp:
        assert resp.status == 200
        return await resp.json()


async def probe(port: int) -> Response:
    """One GET on a fresh connection: the listener accepts, and the routes as they are now."""
    c = await Client.connect(port)
    try:
        return await c.request(timeout=SLACK)
    finally:
        c.close()


def tagged(r: Response) -> str | None:
    if r.status != 200:
        return f"status {r.status}"
    return None if r.header("x-config") else "no X-Config header"


@contextlib.asynccontextmanager
async def app_backends() -> AsyncIterator[list[RawBackend]]:
    count = int((SPAN + 2 * T) / TICK)

    async def stream(path: str, writer: asyncio.StreamWriter) -> bool:
        if path.startswith("/stream"):
            await stream_response(writer, count, TICK)
            return True
        return False

    async def handler(_: RawBackend, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await serve_paths(r, w, stream)

    started = [await RawBackend(handler=handler).start() for _ in range(2)]
    try:
        yield started
    finally:
        for b in started:
            await b.stop()


async def read_stream(port: int) -> tuple[int, bool, float]:
    """GET /stream: (chunks, whether it ended properly, seconds)."""
    c = await Client.connect(port)
    start = time.monotonic()
    try:
        c.writer.write(b"GET /stream HTTP/1.1\r\nhost: soak\r\n\r\n")
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), SLACK)
        assert head.startswith(b"HTTP/1.1 200"), head
        chunks, ended = await read_chunked_stream(c.reader, TICK + SLACK)
        return len(chunks), ended, time.monotonic() - start
    finally:
        c.close()


# -- 50 reloads with long-lived connections ------------------------------------------------------
async def test_websockets_and_stream_survive_fifty_reloads_under_load(tmp_path: Path) -> None:
    async with app_backends() as apps, ws_echo_backend() as (ws_addr, ws_stats):
        port, admin_port = free_port(), free_port()
        addrs = [b.address for b in apps]
        texts = {
            "a": config(port, admin_port, addrs, ws_addr, tag="a", weight=1),
            "b": config(port, admin_port, addrs, ws_addr, tag="b", weight=3),
        }
        async with (
            running_lb(tmp_path, texts["a"], watch_interval=3600) as lb,
            aiohttp.ClientSession() as s,
            load(lb.port, clients=16, check=tagged) as g,
        ):
            sockets = [
                await s.ws_connect(f"{lb.url}/ws/{i}", autoping=False, heartbeat=None)
                for i in range(3)
            ]
            chats = [
                asyncio.create_task(ws_chat(ws, TICK, SPAN + T, name=f"ws{i}"))
                for i, ws in enumerate(sockets)
            ]
            stream = asyncio.create_task(read_stream(lb.port))
            results, applied = [], []
            start = time.monotonic()
            for i in range(RELOADS):
                tag = "b" if i % 2 == 0 else "a"
                results.append(await admin_reload(s, lb, texts[tag]))
                applied.append((await probe(lb.port)).header("x-config") == tag)
                # Spread over SPAN: the connections live through reloads and timeouts alike.
                await asyncio.sleep(max(0.0, start + (i + 1) * SPAN / RELOADS - time.monotonic()))
            span = time.monotonic() - start
            chat_results = await asyncio.gather(*chats, return_exceptions=True)
            echoes_after = []
            for i, ws in enumerate(sockets):
                try:
                    await ws.send_str(f"after {i}")
                    echoes_after.append(await ws.receive_str(timeout=SLACK) == f"echo after {i}")
                except Exception as exc:
                    echoes_after.append(repr(exc))
                await ws.close()
            chunks, ended, streamed = await stream
            await g.stop()
        ok = sum(1 for status, body in results if status == 200 and body["ok"])
        report(
            "reloads_50",
            requests=g.requests,
            failures=len(g.failures),
            reloads_ok=ok,
            applied=sum(applied),
            span_s=span,
            ws_messages=sum(r for r in chat_results if isinstance(r, int)),
            stream_chunks=chunks,
            stream_s=streamed,
        )
        assert ok == RELOADS, [r for r in results if r[0] != 200][:3]
        assert all(applied), "a reload answered ok but its routes were not live"
        assert lb.server.reloads == {"success": RELOADS, "failure": 0}
        bad_chats = [r for r in chat_results if not isinstance(r, int)]
        assert bad_chats == [], f"WebSockets broke during the reloads: {bad_chats}"
        assert echoes_after == [True] * 3, echoes_after
        assert ws_stats.opened == 3
        assert ended, f"the stream was cut after {chunks} chunks, {streamed:.2f} s"
        assert g.failures == [], g.failure_summary()
        assert g.requests > 500


# -- a storm of invalid and failing reloads ------------------------------------------------------
@contextlib.contextmanager
def port_in_use() -> Iterator[int]:
    """A port another socket of this process listens on, so lb cannot bind it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def bad_configs(
    port: int, admin_port: int, addrs: list[str], ws: str, busy: int
) -> dict[str, tuple[str, str]]:
    """name -> (config text, a word its errors must contain). Each would also change the
    route's X-Config header, so a half-applied one shows."""

    def cfg(tag: str, **kw: Any) -> str:
        return config(port, admin_port, addrs, ws, tag=tag, **kw)

    return {
        "yaml-error": (cfg("bad-yaml") + "bogus: [unclosed\n", ""),
        "unknown-key": (cfg("bad-key", extra_listener="    bogus_key: 1\n"), "bogus_key"),
        "listener-port-in-use": (config(busy, admin_port, addrs, ws, tag="bad-move"), "in use"),
        "second-listener-port-in-use": (
            cfg("bad-second", extra_listener=f'  - name: web2\n    bind: "127.0.0.1:{busy}"\n'),
            "in use",
        ),
    }


async def test_reload_storm_of_bad_configs_changes_nothing(tmp_path: Path) -> None:
    async with app_backends() as apps, ws_echo_backend() as (ws_addr, _):
        port, admin_port = free_port(), free_port()
        addrs = [b.address for b in apps]
        good = {
            "a": config(port, admin_port, addrs, ws_addr, tag="a", weight=1),
            "b": config(port, admin_port, addrs, ws_addr, tag="b", weight=3),
        }
        with port_in_use() as busy:
            bad = bad_configs(port, admin_port, addrs, ws_addr, busy)
            async with (
                running_lb(tmp_path, good["a"], watch_interval=3600) as lb,
                aiohttp.ClientSession() as s,
                load(lb.port, clients=16, check=tagged) as g,
            ):
                start = time.monotonic()
                problems = await storm(s, lb, good, bad, port)
                span = time.monotonic() - start
                await g.stop()
        report(
            "reload_storm",
            requests=g.requests,
            failures=len(g.failures),
            reloads=sum(lb.server.reloads.values()),
            problems=len(problems),
            span_s=span,
        )
        assert problems == [], "\n".join(problems[:12])
        assert g.failures == [], g.failure_summary()
        assert lb.server.reloads == {
            "success": SCALE.storm_rounds,
            "failure": SCALE.storm_rounds * len(bad) * 2,
        }


async def storm(
    s: aiohttp.ClientSession,
    lb: LB,
    good: dict[str, str],
    bad: dict[str, tuple[str, str]],
    port: int,
) -> list[str]:
    """Every bad kind twice in a row, then a good config, for SCALE.storm_rounds rounds; what
    went wrong, as readable lines."""
    problems: list[str] = []
    current = "a"
    status = await admin_status(s, lb)
    good_hash = status["config"]["hash"]
    web = [{"name": "web", "bind": f"127.0.0.1:{port}"}]
    # Spread over SPAN, so the storm outlasts the timeouts of the connections under load.
    loop = asyncio.get_running_loop()
    step = SPAN / (SCALE.storm_rounds * (2 * len(bad) + 1))
    next_at = loop.time()

    async def pace() -> None:
        nonlocal next_at
        next_at += step
        await asyncio.sleep(max(0.0, next_at - loop.time()))

    for rnd in range(SCALE.storm_rounds):
        for kind, (text, reason) in bad.items():
            for attempt in ("first", "repeated"):
                where = f"round {rnd} {kind} ({attempt})"
                code, body = await admin_reload(s, lb, text)
                errors = " ".join(body.get("errors") or [])
                if code < 400 or body.get("ok") is not False:
                    problems.append(f"{where}: answered {code} {body}")
                elif not errors or reason.lower() not in errors.lower():
                    problems.append(f"{where}: errors do not say why ({reason!r}): {errors!r}")
                await pace()
                try:
                    r = await probe(port)
                except Exception as exc:
                    problems.append(f"{where}: the listener on {port} no longer serves: {exc!r}")
                else:
                    if (r.status, r.header("x-config")) != (200, current):
                        problems.append(
                            f"{where}: running config changed: {r.status} "
                            f"X-Config={r.header('x-config')!r}, expected {current!r}"
                        )
                status = await admin_status(s, lb)
                listeners = [{"name": x["name"], "bind": x["bind"]} for x in status["listeners"]]
                if listeners != web:
                    problems.append(f"{where}: /api/status lists {listeners}, expected {web}")
                if status["config"]["hash"] != good_hash:
                    problems.append(f"{where}: the running config hash changed")
                if status["config"]["last_reload_ok"] is not False:
                    problems.append(f"{where}: /api/status says the last reload was ok")
        current = "b" if current == "a" else "a"
        code, body = await admin_reload(s, lb, good[current])
        await pace()
        r = await probe(port)
        if code != 200 or r.header("x-config") != current:
            problems.append(
                f"round {rnd}: a valid reload after the bad ones did not apply: {code} {body} "
                f"X-Config={r.header('x-config')!r}"
            )
        status = await admin_status(s, lb)
        good_hash = status["config"]["hash"]
    return problems
