"""HTTP/2 toward clients: h2c by prior knowledge and h2 by ALPN, through lb to HTTP/1.1 backends."""

import asyncio
import contextlib
import logging
import shutil
import ssl
import subprocess

import pytest

pytest.importorskip("lb._h2", reason="lb._h2 not built (libnghttp2-dev missing)")
h2conn = pytest.importorskip("h2.connection")

import h2.config  # noqa: E402
import h2.events as ev  # noqa: E402
from conftest import (  # noqa: E402
    Client,
    backends,
    free_port,
    lb_yaml,
    ok_response,
    read_request,
    running_lb,
)

from lb.config import ConfigError, load  # noqa: E402

H2 = "    protocols: [http1, h2]\n"


class H2Client:
    """A raw HTTP/2 client (the `h2` library) on one socket; `ack` False: a slow reader."""

    def __init__(self, reader, writer):
        self.r, self.w = reader, writer
        self.c = h2conn.H2Connection(
            h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
        )
        self.c.initiate_connection()
        self.streams = {}
        self.ack = True
        self.unacked = []
        self.goaway = None
        self.window = asyncio.Event()
        self.w.write(self.c.data_to_send())
        self.task = asyncio.get_running_loop().create_task(self._pump())

    @classmethod
    async def connect(cls, port, ctx=None):
        r, w = await asyncio.open_connection(
            "127.0.0.1", port, ssl=ctx, server_hostname="localhost" if ctx else None
        )
        return cls(r, w)

    async def _pump(self):
        with contextlib.suppress(ConnectionError):
            while data := await self.r.read(65536):
                for e in self.c.receive_data(data):
                    st = self.streams.get(getattr(e, "stream_id", None))
                    if isinstance(e, ev.ResponseReceived):
                        st["status"] = int(dict(e.headers)[b":status"])
                        st["headers"] = dict(e.headers)
                    elif isinstance(e, ev.DataReceived):
                        st["body"] += e.data
                        if self.ack:
                            self.c.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
                        else:
                            self.unacked.append((e.flow_controlled_length, e.stream_id))
                    elif isinstance(e, ev.TrailersReceived):
                        st["trailers"] = dict(e.headers)
                    elif isinstance(e, ev.StreamEnded | ev.StreamReset):
                        st["reset"] = getattr(e, "error_code", None)
                        st["done"].set()
                    elif isinstance(e, ev.WindowUpdated):
                        self.window.set()
                    elif isinstance(e, ev.ConnectionTerminated):
                        self.goaway = e
                self.w.write(self.c.data_to_send())
        for st in self.streams.values():
            st["done"].set()

    def release(self):
        self.ack = True
        for n, sid in self.unacked:
            self.c.acknowledge_received_data(n, sid)
        self.unacked = []
        self.w.write(self.c.data_to_send())

    def start(self, method="GET", path="/", headers=(), body=None, end=True):
        sid = self.c.get_next_available_stream_id()
        hs = [(":method", method), (":scheme", "http"), (":authority", "test"), (":path", path)]
        self.c.send_headers(sid, hs + list(headers), end_stream=body is None and end)
        self.streams[sid] = {"body": b"", "done": asyncio.Event(), "trailers": None, "status": 0}
        self.w.write(self.c.data_to_send())
        return sid

    async def send_body(self, sid, body, end=True):
        while body:
            n = min(
                self.c.local_flow_control_window(sid), self.c.max_outbound_frame_size, len(body)
            )
            if n <= 0:
                self.window.clear()
                await asyncio.wait_for(self.window.wait(), 5)
                continue
            self.c.send_data(sid, body[:n])
            body = body[n:]
            self.w.write(self.c.data_to_send())
        if end:
            self.c.end_stream(sid)
            self.w.write(self.c.data_to_send())

    async def wait(self, sid, timeout=5):
        await asyncio.wait_for(self.streams[sid]["done"].wait(), timeout)
        return self.streams[sid]

    async def request(self, method="GET", path="/", headers=(), body=None):
        sid = self.start(method, path, headers, body)
        if body is not None:
            await self.send_body(sid, body)
        return await self.wait(sid)

    def close(self):
        self.task.cancel()
        self.w.close()


@contextlib.asynccontextmanager
async def h2_lb(tmp_path, n=1, extra_listener=H2, **kw):
    async with (
        backends(n) as bes,
        running_lb(
            tmp_path,
            lb_yaml(
                [b.address for b in bes],
                port=free_port(),
                admin_port=free_port(),
                extra_listener=extra_listener,
                **kw,
            ),
        ) as lb,
    ):
        yield lb, bes


