"""Reloads under HTTP/2 load: h2load keeps 4 connections x 10 streams busy through lb (h2c)
while the config is reloaded through the admin API several times; not one request may fail,
be reset or get anything but 200."""

import asyncio
import re
import shutil
import subprocess

import aiohttp
import pytest
from conftest import backends, free_port, lb_yaml, running_lb

pytest.importorskip("lb._h2", reason="lb._h2 not built (libnghttp2-dev missing)")

REQUESTS = 20_000
RELOADS = 6


def h2load(url: str) -> str:
    cmd = ["h2load", "-n", str(REQUESTS), "-c", "4", "-m", "10", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


@pytest.mark.skipif(not shutil.which("h2load"), reason="no h2load (nghttp2-client)")
async def test_reloads_under_h2load_fail_no_request(tmp_path):
    async with backends(2) as bes:
        addresses = [b.address for b in bes]
        port, admin_port = free_port(), free_port()

        def config(generation: int) -> str:
            routes = (
                "routes:\n"
                f"  - name: all-{generation}\n"
                "    match: {path: {prefix: /}}\n"
                "    service: app\n"
            )
            return lb_yaml(
                addresses[generation % 2 :] + addresses[: generation % 2],  # order changes too
                port=port,
                admin_port=admin_port,
                extra_listener="    protocols: [http1, h2]\n",
                routes=routes,
            )

        async with running_lb(tmp_path, config(0)) as lb:
            load = asyncio.get_running_loop().create_task(asyncio.to_thread(h2load, lb.url))
            during = 0
            async with aiohttp.ClientSession() as http:
                for generation in range(1, RELOADS + 1):
                    for _ in range(100):  # a share of the load between two reloads, or 1 s
                        if sum(len(b.seen) for b in bes) >= generation * REQUESTS // 10:
                            break
                        await asyncio.sleep(0.01)
                    lb.write_config(config(generation))
                    async with http.post(f"{lb.admin}/api/reload") as r:
                        assert r.status == 200, await r.text()
                    assert f"all-{generation}" in lb.server.runtime.table.by_name
                    during += not load.done()
            out = await asyncio.wait_for(load, 150)
        assert during >= 3, f"only {during} reloads came while h2load ran"
        done = re.search(r"requests: .*", out)
        assert f"{REQUESTS} succeeded, 0 failed, 0 errored" in out, done and done.group(0)
        assert f"status codes: {REQUESTS} 2xx, 0 3xx, 0 4xx, 0 5xx" in out, out
