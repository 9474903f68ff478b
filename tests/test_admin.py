"""The admin API: status, drain/undrain, reload reporting, running config, auth and guards."""

from collections import Counter

import aiohttp
from conftest import Client, backends, free_port, lb_yaml, running_lb

TOKEN = "s3cret-token"


def lb_for(tmp_path, bes, **kw):
    return running_lb(
        tmp_path, lb_yaml([b.address for b in bes], port=free_port(), admin_port=free_port(), **kw)
    )


async def call(lb, method: str, path: str, **kw) -> tuple[int, object]:
    async with aiohttp.ClientSession() as s, s.request(method, lb.admin + path, **kw) as r:
        ctype = r.headers.get("Content-Type", "")
        body = await r.json() if ctype.startswith("application/json") else await r.text()
        return r.status, body


async def spread(lb, n: int = 8) -> Counter:
    c = await Client.connect(lb.port)
    try:
        return Counter([(await c.request(path=f"/{i}")).body for i in range(n)])
    finally:
        c.close()


async def test_status_shape(tmp_path):
    async with backends(2) as bes, lb_for(tmp_path, bes) as lb:
        await spread(lb, 4)
        status, st = await call(lb, "GET", "/api/status")
        assert status == 200
        assert st["version"] and st["picker"] in ("cython", "python")
        assert st["uptime_seconds"] >= 0 and st["metrics_enabled"] is True
        cfg = st["config"]
        assert cfg["hash"] == lb.server.runtime.loaded.digest
        assert cfg["files"] == [str(lb.config_path)]
        assert cfg["last_reload_ok"] is True and cfg["last_reload_errors"] == []
        assert cfg["loaded_at"] <= st["time"]
        (listener,) = st["listeners"]
        assert listener["name"] == "web" and listener["bind"] == f"127.0.0.1:{lb.port}"
        assert listener["accepted"] == 1 and listener["access_log"] is None
        (route,) = st["routes"]
        assert route == {
            "name": "all",
            "hosts": [],
            "path": {"kind": "prefix", "value": "/"},
            "methods": [],
            "action": "service",
            "service": "app",
            "requests": 4,
            "errors": 0,
        }
        (svc,) = st["services"]
        assert svc["name"] == "app" and svc["discovery"] == "static"
        assert svc["panic"] is False and svc["breaker"] is None
        assert svc["discovery_status"] is None
        assert svc["counts"] == {"up": 2, "draining": 0, "down": 0}
        names = [b["name"] for b in svc["backends"]]
        assert names == [b.address for b in bes]
        for b in svc["backends"]:
            assert b["state"] == "up" and b["reason"] == "" and b["weight"] == 1
            assert b["in_flight"] == 0 and b["requests"] == 2 and b["selected"] == 2
            assert b["errors"] == 0 and b["failures"] == 0


async def test_drain_and_undrain_steer_traffic(tmp_path):
    async with backends(2) as bes, lb_for(tmp_path, bes) as lb:
        first, second = bes
        ok_first, ok_second = (f"ok {b.port}\n".encode() for b in bes)
        status, body = await call(lb, "POST", f"/api/backends/app/{first.address}/drain")
        assert status == 200
        assert body == {
            "service": "app",
            "backend": first.address,
            "drained": True,
            "state": "draining",
            "reason": "draining",
        }
        assert await spread(lb) == Counter({ok_second: 8})
        _, st = await call(lb, "GET", "/api/status")
        states = {b["name"]: b["state"] for b in st["services"][0]["backends"]}
        assert states == {first.address: "draining", second.address: "up"}

        status, body = await call(lb, "POST", f"/api/backends/app/{first.address}/undrain")
        assert status == 200 and body["state"] == "up"
        assert set(await spread(lb)) == {ok_first, ok_second}

        assert (await call(lb, "POST", "/api/backends/nope/1.2.3.4:80/drain"))[0] == 404
        assert (await call(lb, "POST", "/api/backends/app/1.2.3.4:80/drain"))[0] == 404
        assert (await call(lb, "GET", f"/api/backends/app/{first.address}/drain"))[0] == 405


