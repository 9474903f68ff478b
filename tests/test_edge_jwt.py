"""JWT through the proxy: tokens signed in the test with real keys (RSA, EC P-256, Ed25519,
HMAC), from a JWKS file, a secret file and a JWKS URL (rotation, a failing refresh), the
RFC 6750 challenges, claims copied into headers (and not forgeable), a listener-level policy
whose claims routes match on, the verification cache and config errors."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from conftest import Client, backends, free_port, lb_yaml, running_lb, serve_app
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from edge_helpers import curl, routes
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from lb.config import ConfigError, load
from lb.edge import jwt_auth

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
ED_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SECRET = b"an HMAC secret of at least 32 bytes, for HS256"


def jwk(kid: str, key: Any) -> dict[str, Any]:
    pub = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        out = RSAAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        out = ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        out = OKPAlgorithm.to_jwk(pub, as_dict=True)
    return {**out, "kid": kid, "use": "sig"}


def token(key: Any, alg: str, kid: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "https://issuer.test", "aud": "lb", "sub": "u1", "exp": now + 600, **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def bearer(tok: str) -> str:
    return f"authorization: Bearer {tok}\r\n"


JWT_OPTS = (
    'issuer: "https://issuer.test", audiences: [lb], '
    "claims_to_headers: {sub: x-user, org.id: x-org}"
)


async def test_signatures_claims_and_the_challenges(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk("r", RSA_KEY), jwk("e", EC_KEY), jwk("d", ED_KEY)]}))
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET + b"\n")
    rts = routes(
        ("asym", "/asym", f'jwt: {{jwks_file: "{jwks}", {JWT_OPTS}, cookie: session}}'),
        ("hmac", "/hmac", f'jwt: {{secret_file: "{secret}", algorithms: [HS256], {JWT_OPTS}}}'),
    )
    async with backends(1) as (be,):
        text = lb_yaml([be.address], port=free_port(), admin_port=free_port(), routes=rts)
        async with running_lb(tmp_path, text) as lb:
            c = await Client.connect(lb.port)
            forged = "x-user: admin\r\n"
            good = [
                ("/asym", token(RSA_KEY, "RS256", "r", org={"id": 7})),
                ("/asym", token(EC_KEY, "ES256", "e")),
                ("/asym", token(ED_KEY, "EdDSA", "d")),
                ("/asym", token(EC_KEY, "ES256")),  # no kid: every key of its algorithm
                ("/hmac", token(SECRET, "HS256")),
            ]
            for path, tok in good:
                r = await c.request(path=path, headers=forged + bearer(tok))
                assert r.status == 200, (path, r.body)
            assert [s.header("x-user") for s in be.seen] == ["u1"] * 5
            assert [s.header("x-org") for s in be.seen] == ["7", None, None, None, None]
            assert all(len([h for h in s.headers if h[0] == "x-user"]) == 1 for s in be.seen)
            assert be.seen[0].header("authorization") is not None  # forward_token by default
            r = await c.request(path="/asym", headers=f"cookie: a=1; session={good[0][1]}\r\n")
            assert r.status == 200
            now = int(time.time())
            bad = {
                "the token has expired": token(RSA_KEY, "RS256", "r", exp=now - 120),
                "the token is not valid yet": token(RSA_KEY, "RS256", "r", nbf=now + 600),
                "wrong audience": token(RSA_KEY, "RS256", "r", aud="other"),
                "wrong issuer": token(RSA_KEY, "RS256", "r", iss="https://evil.test"),
                "bad signature": token(OTHER_RSA, "RS256", "r"),
                "unknown key id": token(OTHER_RSA, "RS256", "nope"),
                "algorithm not allowed": token(SECRET, "HS256", "r"),
                "malformed token": "not.a.token",
            }
            for reason, tok in bad.items():
                r = await c.request(path="/asym", headers=bearer(tok))
                assert r.status == 401, reason
                assert r.header("www-authenticate") == (
                    f'Bearer realm="lb", error="invalid_token", error_description="{reason}"'
                )
            # within the skew (30s by default), an expired token still passes
            r = await c.request(path="/asym", headers=bearer(token(EC_KEY, "ES256", exp=now - 5)))
            assert r.status == 200
            missing = await c.request(path="/asym", headers="authorization: Basic eDp5\r\n")
            assert missing.status == 401
            assert missing.header("www-authenticate") == 'Bearer realm="lb"'
            c.close()
            counts = lb.server.runtime.counters["edge_decisions"]
            assert counts[("jwt", "asym", "denied")] == len(bad) + 1
            assert counts[("jwt", "hmac", "allowed")] == 1
            curled = await curl(lb.url + "/hmac", "-H", f"Authorization: Bearer {good[0][1]}")
            assert curled.status == 401
            assert "error_description" in curled.headers["www-authenticate"]


async def test_repeated_tokens_are_verified_once_and_forward_token_false(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk("r", RSA_KEY)]}))
    calls: list[str] = []
    real = jwt_auth.jwt.decode

    def counting(*args: Any, **kw: Any) -> Any:
        calls.append("decode")
        return real(*args, **kw)

    monkeypatch.setattr(jwt_auth.jwt, "decode", counting)
    rts = routes(("api", "/", f'jwt: {{jwks_file: "{jwks}", forward_token: false}}'))
    async with backends(1) as (be,):
        text = lb_yaml([be.address], port=free_port(), admin_port=free_port(), routes=rts)
        async with running_lb(tmp_path, text) as lb:
            c = await Client.connect(lb.port)
            tok = token(RSA_KEY, "RS256", "r")
            for _ in range(5):
                assert (await c.request(headers=bearer(tok))).status == 200
            c.close()
            assert calls == ["decode"]
            assert all(s.header("authorization") is None for s in be.seen)


@asynccontextmanager
async def jwks_server(state: dict[str, Any]) -> AsyncIterator[str]:
    """Serves state["jwks"], or answers state["status"] when it is set."""

    async def handler(request: web.Request) -> web.Response:
        state["fetches"] = state.get("fetches", 0) + 1
        if state.get("status"):
            return web.Response(status=state["status"])
        return web.json_response(state["jwks"])

    app = web.Application()
    app.router.add_get("/jwks", handler)
    async with serve_app(app) as address:
        yield f"http://{address}/jwks"


async def until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not reached in time"
        await asyncio.sleep(0.05)


async def test_jwks_url_rotation_and_a_failing_refresh_keeps_the_last_good_set(
    tmp_path: Path,
) -> None:
    state: dict[str, Any] = {"jwks": {"keys": [jwk("k1", RSA_KEY)]}}
    async with jwks_server(state) as url, backends(1) as (be,):
        rts = routes(("api", "/", f'jwt: {{jwks_url: "{url}", jwks_refresh: 200ms}}'))
        text = lb_yaml([be.address], port=free_port(), admin_port=free_port(), routes=rts)
        async with running_lb(tmp_path, text) as lb:
            c = await Client.connect(lb.port)
            old, new = token(RSA_KEY, "RS256", "k1"), token(EC_KEY, "ES256", "k2")

            async def status(tok: str) -> int:
                return (await c.request(headers=bearer(tok))).status

            assert await status(old) == 200  # waited for the first fetch
            assert await status(new) == 401
            state["jwks"] = {"keys": [jwk("k2", EC_KEY)]}  # rotated: k1 gone
            await until(lambda: _is(status(new), 200))
            assert await status(old) == 401  # no longer passes, even though it was cached
            state["status"] = 500
            fetched = state["fetches"]
            await until(lambda: _fetched_more(state, fetched + 2))
            assert await status(new) == 200  # the last good set is kept
            c.close()


async def _is(pending: Any, value: int) -> bool:
    return bool(await pending == value)


async def _fetched_more(state: dict[str, Any], n: int) -> bool:
    return bool(state["fetches"] >= n)


async def test_a_listener_jwt_runs_before_routing_so_routes_match_claims(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk("r", RSA_KEY)]}))
    listener = f'    jwt: {{jwks_file: "{jwks}", claims_to_headers: {{role: x-role}}}}\n'
    rts = (
        "routes:\n"
        "  - name: admin\n"
        "    priority: 10\n"
        "    match: {path: {prefix: /}, headers: [{name: x-role, exact: admin}]}\n"
        "    respond: {status: 200, body: admin-area}\n"
        "  - name: users\n"
        "    match: {path: {prefix: /users}}\n"
        "    service: app\n"
    )
    async with backends(1) as (be,):
        text = lb_yaml(
            [be.address], port=free_port(), admin_port=free_port(),
            extra_listener=listener, routes=rts,
        )  # fmt: skip
        async with running_lb(tmp_path, text) as lb:
            c = await Client.connect(lb.port)
            admin = bearer(token(RSA_KEY, "RS256", "r", role="admin"))
            user = bearer(token(RSA_KEY, "RS256", "r", role="user"))
            forged = "x-role: admin\r\n"
            r = await c.request(path="/users/1", headers=admin)
            assert (r.status, r.body) == (200, b"admin-area")  # rerouted on the claim
            r = await c.request(path="/elsewhere", headers=admin)  # matched no route at first
            assert (r.status, r.body) == (200, b"admin-area")
            r = await c.request(path="/users/1", headers=forged + user)
            assert r.status == 200 and r.body.startswith(b"ok")  # the forged header is gone
            assert be.seen[-1].header("x-role") == "user"
            assert (await c.request(path="/elsewhere", headers=forged + user)).status == 404
            r = await c.request(path="/elsewhere", headers=forged)  # no token: 401
            assert r.status == 401 and r.header("www-authenticate") == 'Bearer realm="lb"'
            r = await c.request(path="/elsewhere")  # no route either: 401, not 404
            assert r.status == 401
            c.close()
            counts = lb.server.runtime.counters["edge_decisions"]
            assert counts[("jwt", "admin", "denied")] == 1  # the route matched so far
            assert counts[("jwt", "", "denied")] == 1


def test_config_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"keys": []}')
    short = tmp_path / "short"
    short.write_bytes(b"too short")
    config = tmp_path / "lb.yaml"
    config.write_text(
        lb_yaml(
            ["127.0.0.1:1"], port=free_port(), admin_port=free_port(),
            routes=routes(
                ("a", "/a", f'jwt: {{jwks_file: "{tmp_path}/missing.json"}}'),
                ("b", "/b", f'jwt: {{jwks_file: "{bad_json}"}}'),
                ("c", "/c", f'jwt: {{secret_file: "{short}", algorithms: [HS256]}}'),
                ("d", "/d", f'jwt: {{jwks_file: "{bad_json}", secret_file: "{short}"}}'),
                ("e", "/", 'jwt: {jwks_url: "ftp://x", claims_to_headers: {sub: host}}'),
            ),
        )
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load(str(config))
    out = "\n".join(str(p) for p in info.value.problems)
    assert all(line.startswith(f"{config}:") for line in out.splitlines()), out
    assert "routes[0].jwt.jwks_file: file not found" in out
    assert "routes[1].jwt.jwks_file" in out and "no usable signing key" in out
    assert "routes[2].jwt.secret_file: an HS256 secret needs at least 32 bytes" in out
    assert "routes[3].jwt: a jwt policy needs exactly one of" in out
    assert "routes[4].jwt.jwks_url: expected an http:// or https:// URL" in out
    assert '"host" is set by lb itself' in out
