"""mode: tcp listeners: bytes both ways, half-close, back-pressure, idle timeout, retries on
connect failure, caps, least connections, metrics and access log, reload and drain."""

import asyncio
import hashlib
import os
import socket
import time

import aiohttp
from conftest import Client, backends, free_port, running_lb
from tcp_util import (
    closed_by_peer,
    connect,
    echo,
    listener,
    log_lines,
    roundtrip,
    sample,
    scrape,
    servers,
    service,
    tagged,
    tcp_config,
    until,
)

from lb.config import load
from lb.server import Server


def dead_address() -> str:
    """An address nothing listens on: connecting to it is refused."""
    return f"127.0.0.1:{free_port()}"


async def test_echo_through_lb(tmp_path):
    async with servers(echo) as bes:
        port, admin = free_port(), free_port()
        text = tcp_config(admin, listener("db", port), service("app", [bes[0].address]))
        async with running_lb(tmp_path, text) as lb:
            r, w = await connect(port)
            for i in range(5):
                w.write(b"line %d\n" % i)
                assert await asyncio.wait_for(r.readline(), 5) == b"line %d\n" % i
            w.close()
            status = lb.server.runtime.listeners["db"]
            await until(lambda: not status.connections)


async def test_large_transfer_both_ways_with_back_pressure(tmp_path):
    """16 MiB out and back through lb, the client not reading for a while: lb stops reading
    the backend while the client's side is full instead of buffering, its own buffers stay
    small, and every byte arrives in order."""
    async with servers(echo) as bes:
        port, admin = free_port(), free_port()
        text = tcp_config(admin, listener("db", port), service("app", [bes[0].address]))
        async with running_lb(tmp_path, text) as lb:
            payload = os.urandom(16 << 20)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)  # fills up soon
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            r, w = await asyncio.open_connection(sock=sock)

            async def send() -> None:
                for i in range(0, len(payload), 1 << 20):
                    w.write(payload[i : i + (1 << 20)])
                    await w.drain()
                w.write_eof()

            sender = asyncio.create_task(send())
            await until(lambda: lb.server.runtime.listeners["db"].connections)
            conn = next(iter(lb.server.runtime.listeners["db"].connections))
            seen = {"paused": False, "held": 0}

            async def watch() -> None:
                while True:
                    if conn.upstream is not None:
                        seen["paused"] |= conn.upstream.peer_paused
                        held = conn.client.transport.get_write_buffer_size()
                        held += conn.upstream.transport.get_write_buffer_size()
                        seen["held"] = max(seen["held"], held)
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(0.5)  # nobody reads the echo meanwhile
            digest = hashlib.sha256()
            got = 0
            async with asyncio.timeout(30):
                while chunk := await r.read(1 << 20):
                    digest.update(chunk)
                    got += len(chunk)
            await sender
            watcher.cancel()
            assert got == len(payload)
            assert digest.digest() == hashlib.sha256(payload).digest()
            assert conn.bytes_in == conn.bytes_out == len(payload)
            assert seen["paused"], "lb never stopped reading the backend"
            assert seen["held"] < 2 << 20, f"lb buffered {seen['held']} bytes"
            w.close()


async def test_half_close_is_passed_on_both_ways(tmp_path):
    async def count_then_answer(server, r, w):  # reads to EOF, then answers and closes
        data = await r.read()
        w.write(b"got %d bytes" % len(data))
        await w.drain()

    async def banner_first(server, r, w):  # says its piece, half-closes, still listens
        w.write(b"banner")
        w.write_eof()
        server.received.append(await r.read())

    async with servers(count_then_answer, banner_first) as (counter, banner):
        port, port2, admin = free_port(), free_port(), free_port()
        listeners = listener("a", port) + listener("b", port2, "    service: banner\n")
        services = service("app", [counter.address]) + service("banner", [banner.address])
        async with running_lb(tmp_path, tcp_config(admin, listeners, services)):
            r, w = await connect(port)
            w.write(b"x" * 1000)
            w.write_eof()  # the backend answers only once it has seen the end
            assert await asyncio.wait_for(r.read(), 5) == b"got 1000 bytes"
            w.close()

            r, w = await connect(port2)
            assert await asyncio.wait_for(r.read(), 5) == b"banner"  # then EOF
            w.write(b"still here")  # the other direction stays open
            w.write_eof()
            await until(lambda: banner.received == [b"still here"])
            w.close()