async def test_get_post_headers_and_cookies(tmp_path):
    async with h2_lb(tmp_path) as (lb, bes):
        c = await H2Client.connect(lb.port)
        r = await c.request(headers=[("cookie", "a=1"), ("cookie", "b=2"), ("x-custom", "v")])
        assert r["status"] == 200 and r["body"] == f"ok {bes[0].port}\n".encode()
        seen = bes[0].seen[-1]
        assert seen.header("host") == "test" and seen.header("cookie") == "a=1; b=2"
        assert seen.header("x-custom") == "v" and seen.header("x-forwarded-proto") == "http"
        r = await c.request("POST", "/up", [("content-length", "5")], b"hello")
        assert r["status"] == 200 and bes[0].seen[-1].body == b"hello"
        assert bes[0].seen[-1].header("content-length") == "5"
        # No content-length: the body goes chunked to the HTTP/1.1 backend.
        r = await c.request("POST", "/up", [], b"x" * 200_000)
        assert r["status"] == 200 and bes[0].seen[-1].body == b"x" * 200_000
        assert bes[0].seen[-1].header("transfer-encoding") == "chunked"
        # Over the 64 KiB window, with a content-length.
        big = bytes(range(256)) * 1000
        r = await c.request("PUT", "/up", [("content-length", str(len(big)))], big)
        assert r["status"] == 200 and bes[0].seen[-1].body == big
        c.close()


async def test_concurrent_streams_on_one_connection(tmp_path):
    async with h2_lb(tmp_path, n=2) as (lb, bes):
        c = await H2Client.connect(lb.port)
        sids = [c.start(path=f"/p{i}") for i in range(60)]
        results = [await c.wait(sid) for sid in sids]
        assert all(r["status"] == 200 for r in results)
        assert sum(len(b.seen) for b in bes) == 60
        c.close()


async def test_large_response_slow_reader_and_trailers(tmp_path):
    payload = bytes(range(256)) * 4096  # 1 MiB

    def respond(req):
        if req.path == "/trailers":
            return (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: grpc-status\r\n\r\n"
                b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\nx-sum: abc\r\n\r\n"
            )
        return ok_response(payload)

    async with h2_lb(tmp_path) as (lb, bes):
        bes[0].respond = respond
        c = await H2Client.connect(lb.port)
        c.ack = False
        sid = c.start(path="/big")
        await asyncio.sleep(0.3)
        assert len(c.streams[sid]["body"]) <= 65535  # the window holds lb back
        c.release()
        r = await c.wait(sid)
        assert (
            r["body"] == payload and r["headers"][b"content-length"] == str(len(payload)).encode()
        )
        r = await c.request(path="/trailers")
        assert r["body"] == b"hello"
        assert r["trailers"] == {b"grpc-status": b"0", b"x-sum": b"abc"}
        c.close()


async def test_own_answers_404_503_and_grpc(tmp_path):
    routes = "routes:\n  - name: api\n    match: {path: {prefix: /api}}\n    service: app\n"
    async with h2_lb(tmp_path, n=0, routes=routes) as (lb, _):
        c = await H2Client.connect(lb.port)
        r = await c.request(path="/nope")
        assert r["status"] == 404 and r["body"] == b"404 Not Found\n"
        r = await c.request(path="/api/x")
        assert r["status"] == 503 and r["body"].startswith(b"503")
        r = await c.request("POST", "/api/Svc/M", [("content-type", "application/grpc")], b"\0")
        assert r["status"] == 200 and r["body"] == b""
        assert r["headers"][b"grpc-status"] == b"14"
        assert r["headers"][b"content-type"] == b"application/grpc"
        r = await c.request(path="/api/x", headers=[("host", "other")])
        assert r["status"] == 400  # :authority and host disagree
        c.close()


