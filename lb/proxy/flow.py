"""Why lb has stopped reading a client connection: a bit each, so that reading resumes only
once every reason has gone (`ClientConnection.pause_reading` / `resume_reading`)."""

PAUSE_UPSTREAM = 1  # the backend connection's write buffer is full
PAUSE_QUEUE = 2  # a pipelined request waits for the one before it to be answered
PAUSE_BUFFER = 4  # the request body lb holds while connecting is over its bound

# Why an exchange has stopped reading its backend (`Exchange.hold_upstream`), likewise a bit each.
HOLD_CLIENT = 1  # the client side cannot take more now
HOLD_ENCODER = 2  # a response chunk is being compressed off the loop (lb/compress/encoder.py)
