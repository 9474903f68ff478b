"""Access log: JSON lines per listener, field selection, stdout and file sinks, never blocking."""

import asyncio
import json
import threading
from datetime import UTC, datetime

from conftest import Client, backends, exchange, free_port, running_lb

from lb.observe import accesslog
from lb.observe.accesslog import FIELDS, AccessLog, Sink, Subset, format_all


def config(bes, port: int, admin: int, listeners: str) -> str:
    lines = "\n".join(f'      - "{b.address}"' for b in bes)
    return f"""\
listeners:
{listeners}
admin:
  bind: "127.0.0.1:{admin}"
services:
  app:
    backends:
{lines}
routes:
  - name: api
    match: {{path: {{prefix: /api}}}}
    service: app
"""


def listener(name: str, port: int, access_log: str) -> str:
    return f'  - name: {name}\n    bind: "127.0.0.1:{port}"\n    access_log: {access_log}\n'


async def read_lines(path, n: int, timeout: float = 3.0) -> list[dict]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        lines = [json.loads(line) for line in text.splitlines()]
        if len(lines) >= n or loop.time() > deadline:
            return lines
        await asyncio.sleep(0.02)


async def test_file_sink_writes_every_field(tmp_path):
    log = tmp_path / "access.log"
    port = free_port()
    async with backends(1) as bes:
        text = config(bes, port, free_port(), listener("web", port, f"{{path: {log}}}"))
        async with running_lb(tmp_path, text):
            c = await Client.connect(port)
            r = await c.request(path="/api/items?secret=1", headers="x-request-id: req-42\r\n")
            assert r.status == 200
            assert (await c.request(path="/elsewhere")).status == 404
            c.close()
            raw = await exchange(port, b"NOT HTTP\r\n\r\n", until_close=True)
            assert raw.startswith(b"HTTP/1.1 400")
            lines = await read_lines(log, 3)
    ok, missing, refused = lines
    assert list(ok) == list(FIELDS)
    stamp = datetime.fromisoformat(ok["timestamp"])
    assert stamp.tzinfo == UTC and ok["timestamp"].endswith("Z")
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 30
    assert ok["listener"] == "web"
    assert ok["client"] == "127.0.0.1"
    assert ok["method"] == "GET"
    assert ok["host"] == "test"
    assert ok["path"] == "/api/items"  # the query string stays out of the log
    assert ok["protocol"] == "HTTP/1.1"
    assert ok["status"] == 200
    assert ok["bytes"] == len(f"ok {bes[0].port}\n")
    assert ok["route"] == "api" and ok["service"] == "app"
    assert ok["backend"] == bes[0].address
    assert ok["retries"] == 0 and ok["failure"] is None
    assert ok["request_id"] == "req-42"
    assert 0 <= ok["upstream_ms"] <= ok["duration_ms"] < 5000
    assert missing["status"] == 404 and missing["route"] is None
    assert missing["backend"] is None and missing["upstream_ms"] is None
    assert refused["status"] == 400 and refused["failure"] == "refused"


async def test_fields_select_and_order(tmp_path):
    log = tmp_path / "access.log"
    port = free_port()
    al = f"{{path: {log}, fields: [status, path, backend]}}"
    async with (
        backends(1) as bes,
        running_lb(tmp_path, config(bes, port, free_port(), listener("web", port, al))),
    ):
        c = await Client.connect(port)
        await c.request(path="/api/a")
        c.close()
        (line,) = await read_lines(log, 1)
    assert list(line) == ["status", "path", "backend"]
    assert line == {"status": 200, "path": "/api/a", "backend": bes[0].address}


async def test_stdout_sink_and_per_listener_switch(tmp_path, capfd):
    on, off = free_port(), free_port()
    listeners = listener("loud", on, "{enabled: true}") + listener("quiet", off, "{enabled: false}")
    async with backends(1) as bes, running_lb(tmp_path, config(bes, on, free_port(), listeners)):
        for port in (on, off):
            c = await Client.connect(port)
            await c.request(path=f"/api/{port}")
            c.close()
        await asyncio.sleep(accesslog.FLUSH_DELAY * 4)
    out = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    assert [(e["listener"], e["path"]) for e in out] == [("loud", f"/api/{on}")]


