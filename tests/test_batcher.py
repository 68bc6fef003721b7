"""Batcher over a real toy SavedModel: merging, splitting, padding, queue limits, error fan-out, stop."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfsctl.core.protos import BatchingParameters  # noqa: E402
from tfsctl.errors import ConfigError, FailedPrecondition, InvalidArgument, Unavailable  # noqa: E402
from tfsctl.serving.batcher import Batcher, BatchOptions  # noqa: E402
from tfsctl.serving.metrics import Metrics  # noqa: E402
from tfsctl.testing import toy_example, wait_until, write_toy_model  # noqa: E402

SCALE = 3.0


def _load(path: Path, name: str = "toy", version: int = 1):
    from tfsctl.core.loader import Loader

    return Loader(name, version, path).load()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = write_toy_model(tmp_path_factory.mktemp("batcher") / "toy", 1, scale=SCALE)
    return _load(path)


def _batches(metrics: Metrics, model: str = "toy") -> tuple[float, float]:
    """(number of batches, sum of batch sizes) observed so far."""
    count = metrics.registry.get_sample_value("tfsctl_batch_size_count", {"model_name": model}) or 0.0
    total = metrics.registry.get_sample_value("tfsctl_batch_size_sum", {"model_name": model}) or 0.0
    return count, total


def _rows(start: float, n: int) -> np.ndarray:
    return (np.arange(n * 4, dtype=np.float32).reshape(n, 4) + start).astype(np.float32)


def test_options_from_batching_parameters():
    params = BatchingParameters()
    params.max_batch_size.value = 8
    params.batch_timeout_micros.value = 500
    params.allowed_batch_sizes.extend([2, 4, 8])
    opts = BatchOptions.from_params(params)
    assert (opts.max_batch_size, opts.batch_timeout_micros, opts.allowed_batch_sizes) == (8, 500, (2, 4, 8))
    assert opts.max_enqueued_batches == 10 and opts.num_batch_threads >= 1  # TF Serving defaults
    with pytest.raises(ConfigError, match="must equal max_batch_size"):
        BatchOptions(max_batch_size=16, allowed_batch_sizes=(2, 4))


def test_concurrent_requests_merge_and_split_back(toy):
    metrics = Metrics()
    # A batch closes when full (4 examples); the long timeout makes the merge deterministic.
    batcher = Batcher(BatchOptions(max_batch_size=4, batch_timeout_micros=10_000_000, num_batch_threads=1), metrics)
    try:
        inputs = [_rows(100 * i, 1) for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda x: batcher.run(toy, "", {"x": x}), inputs))
        for x, out in zip(inputs, results, strict=True):
            np.testing.assert_allclose(out["y"], x * SCALE)
            assert out["y"].shape == (1, 4)
        assert _batches(metrics) == (1.0, 4.0)
        assert metrics.registry.get_sample_value(
            "tfsctl_batch_queue_latency_seconds_count", {"model_name": "toy"}
        ) == 4.0
    finally:
        batcher.stop()


def test_allowed_batch_sizes_pad_then_drop_padding(toy):
    metrics = Metrics()
    batcher = Batcher(BatchOptions(max_batch_size=8, allowed_batch_sizes=(2, 4, 8), num_batch_threads=1), metrics)
    try:
        x = _rows(1, 3)
        out = batcher.run(toy, "serving_default", {"x": x})
        assert out["y"].shape == (3, 4)
        np.testing.assert_allclose(out["y"], x * SCALE)
        assert _batches(metrics) == (1.0, 4.0)  # 3 examples padded to the allowed size 4
    finally:
        batcher.stop()


def test_request_larger_than_max_batch_size_is_refused_without_splitting(toy):
    """TF Serving: without enable_large_batch_splitting, max_batch_size bounds a request (INVALID_ARGUMENT)."""
    metrics = Metrics()
    batcher = Batcher(BatchOptions(max_batch_size=4, num_batch_threads=1), metrics)
    try:
        with pytest.raises(InvalidArgument, match="Task size 5 is larger than maximum input batch size 4") as info:
            batcher.run(toy, "", {"x": _rows(0, 5)})
        assert info.value.http_status == 400 and batcher.pending() == 0 and _batches(metrics) == (0.0, 0.0)
        x = _rows(1, 4)  # exactly max_batch_size still runs, as one batch
        np.testing.assert_allclose(batcher.run(toy, "", {"x": x})["y"], x * SCALE)
        assert _batches(metrics) == (1.0, 4.0)
    finally:
        batcher.stop()


class _Recording:
    """A real servable that records the batch sizes it runs and the thread running them."""

    def __init__(self, servable, gate: threading.Event | None = None):
        self._servable = servable
        self.gate = gate
        self.calls: list[tuple[int, str]] = []
        self.entered = threading.Event()

    def __getattr__(self, name):
        return getattr(self._servable, name)

    def run(self, signature_name, inputs, output_filter=()):
        self.calls.append((len(next(iter(inputs.values()))), threading.current_thread().name))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        return self._servable.run(signature_name, inputs, output_filter)



def test_large_batch_splitting_fills_the_open_batch_then_runs_execution_sized_batches(toy):
    """enable_large_batch_splitting: a request up to max_batch_size is split; its first part fills the open batch
    (as TF Serving's InputSplitMetadata), the rest goes in batches of at most max_execution_batch_size."""
    rec = _Recording(toy)
    batcher = Batcher(BatchOptions(max_batch_size=8, enable_large_batch_splitting=True, max_execution_batch_size=4,
                                   batch_timeout_micros=30_000_000, num_batch_threads=1))
    with pytest.raises(InvalidArgument, match="Task size 9 is larger than maximum input batch size 8"):
        batcher.run(rec, "", {"x": _rows(0, 9)})
    a, b = _rows(100, 1), _rows(0, 6)
    with ThreadPoolExecutor(2) as pool:
        fa = pool.submit(batcher.run, rec, "", {"x": a})
        wait_until(lambda: batcher.pending() == 1, 20, "1 pending", every=0.005)
        fb = pool.submit(batcher.run, rec, "", {"x": b})
        # 1 + first 3 rows of b: a full execution batch runs at once
        wait_until(lambda: len(rec.calls) == 1, 20, "one model call", every=0.005)
        assert rec.calls[0][0] == 4
        # the last 3 rows wait in the open batch
        wait_until(lambda: batcher.pending() == 3, 20, "3 pending", every=0.005)
        batcher.stop()  # drains the open batch
        np.testing.assert_allclose(fa.result(30)["y"], a * SCALE)
        np.testing.assert_allclose(fb.result(30)["y"], b * SCALE)
    assert [n for n, _ in rec.calls] == [4, 3]


def test_splitting_queue_capacity_counts_execution_batches(toy):
    batcher = Batcher(BatchOptions(max_batch_size=8, enable_large_batch_splitting=True, max_execution_batch_size=4,
                                   max_enqueued_batches=1, batch_timeout_micros=30_000_000, num_batch_threads=1))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher.run, toy, "", {"x": _rows(5, 1)})
        wait_until(lambda: batcher.pending() == 1, 20, "1 pending", every=0.005)
        with pytest.raises(Unavailable, match="is full"):  # room for 3 more rows in the only batch allowed
            batcher.run(toy, "", {"x": _rows(0, 4)})
        last = pool.submit(batcher.run, toy, "", {"x": _rows(9, 3)})  # exactly fills it: runs at once
        np.testing.assert_allclose(last.result(30)["y"], _rows(9, 3) * SCALE)
        np.testing.assert_allclose(first.result(30)["y"], _rows(5, 1) * SCALE)
    batcher.stop()


