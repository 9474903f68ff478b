"""Config of mode: tcp listeners, TLS passthrough, PROXY protocol and TCP health checks: what
loads, and every mistake named with its FILE:LINE:COL and field, by `load` and `lb check`."""

import subprocess
import sys
import textwrap

import pytest

from lb.config import ConfigError, load

CERT = f'{{cert: "{__file__}", key: "{__file__}"}}'  # files that exist: only tls: is wrong

GOOD = """\
listeners:
  - name: db
    bind: "127.0.0.1:5433"
    mode: tcp
    service: pg
    proxy_protocol: true
    trusted_proxies: ["10.0.0.0/8"]
    timeouts: {idle: 10m, drain: 5s, client_head: 2s}
    access_log: {fields: [client, backend, bytes_in, bytes_out, termination]}
  - name: tls
    bind: "127.0.0.1:8443"
    mode: tcp
    tls_passthrough: true
    sni_routes: {"api.example.com": api, "*.example.com": web}
    default_service: web
  - name: http
    bind: "127.0.0.1:8080"
services:
  pg:
    backends: ["10.0.0.5:5432"]
    proxy_protocol: v2
    health_check: {type: tcp, interval: 1s}
    circuit_breaker: {max_connections: 100}
  api: {backends: ["10.0.0.6:443"]}
  web: {backends: ["10.0.0.7:443"]}
  site: {backends: ["10.0.0.8:80"]}
routes:
  - name: all
    service: site
"""


def write(tmp_path, text):
    p = tmp_path / "lb.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def problems(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        load(str(write(tmp_path, text)), environ={})
    return [str(p) for p in info.value.problems]


def test_good_tcp_config_loads_with_defaults(tmp_path):
    cfg = load(str(write(tmp_path, GOOD)), environ={}).config
    db, tls, http = cfg.listeners
    assert (db.mode, db.service, db.proxy_protocol) == ("tcp", "pg", True)
    assert (db.timeouts.idle, db.timeouts.drain, db.timeouts.client_head) == (600, 5, 2)
    assert tls.tls_passthrough and tls.sni_routes["*.example.com"] == "web"
    assert tls.default_service == "web" and tls.timeouts.idle == 300  # the default: 5 minutes
    assert http.mode == "http" and not http.proxy_protocol
    assert cfg.services["pg"].proxy_protocol == "v2"
    assert cfg.services["pg"].health_check.type == "tcp"
    assert cfg.services["site"].proxy_protocol is None
    assert cfg.services["site"].health_check is None


