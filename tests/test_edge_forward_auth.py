"""Forward auth through the proxy, against a real auth service (aiohttp): what the subrequest
carries, 2xx admitting with copied headers, refusals passed on as they are (a 302 to a login
page), timeouts and an unreachable service under both `on_error`s, keep-alive, the cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import Client, backends, free_port, lb_yaml, running_lb, serve_app
from edge_helpers import curl, routes

from lb.config import ConfigError, load


@asynccontextmanager
async def auth_service() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Answers by the Authorization header: "Bearer good" 200 (X-Auth-User: alice), "Bearer
    slow" after a second, "Bearer deny" 403, none 302 to /login."""
    state: dict[str, Any] = {"seen": [], "transports": set()}

    async def check(request: web.Request) -> web.Response:
        state["seen"].append(request.headers.copy())
        state["transports"].add(id(request.transport))
        auth = request.headers.get("Authorization", "")
        if auth == "Bearer good":
            return web.Response(text="", headers={"X-Auth-User": "alice", "X-Other": "no"})
        if auth == "Bearer slow":
            await asyncio.sleep(1.0)
            return web.Response(text="late")
        if auth == "Bearer deny":
            return web.Response(status=403, text="nope\n", headers={"X-Reason": "banned"})
        return web.Response(status=302, text="go log in\n", headers={"Location": "/login"})

    app = web.Application()
    app.router.add_get("/check", check)
    async with serve_app(app) as address:
        yield f"http://{address}/check", state


def fwd(url: str, extra: str = "") -> str:
    return f'forward_auth: {{url: "{url}", response_headers: [x-auth-user], timeout: 200ms{extra}}}'


async def test_a_2xx_admits_with_the_chosen_headers_and_refusals_pass_as_they_are(
    tmp_path: Path,
) -> None:
    async with auth_service() as (url, state), backends(1) as (be,):
        text = lb_yaml(
            [be.address], port=free_port(), admin_port=free_port(),
            routes=routes(("api", "/", fwd(url))),
        )  # fmt: skip
        async with running_lb(tmp_path, text) as lb:
            c = await Client.connect(lb.port)
            forged = "x-auth-user: root\r\nx-secret: s\r\n"
            for _ in range(3):
                r = await c.request(
                    "POST", "/items?q=1", headers=forged + "authorization: Bearer good\r\n",
                    body=b"data",
                )  # fmt: skip
                assert r.status == 200
            assert [s.header("x-auth-user") for s in be.seen] == ["alice"] * 3
            assert all(s.header("x-other") is None and s.body == b"data" for s in be.seen)
            sub = state["seen"][0]
            assert sub["Authorization"] == "Bearer good"
            assert "X-Secret" not in sub and "X-Auth-User" not in sub
            assert sub["X-Forwarded-Method"] == "POST"
            assert sub["X-Forwarded-Uri"] == "/items?q=1"
            assert sub["X-Forwarded-Host"] == "test"
            assert sub["X-Forwarded-Proto"] == "http"
            assert sub["X-Forwarded-For"] == "127.0.0.1"
            assert len(state["transports"]) == 1  # kept alive
            r = await c.request(headers="authorization: Bearer deny\r\n")
            assert (r.status, r.body, r.header("x-reason")) == (403, b"nope\n", "banned")
            c.close()
            login = await curl(lb.url + "/page")
            assert login.status == 302 and login.headers["location"] == "/login"
            assert login.body == b"go log in\n"
            assert len(be.seen) == 3
            counts = lb.server.runtime.counters["edge_decisions"]
            assert counts[("forward_auth", "api", "allowed")] == 3
            assert counts[("forward_auth", "api", "denied")] == 2


async def test_timeouts_and_an_unreachable_service_follow_on_error(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/check"
    async with auth_service() as (url, _), backends(1) as (be,):
        text = lb_yaml(
            [be.address], port=free_port(), admin_port=free_port(),
            routes=routes(
                ("deny", "/deny", fwd(url)),
                ("allow", "/allow", fwd(url, ", on_error: allow")),
                ("down", "/down", fwd(closed)),
            ),
        )  # fmt: skip
        async with running_lb(tmp_path, text) as lb:
            c = await Client.connect(lb.port)
            slow = "authorization: Bearer slow\r\nx-auth-user: forged\r\n"
            r = await c.request(path="/deny", headers=slow)
            assert r.status == 503
            r = await c.request(path="/allow", headers=slow)
            assert r.status == 200
            assert be.seen[-1].header("x-auth-user") is None  # let in, with nothing forged
            r = await c.request(path="/down", headers="authorization: Bearer good\r\n")
            assert r.status == 503
            c.close()
            errors = lb.server.runtime.counters["forward_auth_errors"]
            assert errors[("deny", "timeout")] == 1
            assert errors[("allow", "timeout")] == 1
            assert errors[("down", "unreachable")] == 1
            counts = lb.server.runtime.counters["edge_decisions"]
            assert counts[("forward_auth", "deny", "error")] == 1
            assert counts[("forward_auth", "down", "error")] == 1


async def test_2xx_answers_are_cached_on_the_cache_key(tmp_path: Path) -> None:
    async with auth_service() as (url, state), backends(1) as (be,):
        text = lb_yaml(
            [be.address], port=free_port(), admin_port=free_port(),
            routes=routes(("api", "/", fwd(url, ", cache: 1m"))),
        )  # fmt: skip
        async with running_lb(tmp_path, text) as lb:
            c = await Client.connect(lb.port)
            for _ in range(4):
                r = await c.request(headers="authorization: Bearer good\r\n")
                assert r.status == 200
            assert (await c.request(headers="authorization: Bearer deny\r\n")).status == 403
            assert (await c.request(headers="authorization: Bearer deny\r\n")).status == 403
            c.close()
            assert len(state["seen"]) == 3  # one 2xx remembered; refusals asked each time
            assert [s.header("x-auth-user") for s in be.seen] == ["alice"] * 4


def test_config_errors_name_the_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text(
        lb_yaml(
            ["127.0.0.1:1"], port=free_port(), admin_port=free_port(),
            routes=routes(
                ("a", "/", 'forward_auth: {url: "https://auth/x", response_headers: [host]}'),
            ),
        )
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load(str(config))
    out = [str(p) for p in info.value.problems]
    assert len(out) == 2 and all(line.startswith(f"{config}:") for line in out), out
    assert "routes[0].forward_auth.url: expected an http://host[:port]/path URL" in out[0]
    assert 'routes[0].forward_auth.response_headers: "host" is set by lb itself' in out[1]