async def test_idle_timeout_closes_both_sides_and_traffic_keeps_it_open(tmp_path):
    async with servers(echo) as bes:
        port, admin = free_port(), free_port()
        body = "    service: app\n    timeouts: {idle: 300ms}\n"
        text = tcp_config(admin, listener("db", port, body), service("app", [bes[0].address]))
        async with running_lb(tmp_path, text):
            r, w = await connect(port)
            for _ in range(6):  # 0.6 s of traffic, twice the idle timeout
                await asyncio.sleep(0.1)
                w.write(b"k")
                assert await asyncio.wait_for(r.readexactly(1), 5) == b"k"
            t0 = time.monotonic()  # the last byte went through lb just before this
            assert await closed_by_peer(r, 3)
            assert 0.25 < time.monotonic() - t0 < 1.5
            await until(lambda: bes[0].open == 0)  # the backend side is closed too
            m = await scrape(admin)
            assert sample(m, "lb_tcp_terminations_total", listener="db", reason="idle-timeout") == 1
            w.close()


async def test_refused_backend_moves_on_to_the_next(tmp_path):
    async with servers(echo) as bes:
        port, admin = free_port(), free_port()
        dead = dead_address()
        text = tcp_config(admin, listener("db", port), service("app", [dead, bes[0].address]))
        async with running_lb(tmp_path, text):
            for _ in range(6):
                await roundtrip(port)
            m = await scrape(admin)
            assert sample(m, "lb_tcp_connect_failures_total", service="app") >= 1
            kind = {"service": "app", "backend": dead, "kind": "connect-failure"}
            assert sample(m, "lb_backend_failures_total", **kind) >= 1
            assert bes[0].accepted == 6


async def test_connect_timeout_moves_on_to_the_next(tmp_path):
    """A backend whose accept queue is full drops SYNs: the connect times out."""
    black = socket.socket()
    black.bind(("127.0.0.1", 0))
    black.listen(0)
    fillers = []
    for _ in range(3):  # fill the accept queue; later SYNs go unanswered
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(black.getsockname())
        fillers.append(s)
    await asyncio.sleep(0.1)
    hole = f"127.0.0.1:{black.getsockname()[1]}"
    try:
        async with servers(echo) as bes:
            port, admin = free_port(), free_port()
            svc = service("app", [hole, bes[0].address], "    timeouts: {connect: 200ms}\n")
            async with running_lb(tmp_path, tcp_config(admin, listener("db", port), svc)):
                for _ in range(4):
                    await roundtrip(port)
                m = await scrape(admin)
                kind = {"service": "app", "backend": hole, "kind": "connect-timeout"}
                assert sample(m, "lb_backend_failures_total", **kind) >= 1
    finally:
        for s in (*fillers, black):
            s.close()


async def test_all_backends_down_closes_the_client(tmp_path):
    port, admin = free_port(), free_port()
    backends = [dead_address() for _ in range(4)]
    text = tcp_config(admin, listener("db", port), service("app", backends))
    async with running_lb(tmp_path, text):
        r, w = await connect(port)
        w.write(b"anyone?")
        assert await closed_by_peer(r, 3)
        w.close()
        m = await scrape(admin)
        assert sample(m, "lb_tcp_connect_failures_total", service="app") == 3  # TRIES
        reason = {"listener": "db", "reason": "connect-failure"}
        assert sample(m, "lb_tcp_terminations_total", **reason) == 1
    text = tcp_config(admin, listener("db", port), service("app", []))
    async with running_lb(tmp_path, text):
        r, w = await connect(port)
        assert await closed_by_peer(r, 3)
        w.close()


async def test_max_connections_caps_the_service(tmp_path):
    async with servers(echo) as bes:
        port, admin = free_port(), free_port()
        svc = service("app", [bes[0].address], "    circuit_breaker: {max_connections: 2}\n")
        async with running_lb(tmp_path, tcp_config(admin, listener("db", port), svc)):
            held = [await connect(port) for _ in range(2)]
            for r, w in held:
                w.write(b"up")
                assert await asyncio.wait_for(r.readexactly(2), 5) == b"up"
            r, w = await connect(port)
            assert await closed_by_peer(r, 3)  # the third is over the cap
            w.close()
            held.pop()[1].close()
            await until(lambda: bes[0].open == 1)
            await roundtrip(port)  # room again
            m = await scrape(admin)
            assert sample(m, "lb_cap_overflows_total", service="app", cap="connections") == 1
            for _, w in held:
                w.close()
            await until(lambda: bes[0].open == 0)

            async def one() -> bool:  # a burst: accepted together, admitted one by one
                r, w = await connect(port)
                try:
                    w.write(b"?")
                    await asyncio.wait_for(r.readexactly(1), 2)
                    await asyncio.sleep(0.3)  # hold it while the others try
                    return True
                except (asyncio.IncompleteReadError, ConnectionError):
                    return False
                finally:
                    w.close()

            results = await asyncio.gather(*(one() for _ in range(6)))
            assert results.count(True) == 2, results


