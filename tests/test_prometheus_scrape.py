"""A real Prometheus server scrapes lb's admin port; a counter comes back through its query API."""

import asyncio
import contextlib
import shutil

import aiohttp
import pytest
from conftest import Client, backends, free_port, lb_yaml, running_lb

PROMETHEUS = shutil.which("prometheus")

pytestmark = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian package `prometheus`)"
)


@contextlib.asynccontextmanager
async def prometheus(tmp_path, target: str):
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: lb\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    assert PROMETHEUS is not None
    proc = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={cfg}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def query(session: aiohttp.ClientSession, base: str, promql: str) -> list[dict]:
    try:
        async with session.get(f"{base}/api/v1/query", params={"query": promql}) as r:
            if r.status != 200:
                return []
            body = await r.json()
    except aiohttp.ClientError:
        return []  # not listening yet
    return body["data"]["result"]


async def test_prometheus_scrapes_lb_and_answers_a_query(tmp_path):
    async with backends(2) as bes:
        admin = free_port()
        text = lb_yaml([b.address for b in bes], port=free_port(), admin_port=admin)
        async with (
            running_lb(tmp_path, text) as lb,
            prometheus(tmp_path, f"127.0.0.1:{admin}") as p,
        ):
            c = await Client.connect(lb.port)
            for i in range(7):
                assert (await c.request(path=f"/{i}")).status == 200
            c.close()
            promql = 'sum(lb_requests_total{route="all",service="app",code="200"})'
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            result: list[dict] = []
            async with aiohttp.ClientSession() as session:
                while loop.time() < deadline:
                    result = await query(session, p, promql)
                    if result:
                        break
                    await asyncio.sleep(0.25)
                up = await query(session, p, 'up{job="lb"}')
                info = await query(session, p, "lb_build_info")
            log = (tmp_path / "prometheus.log").read_text()
            assert result, f"no sample of {promql} within 20 s; prometheus log:\n{log}"
            assert float(result[0]["value"][1]) == 7
            assert up and up[0]["value"][1] == "1"
            assert info and info[0]["metric"]["picker"] in ("cython", "python")
