"""--batching_wait_for_answered_clients through a real server: a batch queued behind a slow step waits for the
slow step's client to come back, and they share the next batch; without it (TF Serving's scheduling) the queued
batch runs the moment the step ends and the returning client runs after it, alone."""

from __future__ import annotations

import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfsctl.serving.tensors import from_numpy, to_numpy
from tfsctl.serving.testing import served
from tfsctl.testing import wait_until, write_counting_loop_model

SLOW = 2_000_000  # while-loop iterations: a step of seconds, far longer than the batch timeout below
QUICK = 10
TIMEOUT_MICROS = 500_000
ROWS = 20_000  # over 64 KiB per request: queued like a real model's request, never run on the gRPC event loop


@pytest.fixture(scope="module")
def loop_model(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("closed_loop") / "loop"
    write_counting_loop_model(base)
    return base


def _request(iterations: int) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "loop"
    req.inputs["x"].CopyFrom(from_numpy(np.full([ROWS], iterations, np.float32)))
    return req


@pytest.mark.timeout(300)
@pytest.mark.parametrize("wait", [False, True])
def test_a_batch_behind_a_slow_step_waits_for_its_client_only_with_the_flag(loop_model: Path, tmp_path: Path,
                                                                             wait: bool):
    params = tmp_path / "batching.config"
    params.write_text(f"max_batch_size {{ value: {4 * ROWS} }}\nbatch_timeout_micros {{ value: {TIMEOUT_MICROS} }}\n"
                      "num_batch_threads { value: 1 }\n")
    with served(model_name="loop", model_base_path=str(loop_model), enable_batching=True,
                batching_parameters_file=str(params), batching_wait_for_answered_clients=wait) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        batcher = server.batcher

        def batches() -> float:
            return server.metrics.registry.get_sample_value("tfsctl_batch_size_count", {"model_name": "loop"}) or 0.0

        try:
            stub.Predict(_request(QUICK), timeout=60)  # warm: the connection and the session
            before = batches()
            answers: list = []

            def closed_loop_client() -> None:  # sends again as soon as it is answered
                answers.append(stub.Predict(_request(SLOW), timeout=120))
                answers.append(stub.Predict(_request(QUICK), timeout=60))

            client = threading.Thread(target=closed_loop_client)
            client.start()
            wait_until(lambda: batches() == before + 1, 60, "the slow request's batch to start", every=0.005)
            others = [stub.Predict.future(_request(QUICK), timeout=120) for _ in range(2)]
            wait_until(lambda: batcher.pending() == 2 * ROWS, 60, "two requests queued behind the slow step",
                       every=0.005)
            assert len(answers) == 0, "the slow step should still be running"
            for f in others:
                assert float(to_numpy(f.result(120).outputs["y"])[0]) > 0
            client.join(120)
            assert len(answers) == 2
            # with the flag: the returning client joined the queued two (2 batches); without: 3 batches
            assert batches() - before == (2 if wait else 3)
        finally:
            channel.close()
