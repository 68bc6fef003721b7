"""TF Serving's ProfilerService on the model server's gRPC port: a real trace through TF's profiler client."""

from __future__ import annotations

import os
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from tfsctl.serving.server import ModelServer, ServerOptions  # noqa: E402
from tfsctl.tensors import from_numpy  # noqa: E402
from tfsctl.testing import write_toy_model  # noqa: E402


def _serve(tmp_path, **flags) -> ModelServer:
    write_toy_model(tmp_path / "toy", 1)
    server = ModelServer(ServerOptions(port=0, rest_api_port=0, host="127.0.0.1", model_name="toy",
                                       model_base_path=str(tmp_path / "toy"), **flags))
    server.start()
    return server


def test_a_trace_through_the_model_servers_own_port(tmp_path):
    """profiler_client.trace against the gRPC port (as TF Serving's own test does) writes a trace of the
    Predict calls running meanwhile."""
    from tensorflow.python.profiler import profiler_client

    server = _serve(tmp_path)
    stop = threading.Event()

    def load() -> None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "toy"
        request.inputs["x"].CopyFrom(from_numpy(np.ones((1, 4), np.float32)))
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            for _ in range(2000):  # bounded; stops early once the trace is taken
                if stop.is_set():
                    return
                stub.Predict(request, timeout=10)

    traffic = threading.Thread(target=load)
    traffic.start()
    try:
        logdir = tmp_path / "logs"
        profiler_client.trace(f"127.0.0.1:{server.grpc_port}", str(logdir), 500, "", 5)
        traces = [p for p in logdir.rglob("*") if p.is_file() and p.stat().st_size > 0]
        assert traces, "the profiler wrote nothing"
    finally:
        stop.set()
        traffic.join(30)
        server.stop(2)


def test_enable_profiler_false_leaves_the_service_out(tmp_path):
    server = _serve(tmp_path, enable_profiler=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            call = channel.unary_unary("/tensorflow.ProfilerService/Profile")
            with pytest.raises(grpc.RpcError) as info:
                call(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(2)
