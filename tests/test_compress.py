"""Response compression (`routes[].compress`): negotiation from Accept-Encoding q-values, the
three codecs decoded back to the backend's bytes, the head rewritten (Content-Length,
chunked, Vary, ETag, Accept-Ranges), every skipping rule, a streamed response arriving in
pieces, multi-MiB bodies compressed off the loop, HTTP/2 clients, metrics, config errors."""

from __future__ import annotations

import asyncio
import json
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import brotli
import pytest
import zstandard
from conftest import (
    Client,
    RawBackend,
    Seen,
    backends,
    free_port,
    lb_yaml,
    ok_response,
    read_request,
    read_response,
    running_lb,
)
from edge_helpers import curl
from tcp_util import scrape

from lb.compress import encoder
from lb.compress.negotiate import choose, parse
from lb.config import ConfigError, load

TEXT = b"".join(b"line %d: the quick brown fox jumps over the lazy dog\n" % i for i in range(4000))
JSON = json.dumps([{"id": i, "name": f"user{i}", "tags": ["a", "b"]} for i in range(3000)]).encode()
BIG = TEXT * 20  # about 4.6 MiB


def decode(codec: str | None, data: bytes) -> bytes:
    if codec == "gzip":
        return zlib.decompress(data, 31)
    if codec == "br":
        return brotli.decompress(data)
    if codec == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    assert codec is None
    return data


def chunked(body: bytes, pieces: int = 5) -> bytes:
    step = len(body) // pieces + 1
    out = b"".join(
        b"%x\r\n%b\r\n" % (len(body[i : i + step]), body[i : i + step])
        for i in range(0, len(body), step)
    )
    return out + b"0\r\n\r\n"


def respond(req: Seen) -> bytes:
    """The test backend's answers, by path."""
    path = req.path
    if path == "/json":
        return ok_response(
            JSON, headers='content-type: application/json\r\netag: "v1"\r\naccept-ranges: bytes\r\n'
        )
    if path == "/text":
        return ok_response(TEXT, headers="content-type: text/plain; charset=utf-8\r\n")
    if path == "/chunked":
        return (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ntransfer-encoding: chunked\r\n"
            b'vary: Origin\r\netag: W/"weak"\r\n\r\n' + chunked(TEXT)
        )
    if path == "/big":
        return ok_response(BIG, headers="content-type: text/plain\r\n")
    if path == "/small":
        return ok_response(b"tiny " * 20, headers="content-type: text/plain\r\n")
    if path == "/encoded":
        gz = zlib.compress(TEXT, 9, 31)
        return ok_response(gz, headers="content-type: text/plain\r\ncontent-encoding: gzip\r\n")
    if path == "/range":
        part = TEXT[:5000]
        return ok_response(
            part,
            "206 Partial Content",
            f"content-type: text/plain\r\ncontent-range: bytes 0-4999/{len(TEXT)}\r\n",
        )
    if path == "/no-transform":
        return ok_response(
            TEXT, headers="content-type: text/plain\r\ncache-control: public, no-transform\r\n"
        )
    if path == "/png":
        return ok_response(TEXT, headers="content-type: image/png\r\n")
    if path == "/untyped":
        return ok_response(TEXT)
    if path == "/304":
        return b'HTTP/1.1 304 Not Modified\r\netag: "v1"\r\n\r\n'
    if path == "/vary-star":
        return ok_response(TEXT, headers="content-type: text/plain\r\nvary: *\r\n")
    return ok_response(b"not found", "404 Not Found")


def routes(compress: str = "{}") -> str:
    return (
        "routes:\n"
        "  - name: site\n"
        "    match: {path: {prefix: /}}\n"
        "    service: app\n"
        f"    compress: {compress}\n"
    )


def config(backend: RawBackend, compress: str = "{}", listener: str = "") -> str:
    return lb_yaml(
        [backend.address],
        port=free_port(),
        admin_port=free_port(),
        routes=routes(compress),
        extra_listener=listener,
    )


async def get(lb, path: str, accept: str | None, method: str = "GET", headers: str = ""):
    client = await Client.connect(lb.port)
    try:
        extra = headers + (f"accept-encoding: {accept}\r\n" if accept is not None else "")
        return await client.request(method, path, headers=extra, timeout=20)
    finally:
        client.close()


