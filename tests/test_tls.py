"""TLS listeners (SNI, minimum version, ALPN, reload), HTTP→HTTPS redirect, TLS to backends."""

import asyncio
import ssl

import pytest
import trustme
from conftest import backends, free_port, ok_response, read_request, read_response, running_lb


@pytest.fixture
def ca():
    return trustme.CA()


def write_cert(ca, tmp_path, name, *hosts):
    cert = ca.issue_cert(*hosts)
    c, k = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    c.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    k.write_bytes(cert.private_key_pem.bytes())
    return c, k


def client_ctx(ca, *, max_version=None):
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


async def tls_get(port, ctx, sni, path="/"):
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni)
    obj = w.get_extra_info("ssl_object")
    w.write(f"GET {path} HTTP/1.1\r\nhost: {sni}\r\n\r\n".encode())
    resp = await asyncio.wait_for(read_response(r), 5)
    peer = obj.getpeercert()
    alpn = obj.selected_alpn_protocol()
    w.close()
    return resp, peer, alpn


def config(port, plain_port, admin_port, backend, certs, min_version="1.2"):
    cert_yaml = "\n".join(f'          - {{cert: "{c}", key: "{k}"}}' for c, k in certs)
    return f"""\
listeners:
  - name: https
    bind: "127.0.0.1:{port}"
    tls:
      min_version: "{min_version}"
      certificates:
{cert_yaml}
  - name: http
    bind: "127.0.0.1:{plain_port}"
    redirect_to_https: {port}
admin: {{bind: "127.0.0.1:{admin_port}"}}
services:
  app: {{backends: ["{backend}"]}}
routes:
  - {{name: all, service: app}}
"""


def subject_names(peer):
    return {v for k, v in peer.get("subjectAltName", ())}


async def test_sni_alpn_forwarded_proto_and_redirect(tmp_path, ca):
    a = write_cert(ca, tmp_path, "a", "a.example.com")
    b = write_cert(ca, tmp_path, "b", "*.b.example.com")
    async with backends(1) as bes:
        port, plain = free_port(), free_port()
        async with running_lb(tmp_path, config(port, plain, free_port(), bes[0].address, [a, b])):
            ctx = client_ctx(ca)
            resp, peer, alpn = await tls_get(port, ctx, "a.example.com")
            assert resp.status == 200 and alpn == "http/1.1"
            assert subject_names(peer) == {"a.example.com"}
            _, peer, _ = await tls_get(port, ctx, "x.b.example.com")
            assert subject_names(peer) == {"*.b.example.com"}
            assert bes[0].seen[-1].header("x-forwarded-proto") == "https"
            r, w = await asyncio.open_connection("127.0.0.1", plain)
            w.write(b"GET /cart?id=1 HTTP/1.1\r\nhost: shop.example.com\r\n\r\n")
            redirect = await asyncio.wait_for(read_response(r), 5)
            assert redirect.status == 308
            assert redirect.header("location") == f"https://shop.example.com:{port}/cart?id=1"
            w.close()


async def test_minimum_version_refuses_older_clients(tmp_path, ca):
    a = write_cert(ca, tmp_path, "a", "a.example.com")
    async with backends(1) as bes:
        port = free_port()
        cfg = config(port, free_port(), free_port(), bes[0].address, [a], min_version="1.3")
        async with running_lb(tmp_path, cfg):
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await tls_get(
                    port, client_ctx(ca, max_version=ssl.TLSVersion.TLSv1_2), "a.example.com"
                )
            resp, _, _ = await tls_get(port, client_ctx(ca), "a.example.com")
            assert resp.status == 200


async def test_certificates_reload_without_rebinding(tmp_path, ca):
    old = write_cert(ca, tmp_path, "old", "a.example.com")
    async with backends(1) as bes:
        port, plain, admin = free_port(), free_port(), free_port()
        async with running_lb(tmp_path, config(port, plain, admin, bes[0].address, [old])) as lb:
            _, peer, _ = await tls_get(port, client_ctx(ca), "a.example.com")
            first_serial = peer["serialNumber"]
            new = write_cert(ca, tmp_path, "new", "a.example.com", "c.example.com")
            lb.config_path.write_text(config(port, plain, admin, bes[0].address, [new]))
            ok, errors = await lb.server.reload()
            assert ok, errors
            _, peer, _ = await tls_get(port, client_ctx(ca), "c.example.com")
            assert peer["serialNumber"] != first_serial
            assert "c.example.com" in subject_names(peer)


async def test_backend_over_tls_verifies_ca_and_sends_sni(tmp_path, ca):
    server_cert = ca.issue_cert("backend.internal")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_cert.configure_cert(server_ctx)
    seen_sni = []
    server_ctx.sni_callback = lambda sock, name, ctx: seen_sni.append(name)

    async def handler(reader, writer):
        req = await read_request(reader)
        if req is not None:
            writer.write(ok_response(b"secure backend"))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=server_ctx)
    bport = server.sockets[0].getsockname()[1]
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    cfg = f"""\
listeners: [{{name: web, bind: "127.0.0.1:{port}"}}]
admin: {{bind: "127.0.0.1:{free_port()}"}}
services:
  app:
    backends: ["127.0.0.1:{bport}"]
    tls: {{ca: "{ca_file}", sni: backend.internal}}
  wrong:
    backends: ["127.0.0.1:{bport}"]
    tls: {{sni: backend.internal}}
routes:
  - {{name: wrong, match: {{path: {{prefix: /wrong}}}}, service: wrong}}
  - {{name: all, service: app}}
"""
    try:
        async with running_lb(tmp_path, cfg):
            r, w = await asyncio.open_connection("127.0.0.1", port)
            w.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            resp = await asyncio.wait_for(read_response(r), 5)
            assert resp.body == b"secure backend" and seen_sni == ["backend.internal"]
            w.write(b"GET /wrong HTTP/1.1\r\nhost: x\r\n\r\n")
            resp = await asyncio.wait_for(read_response(r), 5)
            assert resp.status == 502  # the system trust store does not know this CA
            w.close()
    finally:
        server.close()