async def test_least_connections_spreads_long_lived_connections(tmp_path):
    async with servers(echo, echo, echo) as bes:
        port, admin = free_port(), free_port()
        text = tcp_config(admin, listener("db", port), service("app", [b.address for b in bes]))
        async with running_lb(tmp_path, text):
            held = []
            for _ in range(9):
                r, w = await connect(port)
                w.write(b"?")
                await asyncio.wait_for(r.readexactly(1), 5)
                held.append(w)
            assert [b.open for b in bes] == [3, 3, 3]
            for w in held[:3]:  # close three; wherever they were, new ones fill the gaps
                w.close()
            await until(lambda: sum(b.open for b in bes) == 6)
            before = [b.open for b in bes]
            for _ in range(3):
                r, w = await connect(port)
                w.write(b"?")
                await asyncio.wait_for(r.readexactly(1), 5)
                held.append(w)
            assert [b.open for b in bes] == [3, 3, 3], before
            for w in held:
                w.close()


async def test_metrics_and_access_log_line(tmp_path):
    log = tmp_path / "tcp.log"
    async with servers(tagged(b"hi!")) as bes:
        port, admin = free_port(), free_port()
        body = f'    service: app\n    access_log: {{path: "{log}"}}\n'
        text = tcp_config(admin, listener("db", port, body), service("app", [bes[0].address]))
        async with running_lb(tmp_path, text):
            r, w = await connect(port)
            w.write(b"12345")
            assert await asyncio.wait_for(r.readexactly(8), 5) == b"hi!12345"
            m = await scrape(admin)
            assert sample(m, "lb_tcp_active_connections", listener="db") == 1
            local_port = w.get_extra_info("sockname")[1]
            w.close()
            (line,) = await log_lines(log, 1)
            m = await scrape(admin)
    labels = {"listener": "db", "service": "app", "backend": bes[0].address}
    assert sample(m, "lb_tcp_connections_total", **labels) == 1
    assert sample(m, "lb_tcp_bytes_total", listener="db", direction="in") == 5
    assert sample(m, "lb_tcp_bytes_total", listener="db", direction="out") == 8
    assert sample(m, "lb_tcp_active_connections", listener="db") == 0
    assert line["listener"] == "db" and line["protocol"] == "tcp"
    assert line["client"] == f"127.0.0.1:{local_port}"
    assert line["service"] == "app" and line["backend"] == bes[0].address
    assert (line["bytes_in"], line["bytes_out"]) == (5, 8)
    assert line["termination"] == "done" and line["retries"] == 0
    assert line["duration_ms"] > 0 and line["connect_ms"] >= 0
    assert line["sni"] is None and line["timestamp"].endswith("Z")


async def reload(admin_port: int) -> dict:
    url = f"http://127.0.0.1:{admin_port}/api/reload"
    async with aiohttp.ClientSession() as s, s.post(url) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return body


async def test_reload_changes_the_service_for_new_connections_only(tmp_path):
    async with servers(tagged(b"A"), tagged(b"B")) as (a, b):
        port, port2, admin = free_port(), free_port(), free_port()
        services = service("a", [a.address]) + service("b", [b.address])
        two = listener("db", port, "    service: a\n") + listener("x", port2, "    service: a\n")
        async with running_lb(tmp_path, tcp_config(admin, two, services)) as lb:
            r, w = await connect(port)
            assert await asyncio.wait_for(r.readexactly(1), 5) == b"A"
            r2, w2 = await connect(port2)
            assert await asyncio.wait_for(r2.readexactly(1), 5) == b"A"
            # db now goes to b; x is removed
            lb.write_config(tcp_config(admin, listener("db", port, "    service: b\n"), services))
            await reload(admin)
            assert await roundtrip(port, prefix=1) == b"B"
            with_refusal = False
            try:
                await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port2), 2)
            except OSError:
                with_refusal = True
            assert with_refusal, "a removed listener stops accepting"
            for rr, ww in ((r, w), (r2, w2)):  # both connections opened before carry on
                ww.write(b"still")
                assert await asyncio.wait_for(rr.readexactly(5), 5) == b"still"
                ww.close()
            assert len(lb.server.retired) == 1
            await until(lambda: a.open == 0)


