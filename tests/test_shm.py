"""The shared segment of `lb run --workers N`: atomic counts across processes, row claims,
pickers attached to shared counters, and the shared GCRA table."""

from __future__ import annotations

import multiprocessing
import os

import pytest

from lb.balancer import picker_py
from lb.shm import Layout, Segment, SharedGcra, WorkerCounters, key_hash
from lb.traffic.ratelimit import LocalLimiter

try:
    from lb import _picker, _shm  # noqa: F401
except ImportError:
    pytest.skip("the compiled extensions are not built", allow_module_level=True)

from lb.traffic.shared_ratelimit import SharedLimiter

SPAWN = multiprocessing.get_context("spawn")  # fresh interpreters, like real workers


@pytest.fixture
def segment(tmp_path):
    seg = Segment.create(
        Layout(workers=2, counter_rows=64, named_rows=8, gcra_rows=64), str(tmp_path)
    )
    yield seg
    seg.unlink()


# -- helpers run in child processes ---------------------------------------------------------------
def _add_many(path: str, word: int, times: int) -> None:
    cells = Segment.open(path).cells
    for _ in range(times):
        cells.add(word, 1)


def _pick_many(path: str, worker: int, picks: int, release: bool) -> None:
    seg = Segment.open(path)
    picker = _picker.Picker()
    slot = picker.add(1, 0.0)
    row = seg.counter_row("svc", "10.0.0.1:80")
    picker.attach(slot, seg.buffer, row + 1, row + 2 + worker)
    for _ in range(picks):
        slot_picked = picker.pick(0.0)
        if release:
            picker.release(slot_picked)


def _limit(path: str, now: float, queue: multiprocessing.Queue) -> None:
    gcra = SharedGcra(Segment.open(path), "route:api")
    allowed = sum(gcra.check(42, now, 0.1, 1.0)[0] for _ in range(50))
    queue.put(allowed)


def _run(target, *argsets) -> None:
    procs = [SPAWN.Process(target=target, args=args) for args in argsets]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


# -- atomic counts ---------------------------------------------------------------------------
def test_two_processes_add_to_one_counter_exactly(segment):
    word = segment.layout.gcra_at - 1  # any word past the header
    _run(_add_many, (segment.path, word, 200_000), (segment.path, word, 200_000))
    assert segment.cells.load(word) == 400_000


def test_two_processes_pick_through_attached_pickers_exactly(segment):
    _run(_pick_many, (segment.path, 0, 100_000, False), (segment.path, 1, 70_000, False))
    assert segment.in_flight("svc", "10.0.0.1:80") == 170_000
    row = segment.counter_row("svc", "10.0.0.1:80")
    assert segment.cells.load(row + 2) == 100_000  # each worker's own column
    assert segment.cells.load(row + 3) == 70_000
    # A dead worker's requests are withdrawn; the other's stay.
    assert segment.forget_worker(0) == 100_000
    assert segment.in_flight("svc", "10.0.0.1:80") == 70_000
    assert segment.cells.load(row + 2) == 0


def test_pick_and_release_in_two_processes_nets_zero(segment):
    _run(_pick_many, (segment.path, 0, 50_000, True), (segment.path, 1, 50_000, True))
    assert segment.in_flight("svc", "10.0.0.1:80") == 0


# -- rows -----------------------------------------------------------------------------------------
def test_rows_are_the_same_in_every_process_and_distinct_per_key(segment):
    other = Segment.open(segment.path)
    a = segment.counter_row("app", "10.0.0.1:80")
    assert other.counter_row("app", "10.0.0.1:80") == a
    assert segment.counter_row("app", "10.0.0.2:80") != a
    assert segment.counter_row("web", "10.0.0.1:80") != a


def test_a_full_table_says_so(tmp_path):
    seg = Segment.create(
        Layout(workers=1, counter_rows=4, named_rows=1, gcra_rows=4), str(tmp_path)
    )
    rows = {seg.counter_row("s", f"b{i}") for i in range(4)}
    assert None not in rows and len(rows) == 4
    assert seg.counter_row("s", "b4") is None
    assert seg.counter_row("s", "b2") in rows  # known keys are still found
    seg.unlink()


def test_open_refuses_other_files(tmp_path):
    path = tmp_path / "junk"
    path.write_bytes(b"\0" * 4096)
    with pytest.raises(ValueError, match="not an lb shared segment"):
        Segment.open(str(path))


