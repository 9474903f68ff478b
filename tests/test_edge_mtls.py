"""Client certificates on TLS listeners: require, request and none, certificates that do not
verify, the verified subject forwarded (client copies removed) and matched by routes, curl
with --cert/--key, and a CA change on reload without rebinding."""

import asyncio
import ssl
import time
from pathlib import Path

import pytest
import trustme
from conftest import backends, free_port, read_response, running_lb

from lb.edge.mtls import describe


@pytest.fixture
def pki(tmp_path: Path) -> dict:
    """A server CA and certificate, a client CA with two clients, and a stranger CA."""
    server_ca, client_ca, stranger = trustme.CA(), trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("localhost", "127.0.0.1")
    files = {"cert": tmp_path / "server.pem", "key": tmp_path / "server.key"}
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    for name, ca in (("clients", client_ca), ("stranger", stranger)):
        ca.cert_pem.write_to_path(str(tmp_path / f"{name}-ca.pem"))
    return {
        "server_ca": server_ca,
        "alice": client_ca.issue_cert(
            "alice.example",
            common_name="alice",
            organization_name="Acme",
            organization_unit_name="Eng",
        ),
        "admin": client_ca.issue_cert(
            "admin.example",
            common_name="admin",
            organization_name="Acme",
            organization_unit_name="Ops",
        ),
        "mallory": stranger.issue_cert("alice.example", common_name="alice"),
        "ca_file": tmp_path / "clients-ca.pem",
        "stranger_ca_file": tmp_path / "stranger-ca.pem",
        **files,
    }


def config(
    port: int, admin: int, backend: str, pki: dict, client_auth: str | None, ca: Path | None = None
) -> str:
    auth = ""
    if client_auth is not None:
        auth = f'      client_auth: {{mode: {client_auth}, ca: "{ca or pki["ca_file"]}"}}\n'
    return f"""\
listeners:
  - name: https
    bind: "127.0.0.1:{port}"
    tls:
      certificates: [{{cert: "{pki["cert"]}", key: "{pki["key"]}"}}]
{auth}admin: {{bind: "127.0.0.1:{admin}"}}
services:
  app: {{backends: ["{backend}"]}}
  admins: {{backends: ["{backend}"]}}
routes:
  - name: admins
    match:
      path: {{prefix: /}}
      headers: [{{name: x-client-cert, regex: 'CN=admin[,"]'}}]
    service: admins
  - {{name: all, match: {{path: {{prefix: /}}}}, service: app}}
"""


def client_ctx(pki: dict, who: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    pki["server_ca"].configure_trust(ctx)
    if who is not None:
        pki[who].configure_cert(ctx)
    return ctx


async def tls_get(port: int, ctx: ssl.SSLContext, headers: str = "") -> int:
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    try:
        w.write(f"GET / HTTP/1.1\r\nhost: localhost\r\n{headers}\r\n".encode())
        return (await asyncio.wait_for(read_response(r), 5)).status
    finally:
        w.close()


async def refused(port: int, ctx: ssl.SSLContext) -> bool:
    """Whether the handshake (or, in TLS 1.3, the first read after it) fails."""
    try:
        await tls_get(port, ctx)
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError):
        return True
    return False


async def test_require_refuses_clients_without_a_verified_certificate(
    tmp_path: Path, pki: dict
) -> None:
    async with backends(1) as (be,):
        port = free_port()
        async with running_lb(tmp_path, config(port, free_port(), be.address, pki, "require")):
            assert await refused(port, client_ctx(pki, None))
            assert await refused(port, client_ctx(pki, "mallory"))  # another CA's certificate
            assert (
                await tls_get(port, client_ctx(pki, "alice"), "x-client-cert: CN=admin,\r\n") == 200
            )
            seen = be.seen[-1]
            forwarded = [v for n, v in seen.headers if n.lower() == "x-client-cert"]
            assert forwarded == [
                'Subject="CN=alice,OU=Eng,O=Acme";DNS=alice.example'
            ]  # theirs removed
            assert be.seen[-1].path == "/"