# Each case: a replacement applied to GOOD, and (line, column, text) of the one problem.
CASES = {
    "tcp needs a service": (
        ("    service: pg\n    proxy_protocol", "    proxy_protocol"),
        (2, 5, "listeners[0]: a mode: tcp listener needs service: NAME, or tls_passthrough"),
    ),
    "unknown service": (
        ("    service: pg\n", "    service: pgg\n"),
        (5, 14, 'listeners[0].service: unknown service "pgg"'),
    ),
    "unknown sni service": (
        ('"api.example.com": api', '"api.example.com": apii'),
        (14, 17, 'listeners[1].sni_routes.api.example.com: unknown service "apii"'),
    ),
    "unknown default service": (
        ("default_service: web", "default_service: wbe"),
        (15, 22, 'listeners[1].default_service: unknown service "wbe"'),
    ),
    "mode typo": (
        ("mode: tcp\n    service: pg", "mode: udp\n    service: pg"),
        (4, 11, "listeners[0].mode: expected one of 'http', 'tcp', found \"udp\""),
    ),
    "tls on tcp": (
        ("    service: pg\n", f"    service: pg\n    tls: {{certificates: [{CERT}]}}\n"),
        (6, 10, "listeners[0].tls: tls applies to mode: http listeners"),
    ),
    "limits on tcp": (
        ("    service: pg\n", "    service: pg\n    limits: {max_header_size: 8KiB}\n"),
        (6, 13, "listeners[0].limits: limits applies to mode: http listeners"),
    ),
    "rate_limit on tcp": (
        ("    service: pg\n", "    service: pg\n    rate_limit: {rate: 10/s}\n"),
        (6, 17, "listeners[0].rate_limit: rate_limit applies to mode: http listeners"),
    ),
    "redirect on tcp": (
        ("    service: pg\n", "    service: pg\n    redirect_to_https: 443\n"),
        (6, 24, "listeners[0].redirect_to_https: redirect_to_https applies to mode: http"),
    ),
    "http timeout on tcp": (
        ("{idle: 10m,", "{keepalive_idle: 10m,"),
        (8, 15, "listeners[0].timeouts: timeouts.keepalive_idle applies to mode: http"),
    ),
    "service on http": (
        ('bind: "127.0.0.1:8080"\n', 'bind: "127.0.0.1:8080"\n    service: site\n'),
        (18, 14, "listeners[2].service: service applies to mode: tcp listeners"),
    ),
    "sni_routes on http": (
        ('bind: "127.0.0.1:8080"\n', 'bind: "127.0.0.1:8080"\n    sni_routes: {a.io: site}\n'),
        (18, 17, "listeners[2].sni_routes: sni_routes applies to mode: tcp listeners"),
    ),
    "idle on http": (
        ('bind: "127.0.0.1:8080"\n', 'bind: "127.0.0.1:8080"\n    timeouts: {idle: 5s}\n'),
        (18, 15, "listeners[2].timeouts: timeouts.idle applies to mode: tcp listeners"),
    ),
    "proxy_protocol on http": (
        (
            'bind: "127.0.0.1:8080"\n',
            'bind: "127.0.0.1:8080"\n    proxy_protocol: true\n    trusted_proxies: [10.0.0.1]\n',
        ),
        (18, 21, "listeners[2].proxy_protocol: proxy_protocol is supported on mode: tcp"),
    ),
    "proxy_protocol without trusted proxies": (
        ('    trusted_proxies: ["10.0.0.0/8"]\n', ""),
        (6, 21, "listeners[0].proxy_protocol: proxy_protocol needs trusted_proxies"),
    ),
    "sni_routes without passthrough": (
        ("    service: pg\n", "    service: pg\n    sni_routes: {a.io: pg}\n"),
        (6, 17, "listeners[0].sni_routes: sni_routes needs tls_passthrough: true"),
    ),
    "passthrough with service": (
        ("    default_service: web\n", "    default_service: web\n    service: web\n"),
        (16, 14, "listeners[1].service: with tls_passthrough, use sni_routes and default_service"),
    ),
    "passthrough with nothing to route by": (
        (
            '    sni_routes: {"api.example.com": api, "*.example.com": web}\n'
            "    default_service: web\n",
            "",
        ),
        (10, 5, "listeners[1].sni_routes: tls_passthrough needs sni_routes or a default_service"),
    ),
    "bad sni pattern": (
        ('"*.example.com": web', '"a.*.example.com": web'),
        (14, 17, 'listeners[1].sni_routes: expected a host name or "*.example.com"'),
    ),
    "sni pattern twice": (
        ('"*.example.com": web', '"API.example.com": web'),
        (14, 17, 'listeners[1].sni_routes: "API.example.com" is given twice'),
    ),
    "bad proxy_protocol version": (
        ("proxy_protocol: v2", "proxy_protocol: v3"),
        (21, 21, "services.pg.proxy_protocol: expected one of 'v1', 'v2', found \"v3\""),
    ),
    "proxy_protocol service behind routes": (
        ("    service: site\n", "    service: pg\n"),
        (21, 21, "services.pg.proxy_protocol: only tcp listeners send the PROXY header"),
    ),
    "tls service behind a tcp listener": (
        ("  api: {backends:", "  api: {tls: {verify: false}, backends:"),
        (24, 14, "services.api.tls: a tcp listener forwards bytes as they are"),
    ),
    "tcp health check with a path": (
        ("{type: tcp, interval: 1s}", "{type: tcp, path: /x}"),
        (22, 37, "services.pg.health_check.path: path applies to type: http health checks"),
    ),
    "http field in a tcp access log": (
        ("fields: [client,", "fields: [method, client,"),
        (9, 17, 'listeners[0].access_log: "method" is not an access-log field of mode: tcp'),
    ),
    "unknown access-log field": (
        ("fields: [client,", "fields: [clinet,"),
        (9, 26, 'listeners[0].access_log.fields: unknown access-log field "clinet"'),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_mistake_is_named_with_its_place(tmp_path, case):
    (old, new), (line, col, text) = CASES[case]
    assert old in GOOD, case
    out = problems(tmp_path, GOOD.replace(old, new, 1))
    assert len(out) == 1, out
    where = f"{tmp_path / 'lb.yaml'}:{line}:{col}: "
    assert out[0].startswith(where + text), (out[0], where + text)


def test_tcp_access_log_field_on_an_http_listener(tmp_path):
    text = GOOD.replace(
        'bind: "127.0.0.1:8080"\n',
        'bind: "127.0.0.1:8080"\n    access_log: {fields: [bytes_in]}\n',
    )
    (out,) = problems(tmp_path, text)
    assert 'listeners[2].access_log: "bytes_in" is not an access-log field of mode: http' in out


def test_lb_check_reports_tcp_mistakes(tmp_path):
    bad = GOOD.replace("    service: pg\n", "    service: nope\n").replace(
        "    default_service: web\n",
        f"    default_service: web\n    tls: {{certificates: [{CERT}]}}\n",
    )
    path = write(tmp_path, bad)
    run = subprocess.run(
        [sys.executable, "-m", "lb", "check", "-c", str(path)], capture_output=True, text=True
    )
    assert run.returncode == 1, run.stdout + run.stderr
    out = run.stdout + run.stderr
    assert f'{path}:5:14: listeners[0].service: unknown service "nope"' in out
    assert "listeners[1].tls: tls applies to mode: http listeners" in out
    good = subprocess.run(
        [sys.executable, "-m", "lb", "check", "-c", str(write(tmp_path, GOOD))],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0, good.stdout + good.stderr
