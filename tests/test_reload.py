"""Hot reload: SIGHUP, file change, admin POST; bad configs change nothing; nothing drops."""

import asyncio
import os
import signal

import aiohttp
from conftest import Client, backends, free_port, lb_yaml, running_lb
from test_proxy_websocket import ws_backend


def configs(port, admin_port, addrs, ws_addr):
    ws_route = "  - name: ws\n    match: {path: {prefix: /ws}}\n    service: ws\n"
    ws_service = f'  ws:\n    backends: ["{ws_addr}"]\n'
    base = lb_yaml(
        addrs,
        port=port,
        admin_port=admin_port,
        routes=(
            "routes:\n" + ws_route + "  - name: all\n    match: {path: {prefix: /}}\n"
            "    service: app\n"
        ),
    )
    a = base.replace("routes:", ws_service + "routes:", 1)
    b = a.replace(
        "    service: app\n", "    service: app\n    request_headers: {set: {X-Config: b}}\n"
    ).replace(f'      - "{addrs[1]}"', f'      - {{address: "{addrs[1]}", weight: 3}}')
    bad = a.replace("    service: app\n", "    servce: app\n")
    return a, b, bad


async def test_fifty_reloads_under_load_drop_nothing(tmp_path):
    async with backends(2) as bes, ws_backend() as ws_addr:
        port, admin_port = free_port(), free_port()
        a, b, bad = configs(port, admin_port, [x.address for x in bes], ws_addr)
        # Reloads come from the admin API only here, so the counts below are exact.
        async with running_lb(tmp_path, a, watch_interval=3600) as lb, aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"{lb.url}/ws")
            await ws.send_str("before")
            assert await ws.receive_str(timeout=5) == "echo before"
            stop = asyncio.Event()
            failures: list[str] = []
            counts = [0]

            async def load() -> None:
                c = await Client.connect(lb.port)
                try:
                    while not stop.is_set():
                        r = await c.request()
                        if r.status != 200:
                            failures.append(f"status {r.status}")
                        counts[0] += 1
                except Exception as exc:
                    failures.append(repr(exc))
                finally:
                    c.close()

            workers = [asyncio.create_task(load()) for _ in range(64)]
            app = lb.server.runtime.services["app"]
            survivor = app.backends[("127.0.0.1", bes[0].port)]
            results = []
            for i in range(50):
                lb.config_path.write_text((a, b, bad)[i % 3])
                async with s.post(f"{lb.admin}/api/reload") as resp:
                    results.append((resp.status, (await resp.json())["ok"]))
                assert app.backends[("127.0.0.1", bes[0].port)] is survivor
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*workers)
            assert failures == []
            assert counts[0] > 500
            assert results.count((400, False)) == 16 and results.count((200, True)) == 34
            assert lb.server.reloads == {"success": 34, "failure": 16}
            await ws.send_str("after")
            assert await ws.receive_str(timeout=5) == "echo after"
            await ws.close()


async def test_invalid_config_keeps_running_one_and_reports(tmp_path):
    async with backends(1) as bes:
        text = lb_yaml([bes[0].address], port=free_port(), admin_port=free_port())
        async with running_lb(tmp_path, text) as lb, aiohttp.ClientSession() as s:
            lb.config_path.write_text(text.replace("prefix: /", "prefix: nope"))
            async with s.post(f"{lb.admin}/api/reload") as resp:
                body = await resp.json()
            assert resp.status == 400 and not body["ok"]
            assert body["errors"][0].startswith(f"{lb.config_path}:")
            assert 'a path starts with "/"' in body["errors"][0]
            assert not lb.server.last_reload_ok
            c = await Client.connect(lb.port)
            assert (await c.request()).status == 200
            c.close()


async def test_sighup_and_file_watch_trigger_reloads(tmp_path):
    async with backends(2) as bes:
        text = lb_yaml([bes[0].address], port=free_port(), admin_port=free_port())
        async with running_lb(tmp_path, text) as lb:
            app = lb.server.runtime.services["app"]
            lb.config_path.write_text(
                text.replace(
                    f'"{bes[0].address}"', f'"{bes[0].address}"\n      - "{bes[1].address}"'
                )
            )
            os.kill(os.getpid(), signal.SIGHUP)
            for _ in range(50):
                await asyncio.sleep(0.05)
                if len(app.backends) == 2:
                    break
            assert len(app.backends) == 2 and lb.server.reloads["success"] == 1
            lb.config_path.write_text(text)  # the watcher notices within its interval
            for _ in range(60):
                await asyncio.sleep(0.05)
                if len(app.backends) == 1:
                    break
            assert len(app.backends) == 1


async def test_removed_backend_drains_in_flight(tmp_path):
    async def slow(req):
        await asyncio.sleep(0.5)
        from conftest import ok_response

        return ok_response(b"slow done")

    async with backends(1, respond=slow) as bes, backends(1) as other:
        text = lb_yaml([bes[0].address], port=free_port(), admin_port=free_port())
        async with running_lb(tmp_path, text) as lb:
            c = await Client.connect(lb.port)
            pending = asyncio.create_task(c.request())
            await asyncio.sleep(0.1)
            lb.config_path.write_text(text.replace(bes[0].address, other[0].address))
            ok, _ = await lb.server.reload()
            assert ok
            app = lb.server.runtime.services["app"]
            old = next(b for b in app.backends.values() if b.port == bes[0].port)
            assert old.state(0)[0] == "draining"
            r = await pending
            assert r.body == b"slow done"
            assert ("127.0.0.1", bes[0].port) not in app.backends  # dropped at in-flight 0
            c2 = await Client.connect(lb.port)
            assert (await c2.request()).body == f"ok {other[0].port}\n".encode()
            c.close()
            c2.close()


async def test_lb_check_diff_against_running(tmp_path):
    import subprocess
    import sys

    async with backends(2) as bes:
        text = lb_yaml([bes[0].address], port=free_port(), admin_port=free_port())
        async with running_lb(tmp_path, text) as lb:
            new = tmp_path / "new.yaml"
            new.write_text(
                text.replace(
                    f'"{bes[0].address}"', f'"{bes[0].address}"\n      - "{bes[1].address}"'
                )
                + "  - name: extra\n    match: {path: {prefix: /x}}\n    service: app\n"
            )

            def check(path):
                return subprocess.run(
                    [sys.executable, "-m", "lb", "check", "-c", str(path), "--diff"],
                    capture_output=True,
                    text=True,
                    timeout=60,
                )

            r = await asyncio.to_thread(check, new)
            assert r.returncode == 0, r.stdout + r.stderr
            assert "+ route extra" in r.stdout
            assert "~ service app: backends" in r.stdout
            r = await asyncio.to_thread(check, lb.config_path)
            assert "no changes against the running lb" in r.stdout
