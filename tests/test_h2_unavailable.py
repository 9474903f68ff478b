"""lb built without lb._h2 (no libnghttp2-dev): `h2` in a listener's protocols is a config
error naming HTTP/2 as unavailable, `lb version` says so, and HTTP/1.1 works as ever."""

import asyncio
import os
import subprocess
import sys

import pytest
from conftest import Client, backends, free_port, lb_yaml, running_lb

import lb
from lb.cli import main
from lb.config import ConfigError, load
from lb.proxy.http2 import available


@pytest.fixture
def no_h2(monkeypatch):
    # An entry of None makes `import lb._h2` raise ImportError; the attribute must go too, or
    # `from lb import _h2` finds the module already imported on the package.
    monkeypatch.setitem(sys.modules, "lb._h2", None)
    monkeypatch.delattr(lb, "_h2", raising=False)
    assert not available()


def _config(tmp_path, protocols: str, backend: str = "127.0.0.1:1") -> str:
    text = lb_yaml(
        [backend],
        port=free_port(),
        admin_port=free_port(),
        extra_listener=f"    protocols: {protocols}\n",
    )
    path = tmp_path / "lb.yaml"
    path.write_text(text)
    return str(path)


def test_h2_in_protocols_fails_check(tmp_path, no_h2, capsys):
    for protocols in ("[http1, h2]", "[h2]"):
        path = _config(tmp_path, protocols)
        assert main(["check", "-c", path]) == 1
        out = capsys.readouterr().out
        assert "HTTP/2 unavailable" in out and "protocols" in out, out
        assert ": ok" not in out
        with pytest.raises(ConfigError) as info:
            load(path)
        assert any("HTTP/2 unavailable" in str(p) for p in info.value.problems)


def test_version_says_unavailable(no_h2, capsys):
    assert main(["version"]) == 0
    out = capsys.readouterr().out
    assert "HTTP/2: unavailable" in out and "libnghttp2" in out


def test_http1_only_config_checks(tmp_path, no_h2, capsys):
    path = _config(tmp_path, "[http1]")
    assert main(["check", "-c", path]) == 0
    assert capsys.readouterr().out.strip().endswith(": ok")


async def test_http1_only_config_serves(tmp_path, no_h2):
    async with backends(1) as bes:
        text = lb_yaml([bes[0].address], port=free_port(), admin_port=free_port())
        async with running_lb(tmp_path, text) as balancer:
            c = await Client.connect(balancer.port)
            r = await c.request()
            assert r.status == 200 and r.body == f"ok {bes[0].port}\n".encode()
            # An HTTP/2 preface on an HTTP/1.1-only listener is no request: 400 or a close.
            c.close()
            c = await Client.connect(balancer.port)
            c.writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            answer = await asyncio.wait_for(c.reader.read(), 5)  # to lb's close
            assert answer == b"" or answer.startswith((b"HTTP/1.1 4", b"HTTP/1.1 5")), answer
            c.close()
    assert "lb._h2" not in sys.modules or sys.modules["lb._h2"] is None


# A fresh interpreter where lb._h2 was never imported: what an lb built without it sees.
_BLOCK = "import sys; sys.modules['lb._h2'] = None; from lb.cli import main; sys.exit(main(%r))"


def _lb(args: list[str]) -> subprocess.CompletedProcess:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(
        [sys.executable, "-c", _BLOCK % (args,)],
        capture_output=True,
        text=True,
        timeout=20,
        cwd=root,
    )


def test_in_a_fresh_process(tmp_path):
    out = _lb(["version"])
    assert out.returncode == 0 and "HTTP/2: unavailable" in out.stdout, out
    out = _lb(["check", "-c", _config(tmp_path, "[http1, h2]")])
    assert out.returncode == 1 and "HTTP/2 unavailable" in out.stdout, out
    out = _lb(["check", "-c", _config(tmp_path, "[http1]")])
    assert out.returncode == 0 and out.stdout.strip().endswith(": ok"), out
