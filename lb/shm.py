"""Memory shared by the worker processes of `lb run --workers N`: in-flight counts per backend
and rate-limit state, so that N workers pick backends and limit clients as one.

The supervisor creates the segment (a file under /dev/shm, mapped by every process) before it
starts the workers; each worker maps it and `activate`s it before building its services. The
segment is a flat array of int64 words, all zero when created:

    header          8 words: magic, version, workers, counter_rows, named_rows, gcra_rows,
                    client_rows
    counters        counter_rows rows of [key, total, own_0, ..., own_(workers-1)]
    named GCRA      named_rows rows of [key, TAT bits]: each limiter's overflow bucket
    keyed GCRA      gcra_rows rows of [key, TAT bits]: one per (limiter, client key)
    client counts   client_rows rows of [key|count, own_0, ..., own_(workers-1)]

In-flight counts. A backend's row is found by a 63-bit hash of "service\\nhost:port" with
linear probing, and claimed by a compare-and-swap of the key word from 0, so every worker finds
the same row whatever picker slot it gave the backend. The compiled picker adds to `total` with
atomic instructions on every pick and release (`Picker.attach`) and mirrors its own count into
its worker's `own` column; when a worker dies, the supervisor subtracts that column from the
totals (`Segment.forget_worker`), so a crash does not leave phantom requests behind. Rows are
never freed: the table holds every (service, backend) pair seen while the supervisor lives, and
a backend that finds it full (16,384 pairs by default) is counted per worker, with a warning.
Two pairs whose hashes collide (odds about 1 in 10^11 for 16,384 pairs) would share a count.
A service whose consistent hashing bounds loads also counts its requests over all its backends
in a row of its own (`attach_service`: "service\n" with no backend, which no backend's key
can be), that bound's total; its worker columns are withdrawn on a crash like the others.

Rate limits. `SharedGcra` keeps one GCRA TAT per (limiter name, client key hash), decided and
updated in one CAS loop in C, so concurrent requests of one client in different workers are
serialised. A key looks at 16 rows from its hash; when they all hold other live keys, a row
whose TAT has passed is taken over (such a key is indistinguishable from a new one), and when
none has, the request is judged against the limiter's own overflow bucket: during a flood of
distinct keys the flood as a whole gets one client's allowance (the same rule as
`lb.traffic.ratelimit.LocalLimiter`). One race is accepted: a key whose row is taken over at
the very moment its TAT is renewed starts afresh, as an evicted key would. Callers pass a hash
of the client key; `lb.traffic.shared_ratelimit.SharedLimiter` (LocalLimiter's interface over
this table) uses `hash()`, which the supervisor makes agree across workers by giving them all
the same PYTHONHASHSEED.

Counts per client. The edge's per-client caps (connections per client address on a listener,
requests in flight per client key on a route) count in `ClientCounts` rows: key and count share
one word, so a row is taken, counted in and, once its count is back to 0, free to be taken by
another key, each in one compare-and-swap; the same 16-row probe window as the rate limits bounds
the keys held at once. `own` columns are withdrawn when a worker dies, like the in-flight
counts. A key that finds no free row (more than `client_rows` clients at once, or a crowded
window) is counted in its worker only (lb.edge.client_caps). Keys are `hash()`es (the same
PYTHONHASHSEED in every worker) mixed to 39 bits; two clients whose keys collide share a count.

Times given to `SharedGcra` must come from one clock for all workers: the event loop's
`time()` (CLOCK_MONOTONIC under uvloop and asyncio on Linux) is.

The atomics live in the compiled `lb._shm` and `lb._picker`; without a C compiler there is no
multi-worker mode (`lb.workers` refuses it).
"""

from __future__ import annotations

import hashlib
import logging
import mmap
import os
import tempfile
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("lb.shm")

MAGIC = int.from_bytes(b"lbshm\x00\x00\x01", "little")
VERSION = 2
HEADER_WORDS = 8
COUNTER_ROWS = 16_384
NAMED_ROWS = 1_024
GCRA_ROWS = 131_072
GCRA_PROBES = 16
CLIENT_ROWS = 65_536
CLIENT_PROBES = 16
_MASK63 = (1 << 63) - 1


