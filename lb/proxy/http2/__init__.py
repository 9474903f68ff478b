"""HTTP/2 toward clients (h2 over TLS by ALPN, h2c by prior knowledge), on lb._h2."""


def available() -> bool:
    """Whether lb._h2, the libnghttp2 binding, is built."""
    try:
        from lb import _h2  # noqa: F401
    except ImportError:
        return False
    return True