# -- negotiation -------------------------------------------------------------------------------
CODECS = ("zstd", "br", "gzip")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("gzip, deflate, br, zstd", "zstd"),  # all equal: the route's order decides
        ("gzip, deflate, br", "br"),
        ("gzip", "gzip"),
        ("x-gzip", "gzip"),
        ("GZIP;Q=0.5, br;q=0.4", "gzip"),
        ("br;q=0.9, gzip;q=1.0", "gzip"),
        ("zstd;q=0, *", "br"),  # excluded by name, the rest by the wildcard
        ("*;q=0.1, gzip;q=0.2", "gzip"),
        ("*", "zstd"),
        ("*;q=0", None),
        ("identity", None),
        ("gzip;q=0.5, identity", None),  # identity preferred to the best codec
        ("gzip;q=1, identity;q=0.5", "gzip"),
        ("deflate, compress", None),
        ("", None),
        ("gzip;q=abc, br", "br"),  # a malformed q excludes its coding
        (" , ;q=1, br ; q=0.3", "br"),
    ],
)
def test_accept_encoding_q_values(header: str, expected: str | None) -> None:
    assert choose(parse(header), CODECS) == expected


def test_the_routes_order_breaks_ties() -> None:
    assert choose(parse("gzip, br, zstd"), ("gzip", "br")) == "gzip"
    assert choose(parse("zstd, br"), ("gzip",)) is None


# -- through lb --------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", ["zstd", "br", "gzip"])
async def test_each_codec_decodes_to_the_backends_bytes(tmp_path: Path, codec: str) -> None:
    async with backends(1, respond=respond) as (b,), running_lb(tmp_path, config(b)) as lb:
        for path, original in (("/json", JSON), ("/chunked", TEXT), ("/text", TEXT)):
            r = await get(lb, path, codec)
            assert r.status == 200
            assert r.header("content-encoding") == codec
            assert r.header("content-length") is None
            assert r.header("transfer-encoding") == "chunked"
            assert decode(codec, r.body) == original
            assert len(r.body) < len(original) // 3
        json_r = await get(lb, "/json", codec)
        assert json_r.header("etag") == 'W/"v1"'  # weakened: the bytes differ
        assert json_r.header("accept-ranges") is None  # ranges would be of the identity body
        assert json_r.header("vary") == "Accept-Encoding"
        chunked_r = await get(lb, "/chunked", codec)
        assert chunked_r.header("etag") == 'W/"weak"'  # already weak: kept
        assert chunked_r.header("vary") == "Origin, Accept-Encoding"


async def test_curl_compressed_gets_the_original(tmp_path: Path) -> None:
    if not shutil.which("curl"):
        pytest.skip("no curl")
    async with backends(1, respond=respond) as (b,), running_lb(tmp_path, config(b)) as lb:
        r = await curl(f"{lb.url}/json", "--compressed")
        assert r.status == 200 and r.body == JSON
        assert r.headers["content-encoding"] in ("zstd", "br", "gzip")
        plain = await curl(f"{lb.url}/json")  # no Accept-Encoding: as it is
        assert plain.body == JSON and "content-encoding" not in plain.headers
        assert plain.headers["content-length"] == str(len(JSON))
        assert plain.headers["vary"] == "Accept-Encoding"  # it varies, even uncompressed
        assert plain.headers["etag"] == '"v1"'


async def test_responses_that_are_not_compressed(tmp_path: Path) -> None:
    async with backends(1, respond=respond) as (b,), running_lb(tmp_path, config(b)) as lb:
        everything = "zstd, br, gzip"
        for path in ("/small", "/encoded", "/range", "/no-transform", "/png", "/untyped"):
            r = await get(lb, path, everything)
            assert r.status in (200, 206), path
            assert r.header("content-encoding") in (None, "gzip"), path
            assert r.header("content-length") == str(len(r.body)), path
            assert r.header("vary") is None, path
        assert (await get(lb, "/encoded", everything)).header("content-encoding") == "gzip"
        assert decode("gzip", (await get(lb, "/encoded", everything)).body) == TEXT
        head = await get(lb, "/text", everything, method="HEAD")
        assert head.status == 200 and head.header("content-encoding") is None
        assert head.header("content-length") == str(len(TEXT))
        not_modified = await get(lb, "/304", everything)
        assert not_modified.status == 304 and not_modified.header("content-encoding") is None
        refused = await get(lb, "/text", "gzip;q=0, identity")
        assert refused.body == TEXT and refused.header("content-encoding") is None
        starred = await get(lb, "/vary-star", "gzip")
        assert starred.header("vary") == "*" and decode("gzip", starred.body) == TEXT
        skipped = lb.server.runtime.counters["compress_skipped"]
        for reason in ("small", "encoded", "range", "no_transform", "not_accepted"):
            assert skipped[("site", reason)] >= 1, reason
        assert skipped[("site", "type")] == 2


