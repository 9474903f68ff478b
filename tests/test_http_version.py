"""The HTTP version as the request path reads it: from the parser's keep-alive verdict, and
from the parser's version string only when Connection names close or keep-alive."""

from types import SimpleNamespace

import pytest

from lb.proxy.headers import BadRequest, analyze_request, http10_rules, is_http10


def _version_never_asked() -> str:
    raise AssertionError("the version string was asked for without need")


@pytest.mark.parametrize(
    ("headers", "keep_alive", "version", "http10"),
    [
        ([(b"Host", b"a")], True, None, False),  # 1.1, nothing said: alive
        ([], False, None, True),  # 1.0, nothing said: not alive
        ([(b"Connection", b"close")], False, "1.1", False),
        ([(b"Connection", b"keep-alive")], True, "1.0", True),
        ([(b"Connection", b"Keep-Alive, foo")], True, "1.0", True),
        ([(b"connection", b"CLOSE")], False, "1.0", True),
        ([(b"Connection", b"upgrade")], True, None, False),  # no close/keep-alive token
        ([(b"Connection", b"close")], False, "0.9", True),
    ],
)
def test_version(headers, keep_alive, version, http10):
    info = analyze_request(headers)
    ask = _version_never_asked if version is None else (lambda: version)
    assert is_http10(info, keep_alive, SimpleNamespace(get_http_version=ask)) is http10


def test_http10_rules():
    info = analyze_request([(b"Expect", b"100-continue")])
    assert info.expect_continue
    http10_rules(info)
    assert not info.expect_continue  # HTTP/1.0 knows no 1xx
    with pytest.raises(BadRequest):
        http10_rules(analyze_request([(b"Transfer-Encoding", b"chunked")]))


@pytest.mark.parametrize(
    "name",
    [b"Host", b"HOST", b"content-length", b"Transfer-Encoding", b"X-Forwarded-For", b"TE"],
)
def test_special_names_pass_the_filter_in_any_case(name):
    """The first-byte filter must let every spelling of a special name through to the set."""
    value = b"chunked" if name.lower() == b"transfer-encoding" else b"1"
    info = analyze_request([(name, value)])
    assert all(n != name for n, _ in info.forward)
