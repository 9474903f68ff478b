"""Basic auth through the proxy: curl -u against htpasswd-written files (bcrypt, SHA-256 and
SHA-512 crypt), the 401 challenge, the Authorization header kept from backends, the cache,
a flood of wrong passwords that leaves other clients alone, config errors, reloads."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest
from conftest import Client, backends, free_port, lb_yaml, running_lb
from edge_helpers import curl, routes, run

from lb.config import ConfigError, load
from lb.edge import basic_auth, htpasswd


async def htpasswd_file(path: Path, *users: tuple[str, str, str]) -> Path:
    """(flag, user, password) written by Debian's htpasswd: -B bcrypt, -2 / -5 SHA-crypt."""
    for i, (flag, user, password) in enumerate(users):
        await run("htpasswd", "-b" + ("c" if i == 0 else "") + flag, str(path), user, password)
    return path


def basic(path: Path, extra: str = "") -> str:
    return f'basic_auth: {{htpasswd: "{path}", realm: "staff area"{extra}}}'


async def test_curl_users_of_every_hash_kind_and_the_401_challenge(tmp_path: Path) -> None:
    pw = await htpasswd_file(
        tmp_path / "users", ("B", "alice", "s3cret"), ("2", "bob", "pw-two"), ("5", "carol", "pw5")
    )
    log = tmp_path / "access.log"
    async with backends(1) as (be,):
        text = lb_yaml(
            [be.address], port=free_port(), admin_port=free_port(),
            extra_listener=f"    access_log: {{path: {log}}}\n",
            routes=routes(("private", "/", basic(pw))),
        )  # fmt: skip
        async with running_lb(tmp_path, text) as lb:
            for user, password in (("alice", "s3cret"), ("bob", "pw-two"), ("carol", "pw5")):
                ok = await curl(lb.url + "/x", "-u", f"{user}:{password}")
                assert ok.status == 200, user
            assert all(seen.header("authorization") is None for seen in be.seen)
            for args in (("-u", "alice:wrong"), ("-u", "nobody:s3cret"), ()):
                refused = await curl(lb.url + "/x", *args)
                assert refused.status == 401
                assert refused.headers["www-authenticate"] == 'Basic realm="staff area"'
            assert len(be.seen) == 3
            counts = lb.server.runtime.counters["edge_decisions"]
            assert counts[("basic_auth", "private", "allowed")] == 3
            assert counts[("basic_auth", "private", "denied")] == 3
            lines: list[dict[str, object]] = []
            deadline = time.monotonic() + 3
            while len(lines) < 6 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                text = log.read_text() if log.exists() else ""
                lines = [json.loads(x) for x in text.splitlines()]
            assert [x["refused_by"] for x in lines] == [None] * 3 + ["basic_auth"] * 3
            assert [x["status"] for x in lines[3:]] == [401] * 3


