"""Response compression per route (`routes[].compress`): negotiated from Accept-Encoding,
streamed chunk by chunk, large chunks off the loop. install.py wires it in."""