async def test_reload_success_and_failure_are_reported(tmp_path):
    async with backends(1) as bes, lb_for(tmp_path, bes) as lb:
        good = lb.config_path.read_text()
        status, body = await call(lb, "POST", "/api/reload")
        assert (status, body) == (200, {"ok": True, "errors": []})

        lb.config_path.write_text(good + "bogus_key: 1\n")
        status, body = await call(lb, "POST", "/api/reload")
        assert status == 400 and body["ok"] is False
        assert body["errors"] and str(lb.config_path) in body["errors"][0]
        _, st = await call(lb, "GET", "/api/status")
        assert st["config"]["last_reload_ok"] is False
        assert st["config"]["last_reload_errors"] == body["errors"]
        assert st["config"]["reloads"] == {"success": 1, "failure": 1}
        _, metrics = await call(lb, "GET", "/metrics")
        assert 'lb_config_reload_total{result="failure"} 1.0' in metrics
        assert "lb_config_last_reload_success 0.0" in metrics

        lb.config_path.write_text(good.replace("name: all", "name: everything"))
        status, body = await call(lb, "POST", "/api/reload")
        assert status == 200
        _, st = await call(lb, "GET", "/api/status")
        assert st["config"]["last_reload_ok"] is True
        assert st["config"]["hash"] == lb.server.runtime.loaded.digest
        assert [r["name"] for r in st["routes"]] == ["everything"]


async def test_running_config_as_json_with_secrets_redacted(tmp_path):
    extra = 'redis:\n  url: "redis://user:hunter2@127.0.0.1:6379/0"\n'
    async with backends(1) as bes, lb_for(tmp_path, bes, extra=extra) as lb:
        status, cfg = await call(lb, "GET", "/api/config")
        assert status == 200
        assert cfg["listeners"][0]["name"] == "web"
        assert cfg["listeners"][0]["bind"] == ["127.0.0.1", lb.port]
        assert cfg["services"]["app"]["backends"][0]["address"] == ["127.0.0.1", bes[0].port]
        assert cfg["metrics"] == {"enabled": True, "max_backends_per_service": 100}
        assert cfg["admin"]["token"] is None
        assert cfg["redis"]["url"] == "redis://user:<redacted>@127.0.0.1:6379/0"
        assert "hunter2" not in str(cfg)


async def test_token_protects_everything_but_probes_and_page(tmp_path):
    admin = f'admin:\n  bind: "127.0.0.1:{{port}}"\n  token: "{TOKEN}"\n'
    async with backends(1) as bes:
        port, admin_port = free_port(), free_port()
        text = lb_yaml([bes[0].address], port=port, admin_port=admin_port)
        text = text.replace(f'admin:\n  bind: "127.0.0.1:{admin_port}"\n', "") + admin.format(
            port=admin_port
        )
        async with running_lb(tmp_path, text) as lb:
            auth = {"Authorization": f"Bearer {TOKEN}"}
            wrong = {"Authorization": "Bearer nope"}
            for method, path in (
                ("GET", "/api/status"),
                ("GET", "/api/config"),
                ("GET", "/metrics"),
                ("POST", "/api/reload"),
                ("POST", f"/api/backends/app/{bes[0].address}/drain"),
            ):
                status, _ = await call(lb, method, path)
                assert status == 401, path
                assert (await call(lb, method, path, headers=wrong))[0] == 401, path
            assert (await call(lb, "GET", "/api/status", headers=auth))[0] == 200
            assert (await call(lb, "GET", "/metrics", headers=auth))[0] == 200
            _, cfg = await call(lb, "GET", "/api/config", headers=auth)
            assert cfg["admin"]["token"] == "<redacted>"
            assert (await call(lb, "GET", "/healthz"))[0] == 200
            assert (await call(lb, "GET", "/readyz"))[0] == 200
            status, page = await call(lb, "GET", "/")
            assert status == 200 and "<title>lb dashboard</title>" in page


async def test_browser_attacks_on_a_tokenless_admin_are_refused(tmp_path):
    async with backends(1) as bes, lb_for(tmp_path, bes) as lb:
        drain = f"/api/backends/app/{bes[0].address}/drain"
        evil = {"Origin": "http://evil.example"}
        assert (await call(lb, "POST", drain, headers=evil))[0] == 403
        assert (await call(lb, "POST", "/api/reload", headers=evil))[0] == 403
        # DNS rebinding: the browser believes it talks to evil.example.
        rebound = {"Host": f"evil.example:{lb.admin_port}"}
        assert (await call(lb, "GET", "/api/status", headers=rebound))[0] == 403
        assert (await call(lb, "GET", "/healthz", headers=rebound))[0] == 200
        same = {"Origin": f"http://127.0.0.1:{lb.admin_port}"}
        assert (await call(lb, "POST", drain, headers=same))[0] == 200
        assert (await call(lb, "POST", drain.replace("drain", "undrain")))[0] == 200


async def test_readiness_follows_shutdown(tmp_path):
    async with backends(1) as bes, lb_for(tmp_path, bes) as lb:
        assert await call(lb, "GET", "/readyz") == (200, "ready\n")
        lb.server.admin.ready_checks.append(lambda: "consul not synced")
        assert await call(lb, "GET", "/readyz") == (503, "not ready: consul not synced\n")
        lb.server.admin.ready_checks.clear()
        lb.server.stopping.set()
        assert await call(lb, "GET", "/readyz") == (503, "draining\n")