def key_hash(text: str) -> int:
    """A non-zero 63-bit key that every process computes alike (unlike `hash()` by default)."""
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return (h & _MASK63) or 1


@dataclass(frozen=True)
class Layout:
    workers: int
    counter_rows: int = COUNTER_ROWS
    named_rows: int = NAMED_ROWS
    gcra_rows: int = GCRA_ROWS
    client_rows: int = CLIENT_ROWS

    @property
    def counter_words(self) -> int:
        return 2 + self.workers

    @property
    def counters_at(self) -> int:
        return HEADER_WORDS

    @property
    def named_at(self) -> int:
        return self.counters_at + self.counter_rows * self.counter_words

    @property
    def gcra_at(self) -> int:
        return self.named_at + 2 * self.named_rows

    @property
    def clients_at(self) -> int:
        return self.gcra_at + 2 * self.gcra_rows

    @property
    def size(self) -> int:
        return 8 * (self.clients_at + (1 + self.workers) * self.client_rows)


def _cells(buffer: mmap.mmap) -> Any:
    from ._shm import Cells  # compiled; imported only where a segment is used

    return Cells(buffer)


def _client_counts(
    cells: Any, start: int, rows: int, workers: int, probes: int, worker: int
) -> Any:
    from ._shm import ClientCounts

    return ClientCounts(cells, start, rows, workers, probes, worker)


class Segment:
    """The mapped segment; `create` in the supervisor, `open` in a worker."""

    def __init__(self, path: str, buffer: mmap.mmap, layout: Layout) -> None:
        self.path = path
        self.buffer = buffer
        self.layout = layout
        self.cells = _cells(buffer)

    @classmethod
    def create(cls, layout: Layout, directory: str | None = None) -> Segment:
        if directory is None:
            directory = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        fd, path = tempfile.mkstemp(prefix=f"lb-{os.getpid()}-", dir=directory)
        try:
            os.ftruncate(fd, layout.size)  # zero-filled; pages are only used once touched
            buffer = mmap.mmap(fd, layout.size)
        finally:
            os.close(fd)
        seg = cls(path, buffer, layout)
        header = (
            MAGIC,
            VERSION,
            layout.workers,
            layout.counter_rows,
            layout.named_rows,
            layout.gcra_rows,
            layout.client_rows,
        )
        for i, value in enumerate(header):
            seg.cells.store(i, value)
        return seg

    @classmethod
    def open(cls, path: str) -> Segment:
        fd = os.open(path, os.O_RDWR)
        try:
            buffer = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        words = memoryview(buffer).cast("q")
        try:
            if words[0] != MAGIC or words[1] != VERSION:
                raise ValueError(f"{path} is not an lb shared segment of version {VERSION}")
            layout = Layout(words[2], words[3], words[4], words[5], words[6])
        finally:
            words.release()
        return cls(path, buffer, layout)

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    # -- in-flight counters ------------------------------------------------------------------
    def counter_row(self, service: str, backend: str) -> int | None:
        """Word index of the (service, backend) row, claimed if new; None when full."""
        lay = self.layout
        key = key_hash(f"{service}\n{backend}")
        row = self.cells.find_or_claim(
            lay.counters_at, lay.counter_rows, lay.counter_words, key, lay.counter_rows
        )
        return None if row < 0 else lay.counters_at + row * lay.counter_words

    def in_flight(self, service: str, backend: str) -> int:
        """Requests in flight to the backend across all workers (claims its row if new)."""
        row = self.counter_row(service, backend)
        return 0 if row is None else int(self.cells.load(row + 1))

    def client_counts(self, worker: int) -> Any:
        """Worker `worker`'s view of the counts per client (an `lb._shm.ClientCounts`)."""
        lay = self.layout
        return _client_counts(
            self.cells, lay.clients_at, lay.client_rows, lay.workers, CLIENT_PROBES, worker
        )

    def forget_worker(self, worker: int) -> int:
        """Withdraw a dead worker's requests from every total, and what it held of the counts
        per client; returns how many requests there were."""
        lay, cells = self.layout, self.cells
        self.client_counts(worker).forget_worker(worker)
        gone = 0
        for row in range(lay.counters_at, lay.named_at, lay.counter_words):
            if cells.load(row) == 0:
                continue
            own = cells.load(row + 2 + worker)
            if own:
                cells.add(row + 1, -own)
                cells.store(row + 2 + worker, 0)
                gone += own
        return gone