async def test_request_serves_clients_without_one_and_forwards_nothing(
    tmp_path: Path, pki: dict
) -> None:
    async with backends(1) as (be,):
        port = free_port()
        async with running_lb(tmp_path, config(port, free_port(), be.address, pki, "request")):
            assert await tls_get(port, client_ctx(pki, None), "x-client-cert: CN=admin,\r\n") == 200
            assert be.seen[-1].header("x-client-cert") is None  # a forged one is removed
            assert await refused(port, client_ctx(pki, "mallory"))  # presented, unverified
            assert await tls_get(port, client_ctx(pki, "alice")) == 200
            assert (
                be.seen[-1].header("x-client-cert")
                == 'Subject="CN=alice,OU=Eng,O=Acme";DNS=alice.example'
            )


async def test_none_asks_for_nothing(tmp_path: Path, pki: dict) -> None:
    async with backends(1) as (be,):
        port = free_port()
        async with running_lb(tmp_path, config(port, free_port(), be.address, pki, None)):
            assert await tls_get(port, client_ctx(pki, "alice")) == 200
            assert await tls_get(port, client_ctx(pki, None)) == 200


async def test_routes_match_the_forwarded_subject(tmp_path: Path, pki: dict) -> None:
    async with backends(1) as (be,):
        port = free_port()
        async with running_lb(
            tmp_path, config(port, free_port(), be.address, pki, "request")
        ) as lb:
            assert await tls_get(port, client_ctx(pki, "admin")) == 200
            assert await tls_get(port, client_ctx(pki, "alice")) == 200
            assert (
                await tls_get(port, client_ctx(pki, None), 'x-client-cert: Subject="CN=admin"\r\n')
                == 200
            )
            routed = [s.header("x-client-cert") for s in be.seen]
            assert routed == [
                'Subject="CN=admin,OU=Ops,O=Acme";DNS=admin.example',
                'Subject="CN=alice,OU=Eng,O=Acme";DNS=alice.example',
                None,
            ]
            table = lb.server.runtime.table
            host_headers = [
                (b"x-client-cert", b'Subject="CN=admin,OU=Ops,O=Acme";DNS=admin.example')
            ]
            assert table.lookup("localhost", b"GET", "/", "", host_headers).name == "admins"
            assert table.lookup("localhost", b"GET", "/", "", []).name == "all"


async def test_curl_with_cert_and_key(tmp_path: Path, pki: dict) -> None:
    cert, key, ca = tmp_path / "alice.pem", tmp_path / "alice.key", tmp_path / "server-ca.pem"
    pki["alice"].cert_chain_pems[0].write_to_path(str(cert))
    pki["alice"].private_key_pem.write_to_path(str(key))
    pki["server_ca"].cert_pem.write_to_path(str(ca))
    async with backends(1) as (be,):
        port = free_port()
        async with running_lb(tmp_path, config(port, free_port(), be.address, pki, "require")):
            base = [
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                "--cacert",
                str(ca),
            ]
            url = f"https://localhost:{port}/"
            resolve = ["--resolve", f"localhost:{port}:127.0.0.1"]

            async def curl(*extra: str) -> str:
                proc = await asyncio.create_subprocess_exec(
                    *base,
                    *resolve,
                    *extra,
                    url,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.DEVNULL,
                )
                out, _ = await asyncio.wait_for(proc.communicate(), 10)
                return out.decode()

            assert await curl("--cert", str(cert), "--key", str(key)) == "200"
            assert (
                be.seen[-1].header("x-client-cert")
                == 'Subject="CN=alice,OU=Eng,O=Acme";DNS=alice.example'
            )
            assert await curl() == "000"  # no certificate: no HTTP at all