async def test_reload_turns_the_log_on_and_off(tmp_path):
    log = tmp_path / "access.log"
    port, admin = free_port(), free_port()
    async with backends(1) as bes:
        quiet = config(bes, port, admin, listener("web", port, "{enabled: false}"))
        async with running_lb(tmp_path, quiet) as lb:
            observers = lb.server.runtime.observers
            assert not any(isinstance(o, AccessLog) for o in observers)
            lb.write_config(config(bes, port, admin, listener("web", port, f"{{path: {log}}}")))
            assert (await lb.server.reload())[0]
            assert any(isinstance(o, AccessLog) for o in observers)
            c = await Client.connect(port)
            await c.request(path="/api/after")
            c.close()
            assert [e["path"] for e in await read_lines(log, 1)] == ["/api/after"]
            lb.write_config(quiet)
            assert (await lb.server.reload())[0]
            assert not any(isinstance(o, AccessLog) for o in observers)


async def test_follows_logrotate_move_and_create(tmp_path, monkeypatch):
    monkeypatch.setattr(accesslog, "REOPEN_CHECK", 0.0)
    log = tmp_path / "access.log"
    port = free_port()
    async with (
        backends(1) as bes,
        running_lb(
            tmp_path, config(bes, port, free_port(), listener("web", port, f"{{path: {log}}}"))
        ),
    ):
        c = await Client.connect(port)
        await c.request(path="/api/before")
        assert len(await read_lines(log, 1)) == 1
        log.rename(tmp_path / "access.log.1")
        await c.request(path="/api/after")
        c.close()
        lines = await read_lines(log, 1)
    assert [e["path"] for e in lines] == ["/api/after"]
    rotated = (tmp_path / "access.log.1").read_text().splitlines()
    assert [json.loads(x)["path"] for x in rotated] == ["/api/before"]


async def test_stuck_sink_drops_and_counts_without_blocking(tmp_path, monkeypatch):
    monkeypatch.setattr(accesslog, "MAX_PENDING", 10)
    gate = threading.Event()
    sink = Sink(str(tmp_path / "slow.log"), asyncio.get_running_loop())
    real_write = sink._write

    def stuck_write(batch: list[str]) -> None:
        gate.wait(10)  # a disk or pipe that does not take data
        real_write(batch)

    monkeypatch.setattr(sink, "_write", stuck_write)
    sink.add("first\n")
    await asyncio.sleep(accesslog.FLUSH_DELAY * 3)
    assert sink.writing  # the first batch is stuck in the thread
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(25):
        sink.add(f"line {i}\n")
    assert loop.time() - t0 < 0.05  # the loop never waited for the sink
    assert len(sink.pending) == 10 and sink.dropped == 15
    gate.set()
    await sink.close()
    assert sink.written == 11
    assert (tmp_path / "slow.log").read_text().splitlines()[:2] == ["first", "line 0"]


async def test_write_errors_are_counted_and_logged_once(tmp_path, caplog):
    sink = Sink(str(tmp_path / "missing-dir" / "access.log"), asyncio.get_running_loop())
    for _ in range(3):
        sink.add("x\n")
        await asyncio.sleep(accesslog.FLUSH_DELAY * 2)
    await sink.close()
    assert sink.errors == 3 and sink.dropped == 3 and sink.written == 0
    assert [r.levelname for r in caplog.records] == ["ERROR"]  # once, not once per batch
    assert "missing-dir" in caplog.text


def test_fast_and_general_formatters_agree():
    nasty = 'quote " backslash \\ newline \n tab \t nul \x00 é 😀 </script>'
    rows = [
        ("2024-01-02T03:04:05.678Z", "web", "10.0.0.1", "GET", None, "/", "HTTP/1.1", 200, 12,
         0.125, 0.1, "r", "s", "10.0.0.2:80", 1, None, "id-1", None, None,
         "4bf92f3577b34da6a3ce929d0e0e4736"),
        ("2024-01-02T03:04:05.678Z", nasty, nasty, nasty, nasty, nasty, "HTTP/1.0", 0, 0,
         1e-05, None, nasty, nasty, nasty, 0, nasty, nasty, nasty, nasty, nasty),
        ("2024-01-02T03:04:05.678Z", "web", "::1", None, None, None, None, 400, 0, None, None,
         None, None, None, 0, "refused", None, "0", "ip_filter", None),
    ]  # fmt: skip
    general = Subset(FIELDS)
    for row in rows:
        fast = format_all(row)
        assert fast.endswith("\n") and "\n" not in fast[:-1]
        assert fast.isascii()
        assert json.loads(fast) == json.loads(general(row)) == dict(zip(FIELDS, row, strict=True))
        assert list(json.loads(fast)) == list(FIELDS)
