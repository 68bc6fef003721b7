"""Client deadlines reach the model (issue 20, TF Serving's ``enforce_session_run_timeout``): a gRPC deadline is the
session run's timeout, so TensorFlow stops a slow step once it has passed, and a request whose client has gone
(cancelled while queued for a pool thread or in a batch queue) is never run.

The model's ``serving_default`` counts its runs in a variable (``steps``, read through the ``count`` signature),
then loops ``max(x)`` times (a while loop TensorFlow can cancel between iterations); outputs keep the batch size.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfsctl.core import deadlines
from tfsctl.core.loader import Loader
from tfsctl.errors import Cancelled, DeadlineExceeded
from tfsctl.serving.server import ModelServer
from tfsctl.serving.tensors import from_numpy
from tfsctl.serving.testing import served
from tfsctl.testing import http_call, wait_until, write_counting_loop_model

LONG = 50_000_000  # loop iterations: far longer than any test waits
SHORT = 10


@pytest.fixture(scope="module")
def loop_model(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("loop") / "loop"
    write_counting_loop_model(base)
    return base


def _request(iterations: int, signature: str = "", size: int = 1) -> predict_pb2.PredictRequest:
    """``size`` values of ``iterations``: over 64 KiB, a request never runs on the gRPC event loop (it queues for
    the pool like a real model's request), however quick the model's steps were measured."""
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "loop"
    req.model_spec.signature_name = signature
    req.inputs["x"].CopyFrom(from_numpy(np.full([size], iterations, np.float32)))
    return req


def test_a_deadline_stops_the_step_in_process_and_a_passed_one_never_runs_it(loop_model: Path) -> None:
    servable = Loader("loop", 1, loop_model / "1").load()
    try:
        x = {"x": np.array([SHORT], np.float32)}
        before = int(servable.run("count", x)["steps"][0])
        start = time.monotonic()
        with deadlines.scope(deadlines.Deadline.after(0.3)), pytest.raises(DeadlineExceeded):
            servable.run("", {"x": np.array([LONG], np.float32)})
        assert time.monotonic() - start < 5  # the loop alone would run for minutes
        assert int(servable.run("count", x)["steps"][0]) == before + 1
        gone = deadlines.Deadline.after(0)
        with deadlines.scope(gone), pytest.raises(DeadlineExceeded):
            servable.run("", x)
        cancelled = deadlines.Deadline.after(60)
        cancelled.cancel()
        with deadlines.scope(cancelled), pytest.raises(Cancelled):
            servable.run("", x)
        assert int(servable.run("count", x)["steps"][0]) == before + 1  # neither reached the step
        with deadlines.scope(deadlines.Deadline.after(60)):
            assert servable.run("", x)["y"].shape == (1,)
    finally:
        servable.close()


def _serve(base: Path, batching_file: Path | None = None):  # noqa: ANN202 - served(): a context manager
    # Without batching, one pool thread: a request queues for it (asyncio drops the pool job of a cancelled call).
    # With batching, threads to spare and one batch thread: a request queues in the batcher.
    opts = dict(model_name="loop", model_base_path=str(base), grpc_max_threads=1, file_system_poll_wait_seconds=0)
    if batching_file is not None:
        opts.update(enable_batching=True, batching_parameters_file=str(batching_file), grpc_max_threads=4)
    return served(ready_timeout=None, grace=1, **opts)


def _count(server: ModelServer) -> int:
    """Steps run so far, read in this process from the served version itself: neither the gRPC pool nor the batch
    thread a slow step holds."""
    with server.manager.handle("loop") as servable:
        return int(servable.run("count", {"x": np.zeros([1], np.float32)})["steps"][0])


@pytest.mark.parametrize("batching", [False, True], ids=["pool", "batch-queue"])
def test_grpc_deadline_stops_the_step_and_a_cancelled_queued_request_never_runs(loop_model: Path, tmp_path: Path,
                                                                                  batching: bool) -> None:
    batching_file = None
    if batching:
        batching_file = tmp_path / "batching.config"
        batching_file.write_text("max_batch_size { value: 20000 }\nbatch_timeout_micros { value: 0 }\n"
                                 "num_batch_threads { value: 1 }\n")
    with _serve(loop_model, batching_file) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            stub.Predict(_request(SHORT), timeout=60)
            base = _count(server)

            # 1. The deadline becomes the step's timeout: the server is free again long before the loop could end.
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as e:
                stub.Predict(_request(LONG), timeout=0.5)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            stub.Predict(_request(SHORT), timeout=30)  # one pool thread (and batch thread): waits for that step's end
            assert time.monotonic() - start < 10, "the slow step outlived its deadline"
            assert _count(server) == base + 2

            # 2. A request cancelled while it waits behind a running step is never run.
            blocker = stub.Predict.future(_request(LONG, size=20_000), timeout=3)  # the only pool thread, 3 s
            wait_until(lambda: _count(server) == base + 3, 30, "the blocker's step to start", every=0.02)
            assert (server.batcher.pending() if batching else server.grpc_waiting()) == 0
            queued = stub.Predict.future(_request(SHORT, size=20_000), timeout=60)
            # it must reach the server's queue (a cancel before that is the client's alone): the pool's, or the batch
            # queue (20000 examples) behind the running batch
            wait_until(lambda: server.batcher.pending() == 20_000 if batching else server.grpc_waiting() == 1,
                       30, "the second request to queue behind the blocker", every=0.01)
            queued.cancel()
            with pytest.raises(grpc.RpcError):
                blocker.result()
            stub.Predict(_request(SHORT, size=20_000), timeout=30)  # queued after the cancelled one: runs after it
            assert queued.cancelled()
            assert _count(server) == base + 4, "the cancelled request ran"
        finally:
            channel.close()


def test_deadline_rounding_and_the_batch_deadline() -> None:
    d = deadlines.Deadline.after(1.0)
    assert 900 <= d.timeout_ms() <= 1000 and not d.gone()
    assert deadlines.Deadline.after(None).timeout_ms() is None
    later = deadlines.Deadline.after(5.0)
    assert deadlines.latest([d, later]).at == later.at
    assert deadlines.latest([d, None]) is None
    with deadlines.scope(d):
        assert deadlines.current() is d
        with deadlines.scope(None):
            assert deadlines.current() is None
        assert threading.current_thread() and deadlines.current() is d
    assert deadlines.current() is None


@pytest.mark.parametrize("wire", ["v1", "v2"])
def test_rest_timeout_is_the_steps_timeout_on_both_rest_protocols(loop_model: Path, wire: str) -> None:
    """``--rest_api_timeout_in_ms`` bounds the session run, on TF Serving's routes and the v2 infer alike: with one
    REST pool thread, a request after a timed-out slow one is answered at once, not after the loop."""
    import json

    with served(rest=True, ready_timeout=None, grace=10.0, model_name="loop", model_base_path=str(loop_model),
                file_system_poll_wait_seconds=0, rest_api_timeout_in_ms=500, rest_api_num_threads=1) as server:

        def call(iterations: int) -> int:
            if wire == "v1":
                path, doc = "/v1/models/loop:predict", {"instances": [float(iterations)]}
            else:
                path, doc = "/v2/models/loop/infer", {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32",
                                                                  "data": [float(iterations)]}]}
            return http_call(server.rest_port, "POST", path, json.dumps(doc), {"Content-Type": "application/json"})[0]

        assert call(SHORT) == 200
        base = _count(server)
        start = time.monotonic()
        assert call(LONG) == 504
        assert call(SHORT) == 200
        assert time.monotonic() - start < 20  # the loop alone runs for minutes, holding the one pool thread
        assert _count(server) == base + 2
