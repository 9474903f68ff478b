"""The outbox: what connections write during a loop iteration leaves at its end, one system
call per connection, and one broken connection cannot keep the others' output back."""

import asyncio

from lb.proxy.outbox import WRITE_THROUGH, Outbox, Writer


class Transport:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[bytes] = []
        self.fail = fail
        self.aborted = False

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("broken")
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


def writer(outbox: Outbox, transport: Transport) -> Writer:
    w = Writer(outbox)
    w.transport = transport
    return w


async def test_writes_leave_together_at_the_end_of_the_iteration() -> None:
    outbox = Outbox(asyncio.get_running_loop())
    a, b = Transport(), Transport()
    wa, wb = writer(outbox, a), writer(outbox, b)
    wa.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    wb.write(b"one")
    wa.write(b"HTTP/1.1 200 OK\r\n")
    assert a.sent == [] and b.sent == []  # nothing before the iteration ends
    await asyncio.sleep(0)
    assert a.sent == [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"]  # one write
    assert b.sent == [b"one"]
    wb.write(b"two")
    await asyncio.sleep(0)
    assert b.sent == [b"one", b"two"]


async def test_an_early_flush_and_an_abort() -> None:
    outbox = Outbox(asyncio.get_running_loop())
    t = Transport()
    w = writer(outbox, t)
    w.write(b"last words")
    w.flush()  # what a close does before closing the transport
    assert t.sent == [b"last words"]
    w.write(b"never sent")
    w.discard_output()  # what an abort does
    await asyncio.sleep(0)
    assert t.sent == [b"last words"]


async def test_a_failing_connection_does_not_hold_back_the_others() -> None:
    outbox = Outbox(asyncio.get_running_loop())
    bad, good = Transport(fail=True), Transport()
    writer(outbox, bad).write(b"x")
    writer(outbox, good).write(b"y")
    await asyncio.sleep(0)
    assert bad.aborted
    assert good.sent == [b"y"]


async def test_a_large_write_goes_through_at_once() -> None:
    """Streamed bodies meet the transport's flow control as soon as they would without the
    outbox: nothing from WRITE_THROUGH bytes on waits for the end of the iteration."""
    outbox = Outbox(asyncio.get_running_loop())
    t = Transport()
    w = writer(outbox, t)
    w.write(b"head")
    w.write(b"b" * WRITE_THROUGH)
    assert t.sent == [b"head" + b"b" * WRITE_THROUGH]
    w.write(b"tail")
    await asyncio.sleep(0)
    assert t.sent[1:] == [b"tail"]
