"""The YAML: every error names FILE:LINE:COL and the field; units, env, directories, `lb check`."""

import subprocess
import sys
import textwrap

import pytest

from lb.config import ConfigError, load
from lb.config.units import parse_duration, parse_rate, parse_size

GOOD = """\
listeners:
  - name: web
    bind: "127.0.0.1:8080"
services:
  app:
    backends: ["127.0.0.1:9001"]
routes:
  - name: all
    service: app
"""


def write(tmp_path, text, name="lb.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def problems(tmp_path, text, env=None):
    with pytest.raises(ConfigError) as info:
        load(str(write(tmp_path, text)), environ=env or {})
    return [str(p) for p in info.value.problems]


def test_units():
    assert parse_duration("250ms") == 0.25
    assert parse_duration("1m30s") == 90
    assert parse_duration("2h") == 7200
    assert parse_size("64KiB") == 65536
    assert parse_size("10MiB") == 10 << 20
    assert parse_size("1GB") == 10**9
    assert parse_rate("100/s") == (100, 1)
    assert parse_rate("6000/1m") == (6000, 60)
    for bad, fn in (("10x", parse_duration), ("5 parsecs", parse_size), ("fast", parse_rate)):
        with pytest.raises(ValueError):
            fn(bad)


def test_good_config_loads(tmp_path):
    loaded = load(str(write(tmp_path, GOOD)), environ={})
    assert loaded.config.listeners[0].bind == ("127.0.0.1", 8080)
    assert loaded.config.services["app"].backends[0].address == ("127.0.0.1", 9001)
    assert len(loaded.digest) == 64


def test_unknown_key_with_did_you_mean_and_position(tmp_path):
    out = problems(
        tmp_path, GOOD.replace("    bind:", "    timeouts: {keepalive_idl: 3s}\n    bind:")
    )
    assert out == [
        f"{tmp_path}/lb.yaml:3:16: listeners[0].timeouts.keepalive_idl: unknown key "
        '(did you mean "keepalive_idle"?)'
    ]


def test_every_error_is_reported_with_expected_and_found(tmp_path):
    text = GOOD + "    max_body_size: lots\n  - name: all\n    service: nope\n"
    text = text.replace(
        'backends: ["127.0.0.1:9001"]', 'backends: ["127.0.0.1"]\n    slow_start: 10x'
    )
    out = "\n".join(problems(tmp_path, text))
    assert 'services.app.backends[0]: expected an address "host:port", found "127.0.0.1"' in out
    assert 'services.app.slow_start: expected a duration like "250ms"' in out
    assert 'routes[0].max_body_size: expected a size like "64KiB"' in out
    assert 'routes[1].name: duplicate "all"' in out
    assert 'routes[1].service: unknown service "nope"' in out
    for line in out.splitlines():
        assert line.startswith(f"{tmp_path}/lb.yaml:")


def test_types_and_choices(tmp_path):
    text = GOOD + "    retries: {attempts: many, on: [sometimes]}\n"
    out = "\n".join(problems(tmp_path, text))
    assert 'routes[0].retries.attempts: expected an integer, found "many"' in out
    assert "routes[0].retries.on[0]: expected one of" in out


def test_grpc_status_retries_by_name_or_code(tmp_path):
    text = GOOD + "    retries: {grpc_status: [unavailable, RESOURCE_EXHAUSTED, 4]}\n"
    loaded = load(str(write(tmp_path, text)), environ={})
    assert loaded.config.routes[0].retries.grpc_status == [14, 8, 4]
    bad = "    retries:\n      grpc_status: [unavailable, unavialable, 0, 17]\n"
    out = problems(tmp_path, GOOD + bad)
    assert len(out) == 3, out
    assert out[0].startswith(
        f"{tmp_path}/lb.yaml:11:34: routes[0].retries.grpc_status[1]: expected a gRPC status ("
    )
    assert "resource-exhausted" in out[0]
    assert out[0].endswith('found "unavialable" (did you mean "unavailable"?)')
    assert "grpc_status[2]" in out[1] and 'found "0"' in out[1]
    assert "grpc_status[3]" in out[2] and 'found "17"' in out[2]


def test_route_needs_exactly_one_action(tmp_path):
    out = problems(tmp_path, GOOD + "    respond: {status: 503}\n")
    assert any("exactly one action" in p for p in out)


def test_yaml_syntax_error_has_position(tmp_path):
    out = problems(tmp_path, "listeners: [\n  {name: web\n")
    assert out[0].startswith(f"{tmp_path}/lb.yaml:") and "YAML:" in out[0]


def test_env_interpolation(tmp_path):
    text = GOOD.replace('"127.0.0.1:8080"', '"127.0.0.1:${PORT:-8081}"').replace(
        "127.0.0.1:9001", "${BACKEND}"
    )
    loaded = load(str(write(tmp_path, text)), environ={"BACKEND": "10.0.0.1:80"})
    assert loaded.config.listeners[0].bind == ("127.0.0.1", 8081)
    assert loaded.config.services["app"].backends[0].address == ("10.0.0.1", 80)
    out = problems(tmp_path, text)
    assert any("environment variable BACKEND is not set" in p for p in out)


def test_directory_merges_in_name_order_and_names_duplicates(tmp_path):
    d = tmp_path / "conf.d"
    d.mkdir()
    write(d, 'listeners:\n  - name: web\n    bind: "127.0.0.1:8080"\n', "00-listeners.yaml")
    write(d, 'services:\n  app:\n    backends: ["127.0.0.1:9001"]\n', "10-app.yaml")
    write(d, "routes:\n  - name: all\n    service: app\n", "20-routes.yaml")
    loaded = load(str(d), environ={})
    assert [f.rsplit("/", 1)[1] for f in loaded.files] == [
        "00-listeners.yaml",
        "10-app.yaml",
        "20-routes.yaml",
    ]
    write(d, 'services:\n  app:\n    backends: ["127.0.0.1:9002"]\n', "30-dup.yaml")
    with pytest.raises(ConfigError) as info:
        load(str(d), environ={})
    msg = str(info.value)
    assert "30-dup.yaml:2:3: services.app: duplicate name, also defined at" in msg
    assert "10-app.yaml:2:3" in msg


def lb_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "lb", *args], capture_output=True, text=True, timeout=60
    )