class WorkerCounters:
    """One worker's view: attaches its pickers' slots to the shared rows."""

    def __init__(self, segment: Segment, worker: int) -> None:
        if not 0 <= worker < segment.layout.workers:
            raise ValueError(f"worker {worker} outside 0..{segment.layout.workers - 1}")
        self.segment = segment
        self.worker = worker
        self._warned = False

    def attach(self, picker: Any, slot: int, service: str, backend: str) -> None:
        row = self.segment.counter_row(service, backend)
        if row is None:
            if not self._warned:
                self._warned = True
                log.warning(
                    "shared in-flight table full (%d backends): %s/%s and later newcomers "
                    "are counted per worker",
                    self.segment.layout.counter_rows,
                    service,
                    backend,
                )
            return
        picker.attach(slot, self.segment.buffer, row + 1, row + 2 + self.worker)

    def attach_sum(self, picker: Any, service: str) -> None:
        row = self.segment.counter_row(service, "")
        if row is None:
            log.warning(
                "shared in-flight table full: %s's load bound counts this worker's requests",
                service,
            )
            return
        picker.attach_sum(self.segment.buffer, row + 1, row + 2 + self.worker)


_active: WorkerCounters | None = None


def activate(segment: Segment, worker: int) -> None:
    """Make this process a worker of `segment`: from now on new backends count in it."""
    global _active
    _active = WorkerCounters(segment, worker)


def active_segment() -> Segment | None:
    return _active.segment if _active is not None else None


def shared_client_counts() -> Any:
    """This worker's `ClientCounts`; None in a single process."""
    if _active is None:
        return None
    return _active.segment.client_counts(_active.worker)


def attach_backend(picker: Any, slot: int, service: str, address: tuple[str, int]) -> None:
    """Called by `Service.update` for each new backend; nothing happens in a single process."""
    if _active is not None:
        _active.attach(picker, slot, service, f"{address[0]}:{address[1]}")


def attach_service(picker: Any, service: str) -> None:
    """A bounded consistent-hash table's total: the service's requests in every worker (the
    row "service\n"); nothing happens in a single process."""
    if _active is not None:
        _active.attach_sum(picker, service)


# -- rate limits ----------------------------------------------------------------------------------
class SharedGcra:
    """The GCRA state of one limiter (`name`), shared by all workers."""

    def __init__(self, segment: Segment, name: str) -> None:
        lay = segment.layout
        self.name = name
        self._cells = segment.cells
        self._salt = key_hash(name)
        row = self._cells.find_or_claim(lay.named_at, lay.named_rows, 2, self._salt, lay.named_rows)
        if row < 0:
            raise RuntimeError(f"more than {lay.named_rows} shared rate limits")
        self._overflow = lay.named_at + 2 * row + 1
        self._start = lay.gcra_at
        self._rows = lay.gcra_rows
        self.overflowed = 0  # checks judged against the overflow bucket

    def check(
        self,
        key_hash: int,
        now: float,
        interval: float,
        tolerance: float,
        slack: float | None = None,
    ) -> tuple[bool, float]:
        """Admit one request of `interval` seconds' worth when the key's TAT stays within
        `tolerance` (+ `slack`, by default LocalLimiter's 1/1000 of `interval` against float
        rounding) of `now`: (allowed, the TAT after it, or max(TAT, now) when refused)."""
        allowed, tat, overflowed = self._cells.gcra_check(
            self._start,
            self._rows,
            GCRA_PROBES,
            key_hash & 0xFFFFFFFFFFFFFFFF,
            self._salt,
            self._overflow,
            now,
            interval,
            tolerance,
            interval * 1e-3 if slack is None else slack,
        )
        if overflowed:
            self.overflowed += 1
        return allowed, tat
