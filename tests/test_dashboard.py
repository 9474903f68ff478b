"""The dashboard in a real headless Chromium: it renders a running lb's state, and a screenshot
is kept (under the test's tmp dir and at /tmp/lb-dashboard.png) for people to look at."""

import asyncio
import re
import shutil
import time

import aiohttp
import pytest
from conftest import Client, backends, free_port, ok_response, running_lb

from lb.traffic.breaker import Breaker

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
SCREENSHOT_COPY = "/tmp/lb-dashboard.png"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium not installed (Debian package `chromium`)"
)


class StaleWatch:
    """What a Consul watch shows when Consul stopped answering a while ago."""

    stale = True
    errors = 7
    last_error = "connection refused"

    def __init__(self) -> None:
        self.last_success = time.time() - 95


class PassGate:
    """Stands in for the traffic-control gate: shows its breaker, lets every request in."""

    def __init__(self, breaker: Breaker) -> None:
        self.breaker = breaker

    def enter(self, ex) -> bool:
        return True

    def leave(self, ex) -> None:
        pass


def config(web: list[str], payments: list[str], port: int, admin: int) -> str:
    def addresses(bes: list[str]) -> str:
        return "\n".join(f'      - "{a}"' for a in bes)

    return f"""\
listeners:
  - name: public
    bind: "127.0.0.1:{port}"
admin:
  bind: "127.0.0.1:{admin}"
services:
  web:
    backends:
{addresses(web)}
  payments:
    backends:
{addresses(payments)}
routes:
  - name: pay
    match: {{path: {{prefix: /pay}}}}
    service: payments
  - name: site
    match: {{path: {{prefix: /}}}}
    service: web
"""


async def chromium(url: str, tmp_path, *args: str) -> bytes:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=5000",
        "--window-size=1280,900",
        *args,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0
    return out


async def keep_busy(port: int, stop: asyncio.Event) -> None:
    """Steady traffic, so that the page has rates to compute between its polls. Stopped by an
    event rather than cancelled: Python 3.11's wait_for (inside Client.request) can swallow a
    cancellation that arrives as its response does, and the loop would then run forever."""
    c = await Client.connect(port)
    try:
        i = 0
        while not stop.is_set():
            # Half to payments, so its failing backend is picked in every poll window even
            # when a loaded machine slows this loop down.
            await c.request(path=f"/pay/{i}" if i % 2 == 0 else f"/page/{i}")
            i += 1
            await asyncio.sleep(0.005)
    finally:
        c.close()


def failing(req):
    return ok_response(b"no", status="500 Internal Server Error")


async def test_dashboard_renders_a_running_lb(tmp_path):
    async with backends(3) as web, backends(1) as good, backends(1, respond=failing) as bad:
        pay = good + bad
        port, admin = free_port(), free_port()
        text = config([b.address for b in web], [b.address for b in pay], port, admin)
        async with running_lb(tmp_path, text) as lb:
            runtime = lb.server.runtime
            drained, down, healthy = web
            async with aiohttp.ClientSession() as s:
                url = f"{lb.admin}/api/backends/web/{drained.address}/drain"
                async with s.post(url) as r:
                    assert r.status == 200
            svc = runtime.services["web"]
            b = next(b for b in svc.backends.values() if b.name == down.address)
            b.check_ok = False
            b.check_reason = "active-check-failed: connection refused"
            svc.refresh(b)
            payments = runtime.services["payments"]
            breaker = Breaker()
            breaker._move("half_open")
            payments.gate = PassGate(breaker)
            payments.discovery = StaleWatch()

            stop = asyncio.Event()
            busy = asyncio.create_task(keep_busy(port, stop))
            try:
                await asyncio.sleep(0.3)
                shot = tmp_path / "dashboard.png"
                await chromium(lb.admin + "/", tmp_path, f"--screenshot={shot}")
                dom = (await chromium(lb.admin + "/", tmp_path, "--dump-dom")).decode()
            finally:
                stop.set()
                await asyncio.wait_for(busy, 10)

    (tmp_path / "dashboard.html").write_text(dom)
    assert shot.stat().st_size > 10_000  # a real rendering, not a blank page
    shutil.copyfile(shot, SCREENSHOT_COPY)

    assert 'class="pill live ok">live<' in dom
    app = dom[dom.index('<main id="app">') : dom.index("</main>")]  # the rendering, not the script
    assert "config " + runtime.loaded.digest[:12] in dom
    assert "last reload ok" in dom
    for name in ("web", "payments"):
        assert f'data-service="{name}"' in app
    rows = dict(re.findall(r'data-backend="([^"]+)" data-state="([^"]+)"', app))
    assert rows == {
        drained.address: "draining",
        down.address: "down",
        healthy.address: "up",
        pay[0].address: "up",
        pay[1].address: "up",
    }
    assert "active-check-failed: connection refused" in app
    assert "breaker half-open" in app
    assert re.search(r"stale 1m \d+s", app), "discovery staleness is shown"
    # Rates come from successive polls: traffic was flowing, so some req/s is not zero.
    rates = re.findall(r"<b>([\d.k]+)</b> req/s", app)
    assert any(float(r.rstrip("k")) > 0 for r in rates), rates
    # Every answer of the failing backend is a 500: its error rate is 100 %.
    bad_row = re.search(rf'data-backend="{bad[0].address}".*?</tr>', app, re.S)
    assert bad_row and '<span class="err">100%</span>' in bad_row.group(0)


async def test_dashboard_asks_for_the_token_when_the_api_needs_one(tmp_path):
    async with backends(1) as bes:
        port, admin = free_port(), free_port()
        text = config([bes[0].address], [], port, admin).replace(
            f'  bind: "127.0.0.1:{admin}"\n', f'  bind: "127.0.0.1:{admin}"\n  token: "t0ken"\n'
        )
        text = text.replace("  payments:\n    backends:\n\n", "  payments:\n    backends: []\n")
        async with running_lb(tmp_path, text) as lb:
            dom = (await chromium(lb.admin + "/", tmp_path, "--dump-dom")).decode()
    assert 'id="login" style="display: block;"' in dom
    assert 'class="pill live bad">token needed<' in dom
    assert '<main id="app"></main>' in dom  # nothing rendered without the token