def test_after_two_wasted_waits_a_lone_request_runs_at_once_in_the_callers_thread(toy):
    """The first two lone requests wait out batch_timeout_micros in a batch thread (TF Serving); that wait bought
    nothing (no request was on its way), so the next ones run at once in the caller's thread."""
    metrics = Metrics()
    rec = _Recording(toy)
    batcher = Batcher(BatchOptions(max_batch_size=8, batch_timeout_micros=300_000, num_batch_threads=1), metrics)
    try:
        me = threading.current_thread().name
        for i in range(5):
            x = _rows(i, 1)
            np.testing.assert_allclose(batcher.run(rec, "", {"x": x})["y"], x * SCALE)
        threads = [t for _, t in rec.calls]
        assert me not in threads[:2] and threads[2:] == [me] * 3
        assert _batches(metrics) == (5.0, 5.0)
    finally:
        batcher.stop()


def test_run_now_runs_alone_in_the_callers_thread_even_while_a_batch_waits(toy):
    """The gRPC event loop's entry (steps too short for batching to pay): it runs the request at once in the
    caller's thread, also while another request waits for its batch, which it leaves unharmed; TF Serving's
    max_batch_size check and a stopped batcher's refusal still apply."""
    metrics = Metrics()
    rec = _Recording(toy)
    batcher = Batcher(BatchOptions(max_batch_size=8, batch_timeout_micros=60_000_000, num_batch_threads=1), metrics)
    me = threading.current_thread().name
    try:
        np.testing.assert_allclose(batcher.run_now(rec, "", {"x": _rows(1, 1)})["y"], _rows(1, 1) * SCALE)
        assert rec.calls[-1][1] == me
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(batcher.run, rec, "", {"x": _rows(3, 1)})  # waits out its 60 s batch timeout
            wait_until(lambda: batcher.pending() != 0, 30, "the request to reach its queue", every=0.01)
            queued = batcher.pending()
            np.testing.assert_allclose(batcher.run_now(rec, "", {"x": _rows(2, 1)})["y"], _rows(2, 1) * SCALE)
            assert rec.calls[-1][1] == me and batcher.pending() == queued  # ran alone; the batch still waits
            with pytest.raises(InvalidArgument, match="larger than maximum input batch size 8"):
                batcher.run_now(rec, "", {"x": _rows(0, 9)})
            splitting = Batcher(BatchOptions(max_batch_size=8, max_execution_batch_size=2,
                                             enable_large_batch_splitting=True), metrics)
            try:  # a request to split across batches is the queue's work, which waits: declined, nothing run
                assert splitting.run_now(rec, "", {"x": _rows(0, 3)}) is None and splitting.pending() == 0
            finally:
                splitting.stop()
            batcher.stop(timeout=30)  # runs the waiting batch
            np.testing.assert_allclose(waiting.result(30)["y"], _rows(3, 1) * SCALE)
        with pytest.raises(Unavailable):
            batcher.run_now(rec, "", {"x": _rows(1, 1)})
        assert len(rec.calls) == 3
    finally:
        batcher.stop()