async def test_drain_at_shutdown_leaves_established_connections_until_it_expires(tmp_path):
    async with servers(echo) as bes:
        port, admin = free_port(), free_port()
        body = "    service: app\n    timeouts: {drain: 1s}\n"
        path = tmp_path / "lb.yaml"
        path.write_text(
            tcp_config(admin, listener("db", port, body), service("app", [bes[0].address]))
        )
        server = Server(str(path), load(str(path)))
        await server.start()
        stopping = None
        try:
            r, w = await connect(port)
            w.write(b"a")
            assert await asyncio.wait_for(r.readexactly(1), 5) == b"a"
            t0 = time.monotonic()
            stopping = asyncio.create_task(server.shutdown())
            await asyncio.sleep(0.4)
            w.write(b"during the drain")  # the established connection still works
            assert await asyncio.wait_for(r.readexactly(16), 5) == b"during the drain"
            try:
                await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
                accepting = True
            except OSError:
                accepting = False
            assert not accepting, "no new connections while draining"
            assert await closed_by_peer(r, 3)  # cut when the drain is over
            await asyncio.wait_for(stopping, 3)
            assert 0.9 < time.monotonic() - t0 < 2.5
            w.close()
        finally:
            if stopping is None:
                await server.shutdown()
            else:
                await stopping


async def test_tcp_listener_beside_an_http_one(tmp_path):
    """One config, both modes; the HTTP listener is unaffected."""
    async with servers(echo) as bes, backends(1) as (site,):
        port, web, admin = free_port(), free_port(), free_port()
        listeners = listener("db", port) + f'  - name: web\n    bind: "127.0.0.1:{web}"\n'
        services = service("app", [bes[0].address]) + service("site", [site.address])
        routes = "routes:\n  - name: all\n    service: site\n"
        async with running_lb(tmp_path, tcp_config(admin, listeners, services, routes)):
            await roundtrip(port)
            async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{web}/") as resp:
                assert resp.status == 200 and await resp.text() == f"ok {site.port}\n"


async def test_tcp_health_check_takes_a_dead_backend_out(tmp_path):
    async with servers(echo) as bes:
        port, admin = free_port(), free_port()
        dead = dead_address()
        check = "    health_check: {type: tcp, interval: 50ms, timeout: 200ms, fall: 1, rise: 1}\n"
        text = tcp_config(
            admin, listener("db", port), service("app", [dead, bes[0].address], check)
        )
        async with running_lb(tmp_path, text) as lb:
            svc = lb.server.runtime.services["app"]
            down = svc.backends[tuple_address(dead)]
            await until(lambda: not down.check_ok)
            assert down.check_reason == "active-check-failed: connection refused"
            up = svc.backends[tuple_address(bes[0].address)]
            await until(lambda: up.checker.reason == "active-check-passed: connected")
            before = sample(await scrape(admin), "lb_tcp_connect_failures_total", service="app")
            for _ in range(5):
                await roundtrip(port)
            after = sample(await scrape(admin), "lb_tcp_connect_failures_total", service="app")
            assert after == before  # nothing was sent to the backend that is down


def tuple_address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


async def test_reload_switches_a_listener_between_http_and_tcp(tmp_path):
    async with servers(echo) as bes, backends(1) as (site,):
        port, admin = free_port(), free_port()
        services = service("app", [bes[0].address]) + service("site", [site.address])
        routes = "routes:\n  - name: all\n    service: site\n"
        http = f'  - name: web\n    bind: "127.0.0.1:{port}"\n'
        tcp = listener("web", port)
        async with running_lb(tmp_path, tcp_config(admin, http, services, routes)) as lb:
            keep = await Client.connect(port)
            assert (await keep.request()).status == 200
            lb.write_config(tcp_config(admin, tcp, services, routes))
            await reload(admin)
            await roundtrip(port, b"now bytes")  # new connections: tcp
            assert (await keep.request()).status == 200  # the HTTP one carries on
            r, w = await connect(port)
            lb.write_config(tcp_config(admin, http, services, routes))
            await reload(admin)
            fresh = await Client.connect(port)
            assert (await fresh.request()).status == 200  # http again
            w.write(b"still tcp")
            assert await asyncio.wait_for(r.readexactly(9), 5) == b"still tcp"
            for c in (keep, fresh):
                c.close()
            w.close()
