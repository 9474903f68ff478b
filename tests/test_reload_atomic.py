"""Reloads are atomic: what can fail (sockets, certificates, log files) is prepared before
anything running changes; a failure changes nothing, and the status says so truthfully."""

import socket
import ssl
from pathlib import Path

import aiohttp
import trustme
from conftest import LB, Client, backends, free_port, lb_yaml, running_lb

MARK = "    response_headers: {set: {X-Config: new}}\n"


def busy_port() -> tuple[socket.socket, int]:
    """A port something else listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    return s, s.getsockname()[1]


async def reload(lb: LB, text: str) -> tuple[int, dict]:
    lb.write_config(text)
    async with aiohttp.ClientSession() as s, s.post(f"{lb.admin}/api/reload") as r:
        return r.status, await r.json()


async def status(lb: LB) -> dict:
    async with aiohttp.ClientSession() as s, s.get(f"{lb.admin}/api/status") as r:
        return await r.json()


async def served_by_running_config(port: int) -> bool:
    """A request on `port` answers 200 from the config before the failed reload."""
    c = await Client.connect(port)
    try:
        r = await c.request()
        return r.status == 200 and r.header("x-config") is None
    finally:
        c.close()


async def test_moving_a_listener_to_a_busy_port_changes_nothing(tmp_path: Path) -> None:
    holder, taken = busy_port()
    async with backends(1) as bes:
        port, admin = free_port(), free_port()
        text = lb_yaml([bes[0].address], port=port, admin_port=admin)
        async with running_lb(tmp_path, text) as lb:
            before = await status(lb)
            moved = lb_yaml([bes[0].address], port=taken, admin_port=admin)
            moved = moved.replace("    service: app\n", "    service: app\n" + MARK)
            for _ in range(2):  # the same failing reload fails again: nothing was applied
                code, body = await reload(lb, moved)
                assert code == 400 and not body["ok"]
                assert f"cannot listen on 127.0.0.1:{taken}" in body["errors"][0]
                assert "Address already in use" in body["errors"][0]
                assert await served_by_running_config(port)
            after = await status(lb)
            assert [x["bind"] for x in after["listeners"]] == [f"127.0.0.1:{port}"]
            assert after["config"]["hash"] == before["config"]["hash"]
            assert after["config"]["last_reload_ok"] is False
            assert after["config"]["reloads"]["failure"] == 2
            holder.close()  # the port is free now: the same reload applies
            code, body = await reload(lb, moved)
            assert code == 200 and body["ok"], body
            c = await Client.connect(taken)
            assert (await c.request()).header("x-config") == "new"
            c.close()
            assert [x["bind"] for x in (await status(lb))["listeners"]] == [f"127.0.0.1:{taken}"]


async def test_adding_a_listener_on_a_busy_port_puts_no_route_live(tmp_path: Path) -> None:
    holder, taken = busy_port()
    async with backends(1) as bes:
        port, admin = free_port(), free_port()
        text = lb_yaml([bes[0].address], port=port, admin_port=admin)
        async with running_lb(tmp_path, text) as lb:
            second = f'  - name: second\n    bind: "127.0.0.1:{taken}"\n'
            added = text.replace("admin:", second + "admin:", 1).replace(
                "    service: app\n", "    service: app\n" + MARK
            )
            code, body = await reload(lb, added)
            assert code == 400 and "listener second" in body["errors"][0]
            assert await served_by_running_config(port)  # the new route is not live
            assert len((await status(lb))["listeners"]) == 1
            holder.close()


async def test_swapping_two_listeners_ports_rebinds_nothing(tmp_path: Path) -> None:
    """An address that stays bound keeps its socket, whichever listener now owns it."""
    async with backends(1) as bes:
        p1, p2, admin = free_port(), free_port(), free_port()
        two = lb_yaml([bes[0].address], port=p1, admin_port=admin).replace(
            "admin:", f'  - name: other\n    bind: "127.0.0.1:{p2}"\n' + "admin:", 1
        )
        async with running_lb(tmp_path, two) as lb:
            idle = await Client.connect(p1)  # an open connection outlives the swap
            assert (await idle.request()).status == 200
            swapped = two.replace(f"127.0.0.1:{p1}", "SWAP").replace(
                f"127.0.0.1:{p2}", f"127.0.0.1:{p1}"
            )
            swapped = swapped.replace("SWAP", f"127.0.0.1:{p2}")
            code, body = await reload(lb, swapped)
            assert code == 200, body
            binds = {x["name"]: x["bind"] for x in (await status(lb))["listeners"]}
            assert binds == {"web": f"127.0.0.1:{p2}", "other": f"127.0.0.1:{p1}"}
            for port in (p1, p2):
                c = await Client.connect(port)
                assert (await c.request()).status == 200
                c.close()
            assert (await idle.request()).status == 200
            idle.close()


async def test_bad_certificate_or_log_file_changes_nothing(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    good_cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(good_cert)
    cert.private_key_pem.write_to_path(key)
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    async with backends(1) as bes:
        port, admin = free_port(), free_port()
        text = lb_yaml([bes[0].address], port=port, admin_port=admin)
        async with running_lb(tmp_path, text) as lb:
            tls = f"    tls: {{certificates: [{{cert: {broken}, key: {key}}}]}}\n"
            code, body = await reload(lb, text.replace("admin:", tls + "admin:", 1))
            assert code == 400 and "listener web: TLS" in body["errors"][0], body
            logs = f"    access_log: {{path: {tmp_path}/no/such/dir/access.log}}\n"
            code, body = await reload(lb, text.replace("admin:", logs + "admin:", 1))
            assert code == 400 and "access log" in body["errors"][0], body
            assert await served_by_running_config(port)
            # TLS switches on in place now that a reload needs no new socket for it.
            tls = f"    tls: {{certificates: [{{cert: {good_cert}, key: {key}}}]}}\n"
            code, body = await reload(lb, text.replace("admin:", tls + "admin:", 1))
            assert code == 200, body
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"https://localhost:{port}/", ssl=ctx) as r,
            ):
                assert r.status == 200
