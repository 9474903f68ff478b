"""Layer-4 listeners (`mode: tcp`): bytes forwarded as they are, to a service's backends.

- `listener.py`: `TcpListenerRuntime`, a tcp listener's settings and connections;
- `proxy.py`: `TcpConnection`, one client connection and its backend connection, spliced;
- `dial.py`: caps, breakers, the least-connections pick, connect timeout and retries;
- `sni.py`: the server name of a TLS ClientHello (TLS passthrough), without terminating TLS;
- `proxy_protocol.py`: PROXY protocol v1/v2, parsed from trusted proxies and sent to backends.

Pure Python: the per-byte work is the kernel's, and a connection costs a few calls per chunk.
"""