def test_lb_check_exit_codes(tmp_path):
    good = write(tmp_path, GOOD, "good.yaml")
    r = lb_cli("check", "-c", str(good))
    assert r.returncode == 0 and "ok" in r.stdout
    bad = write(tmp_path, GOOD.replace("service: app", "servce: app"), "bad.yaml")
    r = lb_cli("check", "-c", str(bad))
    assert r.returncode == 1
    assert f'{bad}:9:5: routes[0].servce: unknown key (did you mean "service"?)' in r.stdout


def test_lb_check_warns_about_shadowed_route(tmp_path):
    text = GOOD + "  - name: api\n    match: {path: {prefix: /api}}\n    service: app\n"
    text = text.replace(
        "  - name: all\n    service: app\n", "  - name: all\n    priority: 10\n    service: app\n"
    )
    r = lb_cli("check", "-c", str(write(tmp_path, text)))
    assert r.returncode == 0
    assert "route api: warning" not in r.stdout
    assert 'can never match: route "all" always matches first' in r.stdout


def test_lb_version():
    r = lb_cli("version")
    assert r.returncode == 0
    assert "event loop: uvloop" in r.stdout and "picker:" in r.stdout


def test_access_log_fields_are_checked(tmp_path):
    text = GOOD.replace(
        '    bind: "127.0.0.1:8080"',
        '    bind: "127.0.0.1:8080"\n    access_log: {fields: [status, methd]}',
    )
    out = problems(tmp_path, text)
    assert out == [
        f"{tmp_path}/lb.yaml:4:26: listeners[0].access_log.fields: unknown access-log "
        'field "methd" (did you mean "method"?)'
    ]