async def test_client_reset_mid_response_releases_backend(tmp_path, caplog):
    closed = asyncio.Event()

    async def slow(be, reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 1000)
        with contextlib.suppress(ConnectionError):
            await reader.read()
        closed.set()

    async with h2_lb(tmp_path) as (lb, bes):
        bes[0].handler = slow
        c = await H2Client.connect(lb.port)
        with caplog.at_level(logging.WARNING, logger="lb"):
            sid = c.start()
            for _ in range(50):
                if c.streams[sid]["body"]:
                    break
                await asyncio.sleep(0.02)
            c.c.reset_stream(sid)
            c.w.write(c.c.data_to_send())
            await asyncio.wait_for(closed.wait(), 5)
            bes[0].handler = None
            r = await c.request()  # the connection carries on
            assert r["status"] == 200
        assert not [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        c.close()


async def test_http1_on_the_same_port_and_unknown_protocol(tmp_path):
    async with h2_lb(tmp_path) as (lb, _):
        c = await Client.connect(lb.port)
        assert (await c.request()).status == 200
        c.close()
    bad = lb_yaml(["127.0.0.1:1"], port=free_port(), admin_port=free_port(),
                  extra_listener="    protocols: [http1, spdy]\n")  # fmt: skip
    (tmp_path / "bad.yaml").write_text(bad)
    with pytest.raises(ConfigError) as info:
        load(str(tmp_path / "bad.yaml"))
    assert "protocols[1]: expected one of 'http1', 'h2'" in str(info.value.problems[0])


async def test_alpn_h2_over_tls_with_httpx(tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("h2")
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cp, kp = tmp_path / "c.pem", tmp_path / "c.key"
    cp.write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))
    kp.write_bytes(cert.private_key_pem.bytes())
    tls = f'{H2}    tls:\n      certificates:\n        - {{cert: "{cp}", key: "{kp}"}}\n'
    async with h2_lb(tmp_path, extra_listener=tls) as (lb, bes):
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        async with httpx.AsyncClient(http2=True, verify=ctx) as client:
            r = await client.post(f"https://localhost:{lb.port}/x", content=b"abc" * 1000)
            assert r.http_version == "HTTP/2" and r.status_code == 200
            assert bes[0].seen[-1].body == b"abc" * 1000
            assert bes[0].seen[-1].header("x-forwarded-proto") == "https"
        ctx.set_alpn_protocols(["http/1.1"])
        async with httpx.AsyncClient(verify=ctx) as client:
            r = await client.get(f"https://localhost:{lb.port}/")
            assert r.http_version == "HTTP/1.1" and r.status_code == 200
    # h2c by prior knowledge too.
    async with h2_lb(tmp_path) as (lb, _), httpx.AsyncClient(http1=False, http2=True) as client:
        rs = await asyncio.gather(*(client.get(f"{lb.url}/{i}") for i in range(20)))
        assert {r.status_code for r in rs} == {200} and rs[0].http_version == "HTTP/2"


@pytest.mark.skipif(not shutil.which("curl") or not shutil.which("h2load"), reason="no curl/h2load")
async def test_curl_and_h2load(tmp_path):
    async with h2_lb(tmp_path, n=2) as (lb, _):

        def run(*cmd):
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20)

        out = await asyncio.to_thread(run, "curl", "-s", "-i", "--http2-prior-knowledge", lb.url)
        assert out.stdout.startswith("HTTP/2 200"), out
        out = await asyncio.to_thread(run, "h2load", "-n", "2000", "-c", "4", "-m", "10", lb.url)
        assert "2000 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout


@pytest.mark.skipif(not shutil.which("nghttp"), reason="no nghttp (nghttp2-client)")
async def test_graceful_shutdown_goaway_lets_stream_finish(tmp_path):
    # nghttp, not the h2 library: h2 treats the first GOAWAY as the connection's end.
    release = asyncio.Event()

    async def slow(req):
        await release.wait()
        return ok_response(b"late")

    async with h2_lb(tmp_path) as (lb, bes):
        bes[0].respond = slow
        proc = await asyncio.create_subprocess_exec(
            "nghttp", "-v", "-t", "10", lb.url, stdout=subprocess.PIPE
        )
        for _ in range(100):
            if bes[0].seen:
                break
            await asyncio.sleep(0.02)
        stopping = asyncio.get_running_loop().create_task(lb.server.shutdown())
        await asyncio.sleep(0.3)  # the notice and the GOAWAY go out; the stream is in flight
        release.set()
        out = (await asyncio.wait_for(proc.communicate(), 10))[0].decode()
        await asyncio.wait_for(stopping, 5)
        assert "recv GOAWAY" in out and "error_code=NO_ERROR" in out
        assert out.index("recv GOAWAY") < out.rindex("late")
        assert "late" in out and proc.returncode == 0


async def test_reload_drops_no_stream(tmp_path):
    """A reload while an HTTP/2 connection has a stream in flight: the stream finishes, the
    same connection goes on serving under the new config, and nothing is reset."""
    async with h2_lb(tmp_path) as (lb, bes):

        async def slow(req):
            if req.path == "/slow":
                await asyncio.sleep(0.5)
            return ok_response(b"done " + req.path.encode())

        bes[0].respond = slow
        c = await H2Client.connect(lb.port)
        assert (await c.request())["status"] == 200
        sid = c.start(path="/slow")
        await asyncio.sleep(0.1)  # in flight at the backend
        text = lb.config_path.read_text().replace("name: all", "name: all-reloaded")
        lb.config_path.write_text(text)
        ok, errors = await lb.server.reload()
        assert ok, errors
        assert "all-reloaded" in lb.server.runtime.table.by_name
        r = await c.wait(sid)
        assert r["status"] == 200 and r["body"] == b"done /slow" and r["reset"] is None
        r = await c.request(path="/after")
        assert r["status"] == 200 and r["body"] == b"done /after"
        assert c.goaway is None
        c.close()