def test_a_batch_waits_while_a_request_is_on_its_way_and_runs_once_none_is(toy):
    """Early close: queued requests wait (up to the timeout) while another request is still arriving (announced by
    the front end with ``arrival()``), and run together, long before the timeout, as soon as it has arrived."""
    metrics = Metrics()
    batcher = Batcher(BatchOptions(max_batch_size=8, batch_timeout_micros=60_000_000, num_batch_threads=1), metrics,
                      close_early_after=0)
    decoded = threading.Event()
    try:
        with ThreadPoolExecutor(3) as pool:
            def late() -> dict:
                with batcher.arrival():  # a request still decoding: the batch must wait for it
                    assert decoded.wait(30)
                    return batcher.run(toy, "", {"x": _rows(30, 1)})

            third = pool.submit(late)
            first = pool.submit(batcher.run, toy, "", {"x": _rows(10, 1)})
            second = pool.submit(batcher.run, toy, "", {"x": _rows(20, 1)})
            wait_until(lambda: batcher.pending() == 2, 20, "2 pending", every=0.005)
            assert not first.done() and not second.done()
            decoded.set()  # it arrives: nobody else is on the way, so the batch of three runs now, not in 60 s
            for f, start in ((first, 10), (second, 20), (third, 30)):
                np.testing.assert_allclose(f.result(20)["y"], _rows(start, 1) * SCALE)
        assert _batches(metrics) == (1.0, 3.0)
        # An announced request that leaves without reaching the queue (here: refused, too big) lets the batch go.
        gate = threading.Event()
        with ThreadPoolExecutor(2) as pool:
            def bad() -> None:
                with batcher.arrival():
                    assert gate.wait(30)
                    with pytest.raises(InvalidArgument, match="larger than maximum input batch size"):
                        batcher.run(toy, "", {"x": _rows(0, 9)})

            leaving = pool.submit(bad)
            waiting = pool.submit(batcher.run, toy, "", {"x": _rows(40, 1)})
            wait_until(lambda: batcher.pending() == 1, 20, "1 pending", every=0.005)
            gate.set()
            np.testing.assert_allclose(waiting.result(20)["y"], _rows(40, 1) * SCALE)
            leaving.result(20)
    finally:
        batcher.stop()


def test_a_batch_waiting_for_a_slot_runs_in_its_first_requests_thread(toy):
    """No hand-off to a batch thread: when the running batch ends, the batch queued behind it is run by the thread
    of its first request, which returns its neighbour's rows too."""
    rec = _Recording(toy, gate=threading.Event())
    batcher = Batcher(BatchOptions(max_batch_size=8, batch_timeout_micros=60_000_000, num_batch_threads=1),
                      close_early_after=0)
    try:
        with ThreadPoolExecutor(3, thread_name_prefix="caller") as pool:
            alone = pool.submit(batcher.run, rec, "", {"x": _rows(10, 1)})
            assert rec.entered.wait(30)  # runs alone (the batcher was idle), held inside the model
            second = pool.submit(batcher.run, rec, "", {"x": _rows(20, 1)})
            wait_until(lambda: batcher.pending() == 1, 20, "1 pending", every=0.005)
            third = pool.submit(batcher.run, rec, "", {"x": _rows(30, 1)})
            # the only slot is busy: both wait in one batch
            wait_until(lambda: batcher.pending() == 2, 20, "2 pending", every=0.005)
            rec.gate.set()
            for f, start in ((alone, 10), (second, 20), (third, 30)):
                np.testing.assert_allclose(f.result(20)["y"], _rows(start, 1) * SCALE)
        assert [n for n, _ in rec.calls] == [1, 2]
        assert rec.calls[1][1].startswith("caller") and rec.calls[1][1] != rec.calls[0][1]
    finally:
        batcher.stop()


def _closed_loop_client(batcher: Batcher, servable, start: float) -> list[dict]:
    """A client that sends its next request as soon as it has its answer (two requests)."""
    return [batcher.run(servable, "", {"x": _rows(start + i, 1)}) for i in range(2)]


@pytest.mark.parametrize("wait", [False, True])
def test_a_queued_batch_waits_for_the_answered_client_only_with_the_opt_in(toy, wait: bool):
    """--batching_wait_for_answered_clients: when the running batch ends, the batch queued behind it waits for the
    running batch's client to come back and they run as one; without it (TF Serving's scheduling plus tfsctl's
    early close) the queued batch runs as the thread frees, and the returning client runs after it, alone."""
    rec = _Recording(toy, gate=threading.Event())
    batcher = Batcher(BatchOptions(max_batch_size=8, batch_timeout_micros=60_000_000, num_batch_threads=1),
                      close_early_after=0, wait_for_answered_clients=wait)
    try:
        with ThreadPoolExecutor(3) as pool:
            loop = pool.submit(_closed_loop_client, batcher, rec, 10)
            assert rec.entered.wait(30)  # its first request runs alone (the batcher was idle), held in the model
            others = [pool.submit(batcher.run, rec, "", {"x": _rows(start, 1)}) for start in (20, 30)]
            wait_until(lambda: batcher.pending() == 2, 20, "2 pending", every=0.005)
            rec.gate.set()
            for out, start in zip(loop.result(20), (10, 11), strict=True):
                np.testing.assert_allclose(out["y"], _rows(start, 1) * SCALE)
            for f, start in zip(others, (20, 30), strict=True):
                np.testing.assert_allclose(f.result(20)["y"], _rows(start, 1) * SCALE)
        assert [n for n, _ in rec.calls] == ([1, 3] if wait else [1, 2, 1])
    finally:
        batcher.stop()