async def test_http2_clients_forward_and_route_the_subject_too(tmp_path: Path, pki: dict) -> None:
    cert, key, ca = tmp_path / "admin.pem", tmp_path / "admin.key", tmp_path / "server-ca.pem"
    pki["admin"].cert_chain_pems[0].write_to_path(str(cert))
    pki["admin"].private_key_pem.write_to_path(str(key))
    pki["server_ca"].cert_pem.write_to_path(str(ca))
    async with backends(1) as (be,):
        port = free_port()
        text = config(port, free_port(), be.address, pki, "require").replace(
            "    tls:\n", "    protocols: [h2, http1]\n    tls:\n"
        )
        async with running_lb(tmp_path, text) as lb:
            proc = await asyncio.create_subprocess_exec(
                "curl", "-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}",
                "--http2", "--max-time", "5", "--cacert", str(ca), "--cert", str(cert),
                "--key", str(key), "--resolve", f"localhost:{port}:127.0.0.1",
                "-H", "x-client-cert: forged", f"https://localhost:{port}/",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(), 10)
            assert out.decode() == "2 200"
            forwarded = [v for n, v in be.seen[-1].headers if n.lower() == "x-client-cert"]
            assert forwarded == ['Subject="CN=admin,OU=Ops,O=Acme";DNS=admin.example']
            assert lb.server.runtime.services["admins"].backends  # routed by the subject
            assert (
                sum(b.selected for b in lb.server.runtime.services["admins"].backends.values()) == 1
            )


async def test_a_ca_change_reloads_without_rebinding(tmp_path: Path, pki: dict) -> None:
    async with backends(1) as (be,):
        port, admin = free_port(), free_port()
        async with running_lb(tmp_path, config(port, admin, be.address, pki, "require")) as lb:
            acceptor = lb.server.acceptors[("127.0.0.1", port)]
            socks = acceptor.socks
            assert await tls_get(port, client_ctx(pki, "alice")) == 200
            assert await refused(port, client_ctx(pki, "mallory"))
            text = config(port, admin, be.address, pki, "require", ca=pki["stranger_ca_file"])
            lb.config_path.write_text(text)
            ok, errors = await lb.server.reload()
            assert ok, errors
            assert lb.server.acceptors[("127.0.0.1", port)].socks is socks  # never rebound
            assert await tls_get(port, client_ctx(pki, "mallory")) == 200
            assert await refused(port, client_ctx(pki, "alice"))


async def test_a_ca_bundle_replaced_in_place_reloads_by_itself(tmp_path: Path, pki: dict) -> None:
    """What a certificate renewer does: the same path, new bytes, no edit of the YAML."""
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(Path(pki["ca_file"]).read_bytes())
    async with backends(1) as (be,):
        port, admin = free_port(), free_port()
        text = config(port, admin, be.address, pki, "require", ca=bundle)
        async with running_lb(tmp_path, text, watch_interval=0.1) as lb:
            assert await tls_get(port, client_ctx(pki, "alice")) == 200
            digest = lb.server.runtime.loaded.digest
            renewed = tmp_path / "bundle.new"
            renewed.write_bytes(Path(pki["stranger_ca_file"]).read_bytes())
            renewed.rename(bundle)  # atomically, as renewers and ConfigMaps do
            deadline = time.monotonic() + 5
            while lb.server.runtime.loaded.digest == digest and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert lb.server.reloads["success"] == 1
            assert await tls_get(port, client_ctx(pki, "mallory")) == 200
            assert await refused(port, client_ctx(pki, "alice"))


def test_describe_escapes_and_orders_like_rfc4514() -> None:
    cert = {
        "subject": (
            (("countryName", "FR"),),
            (("organizationName", 'A "B", C'),),
            (("commonName", "x;y"),),
        ),
        "subjectAltName": (
            ("DNS", "a.example"),
            ("URI", "spiffe://t/w;x"),
            ("email", "u@e"),
            ("IP Address", "10.0.0.1"),
        ),
    }
    assert describe(cert) == (
        b'Subject="CN=x\\\\;y,O=A \\\\\\"B\\\\\\"\\\\, C,C=FR";'
        b"DNS=a.example;URI=spiffe://t/w%3Bx;Email=u@e;IP=10.0.0.1"
    )
    assert describe({}) is None


def test_config_errors(tmp_path: Path, pki: dict) -> None:
    from lb.config import ConfigError, load

    text = config(8443, 9901, "127.0.0.1:1", pki, "require", ca=tmp_path / "missing.pem")
    text = text.replace("mode: require,", "mode: require, forward_header: host,")
    path = tmp_path / "lb.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(str(path))
    out = [str(p) for p in info.value.problems]
    assert any(
        p.startswith(f"{path}:6:") and "client_auth.ca" in p and "file not found" in p for p in out
    ), out
    assert any(
        p.startswith(f"{path}:6:") and "forward_header" in p and "lb itself reads" in p for p in out
    ), out