async def test_the_routes_settings_decide(tmp_path: Path) -> None:
    settings = (
        "{codecs: [gzip], min_size: 64KiB, types: [application/*+json, text/*], levels: {gzip: 1}}"
    )
    async with (
        backends(1, respond=respond) as (b,),
        running_lb(tmp_path, config(b, settings)) as lb,
    ):
        r = await get(lb, "/text", "zstd, br, gzip")
        assert r.header("content-encoding") == "gzip" and decode("gzip", r.body) == TEXT
        assert (await get(lb, "/json", "gzip")).header("content-encoding") is None  # type
        small = await get(lb, "/chunked", "zstd")  # zstd is not this route's
        assert small.header("content-encoding") is None and small.body == TEXT


async def test_http10_client_gets_a_close_delimited_compressed_body(tmp_path: Path) -> None:
    async with backends(1, respond=respond) as (b,), running_lb(tmp_path, config(b)) as lb:
        reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
        writer.write(b"GET /json HTTP/1.0\r\naccept-encoding: gzip\r\n\r\n")
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"content-encoding: gzip" in head.lower()
        assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
        assert decode("gzip", body) == JSON


@pytest.mark.parametrize("codec", ["zstd", "br", "gzip"])
async def test_multi_mib_bodies_keep_alive_and_count_bytes(
    tmp_path: Path, codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks over 64 KiB are compressed off the loop; several in a row on one connection."""
    handoffs = []
    real = encoder.executor

    def counted() -> ThreadPoolExecutor:
        handoffs.append(1)
        return real()

    monkeypatch.setattr(encoder, "executor", counted)
    async with backends(1, respond=respond) as (b,), running_lb(tmp_path, config(b)) as lb:
        client = await Client.connect(lb.port)
        try:
            for _ in range(3):
                r = await client.request(
                    "GET", "/big", headers=f"accept-encoding: {codec}\r\n", timeout=30
                )
                assert r.header("content-encoding") == codec
                assert decode(codec, r.body) == BIG
            ok = await client.request("GET", "/small", headers="accept-encoding: gzip\r\n")
            assert ok.status == 200
        finally:
            client.close()
        assert handoffs, "no chunk was compressed off the loop"
        counts = lb.server.runtime.counters
        assert counts["compressed_responses"][("site", codec)] == 3
        assert counts["compress_bytes"][("site", codec, "in")] == 3 * len(BIG)
        out = counts["compress_bytes"][("site", codec, "out")]
        assert 0 < out < len(BIG)
        metrics = await scrape(lb.admin_port)
        labels = (("codec", codec), ("route", "site"))
        assert metrics[("lb_compressed_responses_total", labels)] == 3


async def test_a_slow_reader_of_a_compressed_body_gets_it_whole(tmp_path: Path) -> None:
    async with backends(1, respond=respond) as (b,), running_lb(tmp_path, config(b)) as lb:
        reader, writer = await asyncio.open_connection("127.0.0.1", lb.port, limit=1 << 16)
        writer.write(b"GET /big HTTP/1.1\r\nhost: t\r\naccept-encoding: gzip\r\n\r\n")
        await asyncio.sleep(0.3)  # lb fills its buffers and pauses the backend meanwhile
        r = await asyncio.wait_for(read_response(reader), 30)
        writer.close()
        assert decode("gzip", r.body) == BIG


async def test_a_streamed_response_arrives_chunk_by_chunk(tmp_path: Path) -> None:
    """Each backend chunk reaches the client, decodable, before the backend sends the next:
    the backend waits for the client's word between chunks."""
    received = [asyncio.Event() for _ in range(3)]

    async def stream(backend: RawBackend, reader, writer) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        for i in range(3):
            event = b"data: event %d %s\n\n" % (i, b"x" * 40)
            writer.write(b"%x\r\n%b\r\n" % (len(event), event))
            await writer.drain()
            await asyncio.wait_for(received[i].wait(), 10)
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    b = await RawBackend(handler=stream).start()
    settings = "{codecs: [gzip], types: [text/event-stream]}"
    try:
        async with running_lb(tmp_path, config(b, settings)) as lb:
            reader, writer = await asyncio.open_connection("127.0.0.1", lb.port)
            writer.write(b"GET /events HTTP/1.1\r\nhost: t\r\naccept-encoding: gzip\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert b"content-encoding: gzip" in head
            z = zlib.decompressobj(31)
            text = b""
            for i in range(3):
                while b"event %d" % i not in text:
                    size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)), 16)
                    assert size > 0, "the body ended early"
                    text += z.decompress(await reader.readexactly(size))
                    assert await reader.readexactly(2) == b"\r\n"
                received[i].set()
            assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5)
            writer.close()
            assert text.count(b"data: event") == 3
    finally:
        await b.stop()