@pytest.mark.parametrize("wait", [False, True])
def test_a_batch_past_its_timeout_behind_a_busy_thread_waits_for_the_answered_client(toy, wait: bool):
    """The closed loop's two batches taking turns: a batch that waited out its timeout behind the running one runs
    the moment the thread frees (TF Serving); with the opt-in it waits on for the running batch's client, up to the
    timeout after the answer."""
    rec = _Recording(toy, gate=threading.Event())
    timeout = 1.0
    batcher = Batcher(BatchOptions(max_batch_size=8, batch_timeout_micros=int(timeout * 1e6), num_batch_threads=1),
                      close_early_after=0, wait_for_answered_clients=wait)
    try:
        with ThreadPoolExecutor(2) as pool:
            loop = pool.submit(_closed_loop_client, batcher, rec, 10)
            assert rec.entered.wait(30)
            queued = pool.submit(batcher.run, rec, "", {"x": _rows(20, 1)})
            wait_until(lambda: batcher.pending() == 1, 20, "1 pending", every=0.005)
            since = time.monotonic()
            # the queued batch's timeout passes while the only thread is busy: the condition under test
            wait_until(lambda: time.monotonic() - since > timeout * 1.2, 20, "the queued batch's timeout")
            rec.gate.set()
            np.testing.assert_allclose(queued.result(20)["y"], _rows(20, 1) * SCALE)
            for out, start in zip(loop.result(20), (10, 11), strict=True):
                np.testing.assert_allclose(out["y"], _rows(start, 1) * SCALE)
        assert [n for n, _ in rec.calls] == ([1, 2] if wait else [1, 1, 1])
    finally:
        batcher.stop()


def test_an_answered_client_that_does_not_come_back_is_waited_for_only_up_to_the_timeout(toy):
    """The opt-in's bound: the queued batch runs by itself once the timeout after the answer has passed."""
    rec = _Recording(toy, gate=threading.Event())
    batcher = Batcher(BatchOptions(max_batch_size=8, batch_timeout_micros=300_000, num_batch_threads=1),
                      close_early_after=0, wait_for_answered_clients=True)
    try:
        with ThreadPoolExecutor(2) as pool:
            alone = pool.submit(batcher.run, rec, "", {"x": _rows(10, 1)})  # a client that sends once
            assert rec.entered.wait(30)
            queued = pool.submit(batcher.run, rec, "", {"x": _rows(20, 1)})
            wait_until(lambda: batcher.pending() == 1, 20, "1 pending", every=0.005)
            rec.gate.set()
            np.testing.assert_allclose(alone.result(20)["y"], _rows(10, 1) * SCALE)
            np.testing.assert_allclose(queued.result(20)["y"], _rows(20, 1) * SCALE)  # not held for ever
        assert [n for n, _ in rec.calls] == [1, 1]
        assert batcher.pending() == 0
    finally:
        batcher.stop()


def test_a_split_request_is_not_held_by_its_own_first_part(toy):
    """A request split across batches is one client: its answer goes out once all its parts ran, so a part's batch
    is no answered client to wait for (it held the request's own last part for the whole batch_timeout_micros)."""
    batcher = Batcher(BatchOptions(max_batch_size=8, enable_large_batch_splitting=True, max_execution_batch_size=2,
                                   batch_timeout_micros=20_000_000, num_batch_threads=1),
                      close_early_after=0, wait_for_answered_clients=True)
    try:
        with ThreadPoolExecutor(1) as pool:
            for start in (0, 10):  # a closed loop of one client: it comes back once, and nobody else is expected
                x = _rows(start, 3)  # parts of 2 and 1 rows; the open part runs as nobody is on the way
                np.testing.assert_allclose(pool.submit(batcher.run, toy, "", {"x": x}).result(20)["y"], x * SCALE)
    finally:
        batcher.stop()


def test_a_held_batch_is_not_starved_by_a_closed_loop_client_of_another_queue(toy):
    """Answered clients that come back to another queue (another model) cannot join the held batch: each answer
    holds it again, so it is held at most batch_timeout_micros past the moment a thread could run it (it was held
    for as long as the other queue's closed loop ran)."""
    looping, other = _Recording(toy, gate=threading.Event()), _Recording(toy)  # two servables: two queues
    batcher = Batcher(BatchOptions(max_batch_size=8, batch_timeout_micros=200_000, num_batch_threads=1),
                      close_early_after=0, wait_for_answered_clients=True)
    stop = threading.Event()

    def closed_loop() -> int:
        n = 0
        while not stop.is_set():
            np.testing.assert_allclose(batcher.run(looping, "", {"x": _rows(n, 1)})["y"], _rows(n, 1) * SCALE)
            n += 1
        return n

    try:
        with ThreadPoolExecutor(2) as pool:
            loop = pool.submit(closed_loop)
            assert looping.entered.wait(30)  # its first request runs alone, held in the model
            held = pool.submit(batcher.run, other, "", {"x": _rows(50, 1)})
            wait_until(lambda: batcher.pending() == 1, 20, "1 pending", every=0.005)
            looping.gate.set()
            try:
                np.testing.assert_allclose(held.result(15)["y"], _rows(50, 1) * SCALE)
                assert not loop.done()  # it ran while the loop went on
            finally:
                stop.set()
            assert loop.result(20) >= 2
    finally:
        looping.gate.set()
        stop.set()
        batcher.stop()