def test_key_hash_is_stable_and_never_zero():
    assert key_hash("app\n10.0.0.1:80") == key_hash("app\n10.0.0.1:80")
    assert 0 < key_hash("") < 2**63


# -- pickers on shared counters ---------------------------------------------------------------
@pytest.mark.parametrize("impl", [_picker.Picker, picker_py.Picker], ids=["cython", "python"])
def test_attached_picker_compares_shared_counts(segment, impl):
    picker = impl()
    a, b = picker.add(1, 0.0), picker.add(1, 0.0)
    row_a = segment.counter_row("app", "a:1")
    row_b = segment.counter_row("app", "b:1")
    picker.attach(a, segment.buffer, row_a + 1, row_a + 2)
    picker.attach(b, segment.buffer, row_b + 1, row_b + 2)
    cells = segment.cells
    cells.add(row_a + 1, 3)  # another worker holds 3 requests on a
    assert [picker.pick(0.0) for _ in range(3)] == [b, b, b]  # b catches up first
    assert picker.in_flight(b) == 3 and picker.total_in_flight(b) == 3
    assert picker.total_in_flight(a) == 3 and picker.in_flight(a) == 0
    assert sorted(picker.pick(0.0) for _ in range(2)) == [a, b]  # then they alternate
    assert cells.load(row_a + 2) == 1 and cells.load(row_b + 2) == 4  # own columns
    picker.release(b)
    assert cells.load(row_b + 1) == 3
    # Removing a slot withdraws this picker's own requests from the shared count.
    for _ in range(3):
        picker.release(b)
    picker.remove(b)
    assert cells.load(row_b + 1) == 0 and cells.load(row_b + 2) == 0
    assert cells.load(row_a + 1) == 4


@pytest.mark.parametrize("impl", [_picker.Picker, picker_py.Picker], ids=["cython", "python"])
def test_attach_brings_requests_already_held(segment, impl):
    picker = impl()
    slot = picker.add(1, 0.0)
    picker.pick(0.0)
    row = segment.counter_row("app", "a:1")
    picker.attach(slot, segment.buffer, row + 1, row + 3)
    assert segment.cells.load(row + 1) == 1 and segment.cells.load(row + 3) == 1
    with pytest.raises(IndexError):
        picker.attach(slot, segment.buffer, len(segment.cells), 0)


@pytest.mark.parametrize("impl", [_picker.Picker, picker_py.Picker], ids=["cython", "python"])
def test_a_services_sum_counts_every_slot_in_its_own_row(segment, impl):
    """What a bounded consistent-hash table shares out: every request of the service, in the
    row "service\n" with a column per worker, withdrawn like the others when a worker dies."""
    picker = impl()
    a, b = picker.add(1, 0.0), picker.add(1, 0.0)
    picker.take(a)
    counters = WorkerCounters(segment, 1)
    counters.attach(picker, a, "app", "a:1")  # b stays unattached: counted in the sum anyway
    counters.attach_sum(picker, "app")
    row = segment.counter_row("app", "")
    assert row not in (segment.counter_row("app", "a:1"), segment.counter_row("app", "b:1"))
    picker.take(b)
    picker.pick(0.0)
    segment.cells.add(row + 1, 5)  # worker 0's requests
    assert picker.in_flight_sum() == 3 and picker.total_in_flight_sum() == 8
    assert segment.cells.load(row + 3) == 3  # worker 1's column
    picker.release(b)
    assert segment.in_flight("app", "") == 7
    picker.detach_sum()  # a reload dropped the bound: its requests leave the shared sum
    assert segment.in_flight("app", "") == 5 and segment.cells.load(row + 3) == 0
    assert picker.total_in_flight_sum() == 2
    counters.attach_sum(picker, "app")  # ... and join it again with the bound back
    assert segment.in_flight("app", "") == 7
    assert segment.forget_worker(1) == 2 + picker.in_flight(a)  # its sum and slot a's row
    assert segment.in_flight("app", "") == 5