async def test_http2_clients_get_compressed_bodies(tmp_path: Path) -> None:
    pytest.importorskip("lb._h2", reason="lb._h2 not built")
    if not shutil.which("curl"):
        pytest.skip("no curl")
    listener = "    protocols: [http1, h2]\n"
    async with (
        backends(1, respond=respond) as (b,),
        running_lb(tmp_path, config(b, listener=listener)) as lb,
    ):
        for path, original in (("/json", JSON), ("/big", BIG), ("/chunked", TEXT)):
            r = await curl(f"{lb.url}{path}", "--http2-prior-knowledge", "--compressed")
            assert r.status == 200 and r.body == original
            assert r.headers["content-encoding"] == "zstd"
            assert "content-length" not in r.headers


async def test_reload_changes_the_settings(tmp_path: Path) -> None:
    async with backends(1, respond=respond) as (b,):
        text = config(b, "{codecs: [gzip]}")
        async with running_lb(tmp_path, text) as lb:
            assert (await get(lb, "/text", "br, gzip")).header("content-encoding") == "gzip"
            lb.config_path.write_text(text.replace("{codecs: [gzip]}", "{codecs: [br]}"))
            ok, errors = await lb.server.reload()
            assert ok, errors
            assert (await get(lb, "/text", "br, gzip")).header("content-encoding") == "br"
            lb.config_path.write_text(text.replace("    compress: {codecs: [gzip]}\n", ""))
            ok, errors = await lb.server.reload()
            assert ok, errors
            assert lb.server.runtime.table.routes[0].compress is None
            plain = await get(lb, "/text", "br, gzip")
            assert plain.header("content-encoding") is None and plain.header("vary") is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ("{codecs: []}", "list at least one of zstd, br, gzip"),
        ("{codecs: [gzip, gzip]}", "a codec is listed twice"),
        ("{codecs: [deflate]}", "expected one of 'zstd', 'br', 'gzip'"),
        ("{types: [json]}", 'found "json"'),
        ("{levels: {gzip: 10}}", "a gzip level from 1 to 9"),
        ("{levels: {zstd: 22}}", "a zstd level from 1 to 19"),
        ("{min_size: lots}", "a size like"),
        ("{level: 3}", 'unknown key (did you mean "levels"?)'),
    ],
)
def test_config_errors(tmp_path: Path, settings: str, message: str) -> None:
    path = tmp_path / "lb.yaml"
    path.write_text(lb_yaml(["127.0.0.1:1"], port=1, admin_port=2, routes=routes(settings)))
    with pytest.raises(ConfigError) as err:
        load(str(path))
    assert message in str(err.value), str(err.value)
    assert "routes[0].compress" in str(err.value)


def test_compress_needs_a_forwarding_route(tmp_path: Path) -> None:
    path = tmp_path / "lb.yaml"
    text = lb_yaml(
        ["127.0.0.1:1"],
        port=1,
        admin_port=2,
        routes="routes:\n  - name: r\n    respond: {status: 200}\n    compress: {}\n",
    )
    path.write_text(text)
    with pytest.raises(ConfigError, match="compress applies to routes that forward"):
        load(str(path))