def _held_batches_batcher(timeout: float) -> Batcher:
    """Two batch threads, batches of 8 timed out after ``timeout`` s, closing early from the start, with the opt-in:
    the batcher of the held-batch scenarios (:func:`_both_threads_busy_and_a_batch_past_its_timeout`)."""
    return Batcher(BatchOptions(max_batch_size=8, batch_timeout_micros=int(timeout * 1e6), num_batch_threads=2),
                   close_early_after=0, wait_for_answered_clients=True)


def _both_threads_busy_and_a_batch_past_its_timeout(batcher: Batcher, pool: ThreadPoolExecutor, blocker, answered,
                                                    toy, timeout: float):
    """Two batch threads held in the model (a lone request on ``blocker``, a full batch of 8 on ``answered``) and a
    batch of one queued behind them past its timeout: the futures (busy, full, queued)."""
    busy = pool.submit(batcher.run, blocker, "", {"x": _rows(0, 1)})
    assert blocker.entered.wait(30)  # runs alone (the batcher was idle), held in the model: one thread busy
    full = pool.submit(batcher.run, answered, "", {"x": _rows(10, 8)})
    assert answered.entered.wait(30)  # a full batch runs at once on the second thread, held in the model
    queued = pool.submit(batcher.run, toy, "", {"x": _rows(20, 1)})
    wait_until(lambda: batcher.pending() == 1, 20, "1 pending", every=0.005)
    since = time.monotonic()
    wait_until(lambda: time.monotonic() - since > timeout * 1.2, 20, "the queued batch's timeout")
    return busy, full, queued


def test_a_held_batch_runs_once_the_expected_client_comes_back_and_is_refused_while_another_batch_runs(toy):
    """The last expected client comes back with a request that never reaches a queue (here: too big) while the
    other batch thread is busy: the held batch runs now, on the free thread, not when the client's wait expires."""
    blocker, answered = _Recording(toy, gate=threading.Event()), _Recording(toy, gate=threading.Event())
    timeout = 2.0
    batcher = _held_batches_batcher(timeout)
    try:
        with ThreadPoolExecutor(3) as pool:
            busy, full, queued = _both_threads_busy_and_a_batch_past_its_timeout(batcher, pool, blocker, answered,
                                                                                 toy, timeout)
            answered.gate.set()
            np.testing.assert_allclose(full.result(20)["y"], _rows(10, 8) * SCALE)  # its client is expected back
            with pytest.raises(InvalidArgument, match="larger than maximum input batch size"):
                batcher.run(toy, "", {"x": _rows(0, 9)})  # ... and comes back; nobody else is expected
            np.testing.assert_allclose(queued.result(timeout / 2)["y"], _rows(20, 1) * SCALE)
            blocker.gate.set()
            np.testing.assert_allclose(busy.result(20)["y"], _rows(0, 1) * SCALE)
    finally:
        blocker.gate.set()
        answered.gate.set()
        batcher.stop()


def test_a_held_batch_runs_on_the_free_thread_when_the_request_holding_it_runs_alone(toy):
    """A timed-out batch held only by a request on its way: when that request turns out to be for another model and
    runs alone (the batcher idle otherwise), the held batch runs at once on the other thread, not when its hold
    ends."""
    blocker, answered, elsewhere = (_Recording(toy, gate=threading.Event()) for _ in range(3))
    timeout = 2.0
    batcher = _held_batches_batcher(timeout)
    go = threading.Event()
    try:
        with ThreadPoolExecutor(4) as pool:
            busy, full, queued = _both_threads_busy_and_a_batch_past_its_timeout(batcher, pool, blocker, answered,
                                                                                 toy, timeout)
            blocker.gate.set()
            np.testing.assert_allclose(busy.result(20)["y"], _rows(0, 1) * SCALE)  # its client is expected back

            def comes_back() -> dict:
                with batcher.arrival():  # ... and is on its way (decoding): the queued batch stays held
                    assert go.wait(30)
                    return batcher.run(elsewhere, "", {"x": _rows(30, 1)})

            back = pool.submit(comes_back)
            answered.gate.set()
            np.testing.assert_allclose(full.result(20)["y"], _rows(10, 8) * SCALE)  # its client is expected back
            with pytest.raises(InvalidArgument, match="larger than maximum input batch size"):
                batcher.run(toy, "", {"x": _rows(0, 9)})  # ... and comes back, refused
            go.set()  # the one on its way is for another model: it runs alone, the idle batcher's way
            assert elsewhere.entered.wait(30)  # held in the model: one thread busy, the other free
            np.testing.assert_allclose(queued.result(timeout / 2)["y"], _rows(20, 1) * SCALE)
            elsewhere.gate.set()
            np.testing.assert_allclose(back.result(20)["y"], _rows(30, 1) * SCALE)
    finally:
        go.set()
        for model in (blocker, answered, elsewhere):
            model.gate.set()
        batcher.stop()