# -- shared GCRA -------------------------------------------------------------------------------
def test_two_processes_share_one_budget(segment):
    # 10 per second, tolerance 1 s: 10 requests at one instant, however many processes ask.
    queue = SPAWN.Queue()
    procs = [SPAWN.Process(target=_limit, args=(segment.path, 1000.0, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    allowed = [queue.get(timeout=60), queue.get(timeout=60)]
    for p in procs:
        p.join(60)
    assert sum(allowed) == 10


def test_shared_limiter_answers_like_the_local_one(segment):
    shared = SharedLimiter(SharedGcra(segment, "route:r"), 5, 1.0, 2)
    local = LocalLimiter(5, 1.0, 2)
    now = 100.0
    for step in range(40):
        key = f"client{step % 3}"
        assert shared.check(key, now) == local.check(key, now), step
        now += 0.07
    assert shared.headers(shared.check("x", now), "r") == local.headers(local.check("x", now), "r")


def test_limiters_with_other_names_do_not_share(segment):
    a, b = SharedGcra(segment, "route:a"), SharedGcra(segment, "route:b")
    assert a.check(7, 10.0, 1.0, 1.0)[0] and not a.check(7, 10.0, 1.0, 1.0)[0]
    assert b.check(7, 10.0, 1.0, 1.0)[0]


def test_a_flood_of_keys_takes_over_spent_rows_then_shares_the_overflow_bucket(tmp_path):
    seg = Segment.create(
        Layout(workers=1, counter_rows=4, named_rows=2, gcra_rows=16), str(tmp_path)
    )
    gcra = SharedGcra(seg, "listener:web")
    # 16 live keys fill the table; their TATs lie 1 s ahead.
    assert all(gcra.check(k, 0.0, 1.0, 1.0)[0] for k in range(16))
    assert gcra.overflowed == 0
    # Newcomers now share one overflow bucket: one is admitted, the next is not.
    assert gcra.check(1000, 0.0, 1.0, 1.0)[0]
    assert not gcra.check(1001, 0.0, 1.0, 1.0)[0]
    assert gcra.overflowed == 2
    # Once the old keys are spent, a newcomer gets a row of its own again.
    assert gcra.check(1002, 5.0, 1.0, 1.0)[0] and gcra.check(1003, 5.0, 1.0, 1.0)[0]
    assert gcra.overflowed == 2
    seg.unlink()


def test_segment_lives_in_dev_shm_by_default():
    seg = Segment.create(Layout(workers=1, counter_rows=4, named_rows=1, gcra_rows=4))
    try:
        if os.path.isdir("/dev/shm"):
            assert seg.path.startswith("/dev/shm/")
        assert os.path.getsize(seg.path) == seg.layout.size
    finally:
        seg.unlink()
    assert not os.path.exists(seg.path)


# -- counts per client ---------------------------------------------------------------------------
def small_layout(client_rows: int) -> Layout:
    return Layout(workers=2, counter_rows=8, named_rows=8, gcra_rows=8, client_rows=client_rows)


def test_client_counts_are_one_count_for_all_workers(tmp_path):
    seg = Segment.create(small_layout(client_rows=4), str(tmp_path))
    try:
        w0, w1 = seg.client_counts(0), seg.client_counts(1)
        row = w0.enter(hash("alice"), 3)
        assert row >= 0
        assert w1.enter(hash("alice"), 3) == row  # the same row, whichever worker asks
        assert w1.enter_row(row, 3)
        assert w0.count(row) == 3
        assert w0.enter(hash("alice"), 3) == -1 and not w1.enter_row(row, 3)  # at the cap
        # the other keys fill the rest of the table; one more finds no row
        others = [w0.enter(hash(f"k{i}"), 1) for i in range(3)]
        assert sorted([row, *others]) == [0, 1, 2, 3]
        assert w1.enter(hash("newcomer"), 1) == -2
        # a dead worker's share is withdrawn; a row back at 0 is free for another key
        assert seg.forget_worker(1) == 0  # no requests: only its client counts
        assert w0.count(row) == 1
        w0.leave(row)
        assert w0.count(row) == 0
        assert w1.enter(hash("newcomer"), 1) == row
    finally:
        seg.unlink()


def _enter_and_leave(path: str, worker: int, rounds: int) -> None:
    counts = Segment.open(path).client_counts(worker)
    for _ in range(rounds):
        row = counts.enter(12345, 1_000_000)  # the same key in both (no shared hash seed here)
        counts.leave(row)


def test_client_counts_stay_exact_under_concurrent_workers(tmp_path):
    seg = Segment.create(small_layout(client_rows=64), str(tmp_path))
    try:
        procs = [
            SPAWN.Process(target=_enter_and_leave, args=(seg.path, w, 20_000)) for w in range(2)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
            assert p.exitcode == 0
        counts = seg.client_counts(0)
        assert [counts.count(r) for r in range(64)] == [0] * 64
    finally:
        seg.unlink()
