"""An exchange's phases (exchange.py says what each means), in a module of their own so
that the modules the exchange calls can name them without importing it."""

HEAD, ADMITTED, CONNECTING, SENT, STREAMING, TUNNEL, DONE = range(7)