def test_a_batch_thread_does_not_spin_once_an_answered_clients_wait_expires(toy):
    """A batch thread sleeps until the expected clients' wait expires; an expired one must not be taken as the next
    time to look again while a request is on its way (the thread spun on zero-length waits until the batch's own
    timeout)."""
    rec = _Recording(toy, gate=threading.Event())
    timeout = 1.0
    batcher = Batcher(BatchOptions(max_batch_size=2, batch_timeout_micros=int(timeout * 1e6), num_batch_threads=1),
                      close_early_after=0, wait_for_answered_clients=True)
    spins = []
    real_wait = batcher._cond.wait

    def counting_wait(timeout=None):
        if timeout is not None and timeout <= 0:
            spins.append(timeout)
        return real_wait(timeout)

    batcher._cond.wait = counting_wait
    decoded = threading.Event()
    try:
        with ThreadPoolExecutor(4) as pool:
            alone = pool.submit(batcher.run, rec, "", {"x": _rows(0, 1)})
            assert rec.entered.wait(30)  # runs alone, held in the model
            pair = [pool.submit(batcher.run, rec, "", {"x": _rows(start, 1)}) for start in (10, 20)]
            wait_until(lambda: batcher.pending() == 2, 20, "2 pending", every=0.005)
            rec.gate.set()  # then the full pair runs: three clients are expected back
            for f, start in zip([alone, *pair], (0, 10, 20), strict=True):
                np.testing.assert_allclose(f.result(20)["y"], _rows(start, 1) * SCALE)
            answered = time.monotonic()

            def decoding() -> None:
                with batcher.arrival():  # one comes back and stays on its way
                    assert decoded.wait(30)

            on_its_way = pool.submit(decoding)
            wait_until(lambda: time.monotonic() - answered > timeout / 2, 20, "half the clients' wait")
            queued = pool.submit(batcher.run, rec, "", {"x": _rows(30, 1)})  # another comes back
            wait_until(lambda: batcher.pending() == 1, 20, "1 pending", every=0.005)
            # the third's wait expires, then the queued batch times out (the one on its way holds it till then)
            np.testing.assert_allclose(queued.result(20)["y"], _rows(30, 1) * SCALE)
            decoded.set()
            on_its_way.result(20)
        assert not spins, f"{len(spins)} waits of no time"
    finally:
        decoded.set()
        batcher.stop()


def test_full_queue_is_refused_immediately_then_drained_on_stop(toy):
    # One example may wait (limit = max_enqueued_batches * max_batch_size = 2); the long timeout keeps it queued.
    batcher = Batcher(BatchOptions(max_batch_size=2, max_enqueued_batches=1, batch_timeout_micros=30_000_000,
                                   num_batch_threads=1))
    waiting: dict = {}
    first = threading.Thread(target=lambda: waiting.update(out=batcher.run(toy, "", {"x": _rows(5, 1)})))
    first.start()
    wait_until(lambda: batcher.pending() == 1, 10, "the first request in the queue", every=0.01,
               explain=batcher.pending)
    t0 = time.monotonic()
    with pytest.raises(Unavailable, match="submitted is full: batch queue for model 'toy' .* is full") as info:
        batcher.run(toy, "", {"x": _rows(0, 2)})
    assert time.monotonic() - t0 < 5  # refused at once, not after the batch timeout
    assert info.value.http_status == 503  # TF Serving: UNAVAILABLE
    batcher.stop()  # drains: the queued request still completes
    first.join(10)
    np.testing.assert_allclose(waiting["out"]["y"], _rows(5, 1) * SCALE)
    with pytest.raises(Unavailable):
        batcher.run(toy, "", {"x": _rows(0, 1)})


@pytest.mark.parametrize("isolate", [False, True])
def test_bad_data_in_a_batch_fails_the_batch_or_with_isolation_only_its_own_request(toy, isolate: bool):
    """Data that passes validation but fails in the graph: TF Serving fails the whole batch; with isolate_failures
    the batch is rerun per request, so the neighbour of a bad request still gets its own result."""
    metrics = Metrics()
    batcher = Batcher(BatchOptions(max_batch_size=2, batch_timeout_micros=10_000_000, num_batch_threads=1), metrics,
                      isolate_failures=isolate)
    try:
        good = np.array([toy_example([1, 2, 3, 4])], dtype=object)
        bad = np.array([b"not a tf.Example"], dtype=object)  # passes validation, fails inside the graph

        def call(inputs: np.ndarray):
            try:
                return batcher.run(toy, "classify", {"inputs": inputs})
            except InvalidArgument as exc:
                return exc

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(call, [good, bad]))
        assert _batches(metrics) == (1.0, 2.0), "the two requests should have shared one batch"
        assert isinstance(results[1], InvalidArgument), results
        if not isolate:  # TF Serving: every request of the failed batch gets its error
            assert isinstance(results[0], InvalidArgument), results
        else:
            assert not isinstance(results[0], Exception), results
            np.testing.assert_allclose(results[0]["scores"], [[1 * SCALE, 2 * SCALE]])
        # The batcher keeps serving after a failed batch.
        out = batcher.run(toy, "classify", {"inputs": np.concatenate([good, good])})
        np.testing.assert_allclose(out["scores"], [[1 * SCALE, 2 * SCALE]] * 2)
    finally:
        batcher.stop()


