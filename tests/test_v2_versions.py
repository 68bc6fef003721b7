"""v2 shares the v1 serving machinery: batching merges v2 and v1 requests alike, and a new version hot-swaps in
for both protocols at once."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import re  # noqa: E402
import threading  # noqa: E402
import urllib.request  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tritonclient.grpc as triton  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from tfsctl.serving.testing import served  # noqa: E402
from tfsctl.tensors import from_numpy, to_numpy  # noqa: E402
from tfsctl.testing import wait_until, write_matmul_model, write_monitoring_config, write_toy_model  # noqa: E402

pytestmark = pytest.mark.timeout(300)


def _serve(**options):  # noqa: ANN202 - served(): a context manager yielding a ready ModelServer
    return served(rest=True, ready_timeout=120, grace=2, file_system_poll_wait_seconds=0.2, **options)


def _batch_histogram(server) -> tuple[float, float]:
    """(batches, requests in them) of model mm from the Prometheus page."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics",
                                  timeout=30).read().decode()
    count = re.search(r'tfsctl_batch_size_count\{model_name="mm"\} (\S+)', text)
    total = re.search(r'tfsctl_batch_size_sum\{model_name="mm"\} (\S+)', text)
    return (float(count.group(1)), float(total.group(1))) if count and total else (0.0, 0.0)


def test_v2_requests_batch_with_v1_requests(tmp_path):
    write_matmul_model(tmp_path / "mm", 1, 512, 4)
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 50000 }\n")
    with _serve(model_name="mm", model_base_path=str(tmp_path / "mm"), enable_batching=True,
                batching_parameters_file=str(params),
                monitoring_config_file=str(write_monitoring_config(tmp_path))) as server:  # _batch_histogram reads it
        errors: list = []
        start = threading.Barrier(8)

        def v2_client(k: int) -> None:
            with triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as c:
                x = np.full((1, 512), k, np.float32)
                i = triton.InferInput("x", [1, 512], "FP32")
                i.set_data_from_numpy(x)
                start.wait()
                for _ in range(5):
                    y = c.infer("mm", [i]).as_numpy("y")
                    if not np.allclose(y, x, rtol=1e-4):
                        errors.append((k, y[0, :3]))

        def v1_client(k: int) -> None:
            with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                request = predict_pb2.PredictRequest()
                request.model_spec.name = "mm"
                x = np.full((1, 512), k, np.float32)
                request.inputs["x"].CopyFrom(from_numpy(x))
                start.wait()
                for _ in range(5):
                    y = to_numpy(stub.Predict(request, timeout=60).outputs["y"])
                    if not np.allclose(y, x, rtol=1e-4):
                        errors.append((k, y[0, :3]))

        threads = [threading.Thread(target=v2_client if k % 2 else v1_client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert errors == []
        batches, requests = _batch_histogram(server)
        assert requests == 40 and batches < requests, (batches, requests)  # some batch held more than one


def test_a_new_version_swaps_in_for_v2_and_v1(tmp_path):
    base = tmp_path / "toy"
    write_toy_model(base, 1, scale=1.0)
    with _serve(model_name="toy", model_base_path=str(base)) as server:
        with triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as c:
            x = np.ones((1, 4), np.float32)
            i = triton.InferInput("x", [1, 4], "FP32")
            i.set_data_from_numpy(x)
            assert c.infer("toy", [i]).get_response().model_version == "1"
            write_toy_model(base, 2, scale=3.0)
            # version 1 unloads once 2 is AVAILABLE
            wait_until(lambda: c.get_model_metadata("toy").versions == ["2"], 60, "version 2 to replace version 1",
                       every=0.1)
            result = c.infer("toy", [i])
            assert result.get_response().model_version == "2"
            np.testing.assert_array_equal(result.as_numpy("y"), x * 3)
            assert not c.is_model_ready("toy", "1") and c.is_model_ready("toy", "2")


def test_quick_model_infer_runs_on_the_grpc_loop_slow_ones_in_the_pool(tmp_path):
    """v2 ModelInfer follows v1 Predict's rule on the event-loop server: a small request on a model whose steps are
    short runs inline on the loop, a long step or a large request in the pool."""
    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    write_matmul_model(tmp_path / "big", 1, 1024, 8)
    config = tmp_path / "models.config"
    config.write_text("model_config_list { " + " ".join(
        f'config {{ name: "{n}" base_path: "{tmp_path / n}" model_platform: "tensorflow" }}'
        for n in ("toy", "big")) + " }")
    with _serve(model_config_file=str(config)) as server:
        threads: list[tuple[str, str]] = []
        real = server.core.predict_with

        def recording(servable, *args, **kwargs):
            threads.append((servable.name, threading.current_thread().name))
            return real(servable, *args, **kwargs)

        server.core.predict_with = recording
        with triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as c:
            def infer(model: str, x: np.ndarray) -> np.ndarray:
                i = triton.InferInput("x", list(x.shape), "FP32")
                i.set_data_from_numpy(x)
                return c.infer(model, [i]).as_numpy("y")

            small, large, ones = np.ones((1, 4), np.float32), np.ones((20_000, 4), np.float32), np.ones((64, 1024),
                                                                                                       np.float32)
            def measured_short() -> bool:  # each call adds a measured step
                infer("toy", small)
                return server.core._quick_on(server.manager.peek("toy"), "", ())

            wait_until(measured_short, 60, "the toy model's steps to be measured short", every=0)
            for _ in range(10):
                infer("big", ones)
            threads.clear()
            np.testing.assert_array_equal(infer("toy", small), small * 2)
            np.testing.assert_allclose(infer("big", ones), ones, rtol=1e-4)
            np.testing.assert_array_equal(infer("toy", large), large * 2)
        where = [t for _, t in threads]
        assert where[0] == "tfsctl-grpc-loop", threads
        assert where[1].startswith("tfsctl-grpc") and where[1] != "tfsctl-grpc-loop", threads
        assert where[2] != "tfsctl-grpc-loop", threads  # 320 KB: not quick even on a quick model