@pytest.fixture
def verified(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The passwords the verifier threads check, in order."""
    seen: list[bytes] = []
    real = htpasswd.verify

    def counting(password: bytes, hashed: str) -> bool:
        seen.append(password)
        return real(password, hashed)

    monkeypatch.setattr(basic_auth.htpasswd, "verify", counting)
    return seen


async def test_forward_authorization_and_the_verification_cache(
    tmp_path: Path, verified: list[bytes]
) -> None:
    pw = await htpasswd_file(tmp_path / "users", ("B", "alice", "s3cret"))
    async with backends(1) as (be,):
        text = lb_yaml(
            [be.address], port=free_port(), admin_port=free_port(),
            routes=routes(("private", "/", basic(pw, ", forward_authorization: true"))),
        )  # fmt: skip
        async with running_lb(tmp_path, text) as lb:
            policy = lb.server.runtime.table.by_name["private"].guard.default[0].policy
            client = await Client.connect(lb.port)
            auth = "authorization: Basic YWxpY2U6czNjcmV0\r\n"  # alice:s3cret
            for _ in range(6):
                assert (await client.request(headers=auth)).status == 200
            client.close()
            assert verified == [b"s3cret"]  # once; then the cache answered
            assert len(policy.cache) == 1  # one entry, keyed on a hash: no password in it
            assert all(type(k) is int for k in policy.cache)
            assert [s.header("authorization") for s in be.seen] == ["Basic YWxpY2U6czNjcmV0"] * 6


async def test_many_connections_with_the_same_credentials_share_one_verification(
    tmp_path: Path, verified: list[bytes]
) -> None:
    """A client opening many connections at once (a browser, a pool, wrk) sends the same
    header on each: one bcrypt verification answers them all, none is turned away busy."""
    pw = await htpasswd_file(tmp_path / "users", ("B", "alice", "s3cret"))
    async with backends(1) as (be,):
        text = lb_yaml(
            [be.address], port=free_port(), admin_port=free_port(),
            routes=routes(("private", "/", basic(pw))),
        )  # fmt: skip
        async with running_lb(tmp_path, text) as lb:
            clients = [await Client.connect(lb.port) for _ in range(3 * basic_auth.MAX_PENDING)]
            auth = "authorization: Basic YWxpY2U6czNjcmV0\r\n"  # alice:s3cret
            answers = await asyncio.gather(*(c.request(headers=auth) for c in clients))
            for c in clients:
                c.close()
            assert [r.status for r in answers] == [200] * len(clients)
            assert verified == [b"s3cret"]


async def test_a_flood_of_wrong_passwords_does_not_stall_other_clients(tmp_path: Path) -> None:
    # Cost 10: each wrong password keeps a verification thread busy for tens of milliseconds.
    pw = tmp_path / "users"
    await run("htpasswd", "-cbB", "-C", "10", str(pw), "alice", "s3cret")
    async with backends(1) as (be,):
        text = lb_yaml(
            [be.address], port=free_port(), admin_port=free_port(),
            routes=routes(("private", "/private", basic(pw)), ("open", "/", "")),
        )  # fmt: skip
        async with running_lb(tmp_path, text) as lb:
            stop = asyncio.Event()
            statuses: list[int] = []

            async def flood(i: int) -> None:
                client = await Client.connect(lb.port)
                try:
                    for j in range(200):  # bounded; `stop` ends it sooner
                        if stop.is_set():
                            return
                        # a different wrong password each time: nothing to share a check with
                        wrong = base64.b64encode(f"alice:nope-{i}-{j}".encode()).decode()
                        r = await client.request(
                            path="/private", headers=f"authorization: Basic {wrong}\r\n"
                        )
                        statuses.append(r.status)
                finally:
                    client.close()

            flooders = [asyncio.create_task(flood(i)) for i in range(48)]
            await asyncio.sleep(0.3)  # the flood is under way
            other = await Client.connect(lb.port)
            worst = 0.0
            for _ in range(20):
                t = time.monotonic()
                assert (await other.request(path="/open")).status == 200
                worst = max(worst, time.monotonic() - t)
                await asyncio.sleep(0.02)
            other.close()
            stop.set()
            await asyncio.wait_for(asyncio.gather(*flooders), 30)
            assert worst < 0.5, worst
            assert set(statuses) <= {401, 503} and 401 in statuses
            assert 503 in statuses  # beyond the bounded queue: answered at once
            counts = lb.server.runtime.counters["edge_decisions"]
            assert counts[("basic_auth", "private", "overloaded")] == statuses.count(503)
            assert be.seen and all(s.path == "/open" for s in be.seen)


async def test_a_changed_htpasswd_file_alone_reloads(tmp_path: Path) -> None:
    """No edit of the YAML: the watcher polls the files the config names, and a reload asked
    for by hand is not skipped as "unchanged" either."""
    pw = await htpasswd_file(tmp_path / "users", ("B", "alice", "old-pw"))
    async with backends(1) as (be,):
        text = lb_yaml(
            [be.address], port=free_port(), admin_port=free_port(),
            routes=routes(("private", "/", basic(pw))),
        )  # fmt: skip
        async with running_lb(tmp_path, text, watch_interval=0.1) as lb:
            assert (await curl(lb.url, "-u", "alice:old-pw")).status == 200
            digest = lb.server.runtime.loaded.digest
            await htpasswd_file(pw, ("5", "alice", "new-pw"))  # rewritten in place
            deadline = time.monotonic() + 5
            while lb.server.runtime.loaded.digest == digest and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert lb.server.reloads == {"success": 1, "failure": 0}
            assert (await curl(lb.url, "-u", "alice:old-pw")).status == 401  # cache dropped
            assert (await curl(lb.url, "-u", "alice:new-pw")).status == 200
            await htpasswd_file(pw, ("B", "alice", "third-pw"))
            ok, errors = await lb.server.reload()
            assert ok, errors
            assert (await curl(lb.url, "-u", "alice:third-pw")).status == 200


async def test_config_errors_name_the_file_and_line(tmp_path: Path) -> None:
    md5 = tmp_path / "md5-users"
    await run("htpasswd", "-cbm", str(md5), "alice", "pw")  # Apache's default, MD5
    md5.write_text(md5.read_text() + "garbage line\n")
    config = tmp_path / "lb.yaml"
    config.write_text(
        lb_yaml(
            ["127.0.0.1:1"], port=free_port(), admin_port=free_port(),
            routes=routes(("a", "/a", basic(md5)), ("b", "/", basic(tmp_path / "missing"))),
        )
    )  # fmt: skip
    with pytest.raises(ConfigError) as info:
        load(str(config))
    out = [str(p) for p in info.value.problems]
    assert len(out) == 3, out
    assert all(line.startswith(f"{config}:") for line in out)
    assert "routes[0].basic_auth.htpasswd" in out[0] and f"{md5}:1:" in out[0]
    assert "unsupported hash (apr1)" in out[0] and "htpasswd -B" in out[0]
    assert f"{md5}:2: expected user:hash" in out[1]
    assert "routes[1].basic_auth.htpasswd" in out[2] and "file not found" in out[2]