def test_invalid_request_is_rejected_before_queueing(toy):
    metrics = Metrics()
    batcher = Batcher(BatchOptions(max_batch_size=4), metrics)
    try:
        with pytest.raises(InvalidArgument, match="x"):
            # a wrong dtype (shapes are the graph's business, as in TF Serving)
            batcher.run(toy, "", {"x": np.zeros((1, 4), np.float64)})
        assert _batches(metrics) == (0.0, 0.0)
    finally:
        batcher.stop()


@pytest.fixture(scope="module")
def ragged_model(tmp_path_factory):
    """A model with a variable inner dimension: x float32 [None, None] -> total = sum(x, axis=1)."""
    import tensorflow as tf

    class Ragged(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32, name="x")])
        def serve(self, x):
            return {"total": tf.reduce_sum(x, axis=1)}

    path = tmp_path_factory.mktemp("ragged") / "ragged" / "1"
    module = Ragged()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return _load(path, "ragged")


def test_pad_variable_length_inputs(ragged_model):
    metrics = Metrics()
    batcher = Batcher(
        BatchOptions(max_batch_size=2, batch_timeout_micros=10_000_000, num_batch_threads=1,
                     pad_variable_length_inputs=True),
        metrics,
    )
    try:
        a = np.array([[1, 2]], np.float32)
        b = np.array([[1, 2, 3, 4, 5]], np.float32)
        with ThreadPoolExecutor(2) as pool:
            ra, rb = pool.map(lambda x: batcher.run(ragged_model, "", {"x": x}), [a, b])
        # Zero padding leaves sums unchanged, and both shapes shared one batch.
        assert ra["total"].tolist() == [3.0] and rb["total"].tolist() == [15.0]
        assert _batches(metrics, "ragged") == (1.0, 2.0)
    finally:
        batcher.stop()


def test_versions_and_shapes_never_share_a_batch(toy, ragged_model, tmp_path):
    other = _load(write_toy_model(tmp_path / "toy", 2, scale=5.0), version=2)
    metrics = Metrics()
    batcher = Batcher(BatchOptions(max_batch_size=4, batch_timeout_micros=200_000, num_batch_threads=2), metrics)
    try:
        x = _rows(1, 1)
        with ThreadPoolExecutor(2) as pool:
            r1, r2 = pool.map(lambda s: batcher.run(s, "", {"x": x}), [toy, other])
        np.testing.assert_allclose(r1["y"], x * SCALE)
        np.testing.assert_allclose(r2["y"], x * 5.0)
        assert _batches(metrics) == (2.0, 2.0)
        # Without pad_variable_length_inputs, different inner sizes go to different queues.
        a, b = np.ones((1, 2), np.float32), np.ones((1, 5), np.float32)
        with ThreadPoolExecutor(2) as pool:
            ra, rb = pool.map(lambda v: batcher.run(ragged_model, "", {"x": v}), [a, b])
        assert ra["total"].tolist() == [2.0] and rb["total"].tolist() == [5.0]
        assert _batches(metrics, "ragged") == (2.0, 2.0)
    finally:
        batcher.stop()


def test_many_concurrent_callers_each_get_exactly_their_rows(toy):
    metrics = Metrics()
    batcher = Batcher(BatchOptions(max_batch_size=8, batch_timeout_micros=2000, num_batch_threads=2,
                                   max_enqueued_batches=100), metrics)
    rng = np.random.default_rng(0)
    jobs = [rng.standard_normal((int(rng.integers(1, 7)), 4)).astype(np.float32) for _ in range(160)]
    try:
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda x: batcher.run(toy, "", {"x": x}), jobs))
        for x, out in zip(jobs, results, strict=True):
            assert out["y"].shape == x.shape
            np.testing.assert_allclose(out["y"], x * SCALE, rtol=1e-6)
        count, total = _batches(metrics)
        assert total == sum(len(x) for x in jobs) and count < len(jobs)  # some requests were merged
    finally:
        batcher.stop()


def test_per_model_batching_reads_each_versions_file_and_skips_models_without_one(tmp_path):
    """--enable_per_model_batching_parameters: batching_params.pbtxt in the version directory sets that model's
    queue; a model without it is not batched; a bad file is a clear error naming it (TF Serving fails the load)."""
    with_file = write_toy_model(tmp_path / "a", 1, scale=SCALE)
    (with_file / "batching_params.pbtxt").write_text("max_batch_size { value: 2 }\nbatch_timeout_micros { value: 0 }\n")
    without = write_toy_model(tmp_path / "b", 1, scale=SCALE)
    bad = write_toy_model(tmp_path / "c", 1, scale=SCALE)
    (bad / "batching_params.pbtxt").write_text("max_batch_size { value: 0 }\n")
    metrics = Metrics()
    batcher = Batcher(BatchOptions(max_batch_size=100, num_batch_threads=1), metrics, per_model=True)
    try:
        a, b, c = _load(with_file, "a"), _load(without, "b"), _load(bad, "c")
        with pytest.raises(InvalidArgument, match="larger than maximum input batch size 2"):
            batcher.run(a, "", {"x": _rows(0, 3)})
        np.testing.assert_allclose(batcher.run(a, "", {"x": _rows(0, 2)})["y"], _rows(0, 2) * SCALE)
        assert _batches(metrics, "a") == (1.0, 2.0)
        np.testing.assert_allclose(batcher.run(b, "", {"x": _rows(0, 3)})["y"], _rows(0, 3) * SCALE)
        assert _batches(metrics, "b") == (0.0, 0.0)  # no file: run unbatched
        with pytest.raises(FailedPrecondition, match=r"batching_params.pbtxt:1: max_batch_size must be >= 1"):
            batcher.run(c, "", {"x": _rows(0, 1)})
    finally:
        batcher.stop()
    # Off (the default): the global parameters apply to every model, files are ignored.
    batcher = Batcher(BatchOptions(max_batch_size=100, num_batch_threads=1), metrics)
    try:
        batcher.run(a, "", {"x": _rows(0, 3)})
        assert _batches(metrics, "a") == (2.0, 5.0)
    finally:
        batcher.stop()


def test_submitted_requests_share_a_batch_with_run_callers_and_are_answered_by_callback(toy):
    """``submit`` queues a request with no thread of the caller's waiting (the gRPC event loop's): it joins the same
    batch as ``run`` callers, the batch runs in a batch thread, and the callback gets each request's own rows."""
    metrics = Metrics()
    batcher = Batcher(BatchOptions(max_batch_size=4, batch_timeout_micros=10_000_000, num_batch_threads=1), metrics)
    try:
        done: dict[int, object] = {}
        finished = threading.Event()
        threads: set[str] = set()

        def callback(i: int):
            def called(task) -> None:
                threads.add(threading.current_thread().name)
                done[i] = task
                if len(done) == 3:
                    finished.set()
            return called

        xs = [_rows(100 * i, 1) for i in range(4)]
        with ThreadPoolExecutor(1) as pool:
            out = pool.submit(batcher.run, toy, "", {"x": xs[3]})  # a run() caller, waiting in its thread
            wait_until(lambda: batcher.pending() == 1, 10, "the run() caller to queue")
            for i in range(2):
                assert batcher.submit(toy, "", {"x": xs[i]}, (), callback(i)) is True
            assert batcher.pending() == 3 and not finished.is_set()  # queued: nothing runs in the submitting thread
            assert batcher.submit(toy, "", {"x": xs[2]}, (), callback(2)) is True  # fills the batch
            assert finished.wait(30)
            np.testing.assert_allclose(out.result(30)["y"], xs[3] * SCALE)
        for i in range(3):
            task = done[i]
            assert task.error is None and task.batch == 4
            np.testing.assert_allclose(task.outputs["y"], xs[i] * SCALE)
        assert _batches(metrics) == (1.0, 4.0)
        assert threads == {"batch_threads-0"}, threads  # the batch thread ran it, not the submitting thread
    finally:
        batcher.stop()


def test_submit_declines_what_the_queue_does_not_take_whole_and_raises_what_run_would(toy):
    """A request to split across batches, or one that cannot be batched, is declined (False) with nothing queued:
    its caller runs it in a thread. A request too large for max_batch_size fails as in ``run``."""
    batcher = Batcher(BatchOptions(max_batch_size=8, max_execution_batch_size=2, enable_large_batch_splitting=True,
                                   batch_timeout_micros=10_000_000, num_batch_threads=1))
    try:
        def never(_task) -> None:
            raise AssertionError("a declined request was answered")

        assert batcher.submit(toy, "", {"x": _rows(0, 3)}, (), never) is False  # would be split
        assert batcher.submit(toy, "", {"x": np.float32(1.0)}, (), never) is False  # a scalar: not batchable
        assert batcher.pending() == 0
        with pytest.raises(InvalidArgument, match="larger than maximum input batch size"):
            batcher.submit(toy, "", {"x": _rows(0, 9)}, (), never)
        assert batcher.pending() == 0
    finally:
        batcher.stop()


def test_a_submitted_requests_inputs_are_freed_once_answered_without_the_garbage_collector(toy):
    """The task keeps no reference to its callback once called: a callback that keeps the task (a future whose
    result it becomes) makes no reference cycle, so the request's inputs (maybe megabytes) go with the last
    reference, not at some later garbage collection; nor does the idle batch thread keep its last batch."""
    import gc
    import weakref

    batcher = Batcher(BatchOptions(max_batch_size=1, batch_timeout_micros=0, num_batch_threads=1))
    gc.disable()
    try:
        answered = threading.Event()

        def submit_one() -> weakref.ref:
            x = _rows(0, 1)
            box: dict[str, object] = {}

            def keep(task) -> None:
                box["task"] = task  # box -> task, and the task holds this closure, which holds box
                answered.set()

            assert batcher.submit(toy, "", {"x": x}, (), keep)
            return weakref.ref(x)

        gone = submit_one()
        assert answered.wait(30)
        wait_until(lambda: gone() is None, 10, "the inputs to be freed")
    finally:
        gc.enable()
        batcher.stop()
