"""The gRPC front end on an event loop (tfsctl/serving/grpc_loop.py): quick Predicts run on the loop, slow ones,
batched ones and large ones in the pool; results and errors are the same either way."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

from tfsctl.serving.server import ModelServer  # noqa: E402
from tfsctl.serving.testing import served as serve_model  # noqa: E402
from tfsctl.tensors import from_numpy, to_numpy  # noqa: E402
from tfsctl.testing import write_matmul_model, write_toy_model  # noqa: E402

X = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
BIG = 512


def _request(name: str, x: np.ndarray) -> predict_pb2.PredictRequest:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = name
    req.inputs["x"].CopyFrom(from_numpy(x))
    return req


def _warm(server: ModelServer, stub, name: str, x: np.ndarray, limit: int = 200) -> None:
    """Predict until the signature counts as quick (its steps are measured in windows of 8), at most ``limit``."""
    for _ in range(limit):
        np.testing.assert_allclose(to_numpy(stub.Predict(_request(name, x), timeout=30).outputs["y"]), x * 2)
        if server.core.predict_is_quick(_request(name, x)):
            return


@contextlib.contextmanager
def _serve(base: Path, names: tuple[str, ...], **options) -> Iterator[tuple[ModelServer, list[tuple[str, str]]]]:
    """A started server for the models under ``base``, and the (model, thread name) of each Predict it runs (the
    core's predict_request is what both the loop and the pool call); stopped on exit."""
    from google.protobuf import text_format

    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        config.model_config_list.config.add(name=name, base_path=str(base / name), model_platform="tensorflow")
    (base / "models.config").write_text(text_format.MessageToString(config))
    with serve_model(ready_timeout=None, grace=1, model_config_file=str(base / "models.config"), **options) as server:
        threads: list[tuple[str, str]] = []
        real = server.core.predict_request

        def recording(request, *args, **kwargs):
            threads.append((request.model_spec.name, threading.current_thread().name))
            return real(request, *args, **kwargs)

        server.core.predict_request = recording
        yield server, threads


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("loop")
    write_toy_model(base / "toy", 1, scale=2.0)
    write_matmul_model(base / "big", 1, BIG, 8)
    with _serve(base, ("toy", "big")) as (server, threads):
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}",
                                        options=[("grpc.max_receive_message_length", 64 << 20)])
        try:
            yield server, prediction_service_pb2_grpc.PredictionServiceStub(channel), threads
        finally:
            channel.close()


def test_quick_predicts_run_on_the_loop_slow_ones_in_the_pool(served):
    server, stub, threads = served
    _warm(server, stub, "toy", X)
    ones = np.ones((64, BIG), np.float32)
    for _ in range(10):
        np.testing.assert_allclose(to_numpy(stub.Predict(_request("big", ones), timeout=60).outputs["y"]), ones,
                                   rtol=1e-4)
    assert server.core.predict_is_quick(_request("toy", X))
    assert not server.core.predict_is_quick(_request("big", ones))
    # The loop's call re-checks the version it holds (a new one may have come in after the check): not quick,
    # it declines before running anything.
    from tfsctl.serving.request_core import WouldWait

    with pytest.raises(WouldWait):
        server.core.predict_request(_request("big", ones), only_if_quick=True)
    threads.clear()
    stub.Predict(_request("toy", X), timeout=30)
    stub.Predict(_request("big", ones), timeout=60)
    where = dict(threads)
    assert where["toy"] == "tfsctl-grpc-loop", threads
    assert where["big"].startswith("tfsctl-grpc"), threads
    assert where["big"] != "tfsctl-grpc-loop", threads


def test_a_large_request_is_not_quick_even_on_a_quick_model(served):
    server, stub, _ = served
    _warm(server, stub, "toy", X)
    assert server.core.predict_is_quick(_request("toy", X))
    large = np.ones((20_000, 4), np.float32)  # 320 KB of tensor: decoding and encoding are no longer short
    assert not server.core.predict_is_quick(_request("toy", large))
    np.testing.assert_allclose(to_numpy(stub.Predict(_request("toy", large), timeout=30).outputs["y"]), large * 2)


def test_a_predict_the_loop_declines_is_counted_once(served):
    """The loop offers every Predict to the core first; a declined offer (here: too large) runs in the pool and is
    one request in the metrics, not two."""
    server, stub, threads = served
    _warm(server, stub, "toy", X)
    large = np.ones((20_000, 4), np.float32)
    ok = {"model_name": "toy", "status": "OK"}
    before = server.metrics.registry.get_sample_value(":tensorflow:serving:request_count_total", ok) or 0.0
    threads.clear()
    np.testing.assert_allclose(to_numpy(stub.Predict(_request("toy", large), timeout=30).outputs["y"]), large * 2)
    assert [t for _, t in threads][-1] != "tfsctl-grpc-loop", threads
    assert server.metrics.registry.get_sample_value(":tensorflow:serving:request_count_total", ok) == before + 1


def test_errors_on_the_loop_keep_their_status_codes(served):
    server, stub, _ = served
    _warm(server, stub, "toy", X)
    bad = _request("toy", X.astype(np.float64))  # wrong dtype: INVALID_ARGUMENT, as TF Serving
    assert server.core.predict_is_quick(bad)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(bad, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    missing = _request("nope", X)  # unknown model: not quick (fails in the pool), NOT_FOUND
    assert not server.core.predict_is_quick(missing)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(missing, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_a_predict_the_loop_declines_leaves_no_reference_cycle(served):
    """A Predict the quick route declines (WouldWait) goes on to the pool; the declined attempt must leave nothing
    in a reference cycle, or the request (tens of MB for a batch of images) stays in memory until a garbage
    collection: RSS after bursts of large requests stood 60-240 MiB higher with such a cycle."""
    import gc

    from tfsctl.serving.request_core import WouldWait

    server, stub, _ = served
    x = np.ones((5000, 4), np.float32)  # 80 kB: too large for the quick route
    stub.Predict(_request("toy", x), timeout=30)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            np.testing.assert_allclose(to_numpy(stub.Predict(_request("toy", x), timeout=30).outputs["y"]), x * 2)
        gc.collect()
        leaked = [o for o in gc.garbage if isinstance(o, WouldWait)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not leaked, f"{len(leaked)} declined attempts left in reference cycles"


def test_with_batching_a_tiny_lone_request_runs_on_the_loop_and_longer_steps_still_batch(tmp_path: Path,
                                                                                           monkeypatch):
    """With batching, a request on a model whose step takes microseconds runs on the loop, alone at once, even
    while other requests wait for their batch; a model whose step is long enough for batching to pay goes to the
    pool, where concurrent requests share batches."""
    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    write_matmul_model(tmp_path / "mm", 1, 1024, 2)  # a step of a few hundred µs: inline, but batching pays
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 16 }\nbatch_timeout_micros { value: 20000 }\n")
    with _serve(tmp_path, ("toy", "mm"), enable_batching=True,
                batching_parameters_file=str(params)) as (server, threads):
        ones = np.ones((1, 1024), np.float32)
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

            def step(model: str) -> float:
                runner = next(iter(server.manager.peek(model)._runners.values()), None)
                return runner.step_seconds if runner is not None and runner.inline else float("inf")

            # Lone requests (the batcher learns nobody comes) until both steps are measured in the caller's thread.
            for _ in range(200):
                np.testing.assert_allclose(to_numpy(stub.Predict(_request("toy", X), timeout=30).outputs["y"]), X * 2)
                stub.Predict(_request("mm", ones), timeout=30)
                if step("toy") < 1 and step("mm") < 1:
                    break
            # The threshold between the two measured steps, whatever this machine's speed (both run inline).
            toy_step, mm_step = step("toy"), step("mm")
            assert toy_step < mm_step < 1e-3, (toy_step, mm_step)
            from tfsctl.serving import request_core

            monkeypatch.setattr(request_core, "BATCHING_PAYS_STEP_S", (toy_step * mm_step) ** 0.5)
            assert server.core.predict_is_quick(_request("toy", X))
            assert server.manager.peek("mm").runs_inline("")
            assert not server.core.predict_is_quick(_request("mm", ones))
            threads.clear()
            stub.Predict(_request("toy", X), timeout=30)
            assert threads == [("toy", "tfsctl-grpc-loop")]
            before = server.metrics.registry.get_sample_value("tfsctl_batch_size_count", {"model_name": "mm"})
            from concurrent.futures import ThreadPoolExecutor

            xs = [ones * i for i in range(48)]
            threads.clear()
            with ThreadPoolExecutor(17) as pool:
                tiny = pool.submit(lambda: [stub.Predict(_request("toy", X), timeout=30) for _ in range(40)])
                ys = list(pool.map(lambda x: to_numpy(stub.Predict(_request("mm", x), timeout=60).outputs["y"]), xs))
                tiny.result(60)
            for x, y in zip(xs, ys, strict=True):
                np.testing.assert_allclose(y, x, rtol=1e-4)
            # The toy model's requests never queued behind the batches (nor each other): all ran on the loop.
            assert {t for m, t in threads if m == "toy"} == {"tfsctl-grpc-loop"}, threads
        batches = server.metrics.registry.get_sample_value("tfsctl_batch_size_count", {"model_name": "mm"}) - before
        assert batches < 48, "concurrent requests never shared a batch"


def test_health_watch_streams_hold_no_pool_thread_and_stop_is_prompt(tmp_path: Path):
    """grpc.health.v1 Watch (client-side health checking opens one per connection) is served on the loop: more open
    Watch streams than pool threads leave every synchronous RPC answering, and a stop with streams open returns."""
    import time

    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    with serve_model(ready_timeout=None, grace=1, model_name="toy", model_base_path=str(tmp_path / "toy"),
                     grpc_max_threads=4) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        try:
            health = health_pb2_grpc.HealthStub(channel)
            watches = [health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60) for _ in range(8)]
            firsts = {next(w).status for w in watches}
            assert firsts <= {health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING}
            status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
                get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "toy"}), timeout=10)
            assert status.model_version_status[0].version == 1
            for w in watches[:4]:
                w.cancel()
            started = time.monotonic()
            server.stop(1)
            assert time.monotonic() - started < 15
        finally:
            channel.close()


def test_the_predict_path_benchmark_measures_every_layer_of_a_quick_predict(tmp_path: Path):
    """benchmarks/predict_path.py drives the loop's Predict coroutine without an event loop: it fails if a quick
    Predict ever suspends (hands over to the pool) or a layer it names is gone."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "predict_path.py"
    spec = importlib.util.spec_from_file_location("predict_path", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "predict_path.json"
    assert mod.main(["--rounds", "1", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    layers = report["cumulative_us"]
    assert len(layers) == 8 and all(0 < us < 1e6 for us in layers.values()), layers
    assert set(report["between_other_work"]) == {"decode one input (to_numpy)", "session callable (TF step)",
                                                 "Predict RPC body", "bare-aio-tf handler"}


def test_with_batching_a_request_waits_for_its_batch_without_holding_a_pool_thread(tmp_path: Path):
    """With batching, a Predict waits for its batch on the event loop (RequestCore.predict_queued), not in a pool
    thread: with a single pool thread, four concurrent requests still reach the queue together and fill one batch.
    Were each to hold the thread while it waited, one would sit in the queue until its timeout (10 s, past the
    clients' deadlines) and the others behind it in the pool."""
    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 20000 }\nbatch_timeout_micros { value: 10000000 }\n"
                      "num_batch_threads { value: 1 }\n")
    # 5000 rows of 4 floats: 80 kB, too large for the loop's quick route, so each is queued for a batch
    xs = [np.full((5000, 4), i, np.float32) for i in range(4)]
    with _serve(tmp_path, ("toy",), enable_batching=True, batching_parameters_file=str(params),
                grpc_max_threads=1) as (server, _):
        def batches() -> tuple[float, float]:
            get = server.metrics.registry.get_sample_value
            labels = {"model_name": "toy"}
            return get("tfsctl_batch_size_count", labels) or 0.0, get("tfsctl_batch_size_sum", labels) or 0.0

        before = batches()
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(4) as pool:
                ys = list(pool.map(lambda x: to_numpy(stub.Predict(_request("toy", x), timeout=8).outputs["y"]), xs))
        for x, y in zip(xs, ys, strict=True):
            np.testing.assert_allclose(y, x * 2)
        count, total = batches()
        assert (count - before[0], total - before[1]) == (1, 20000), "the four requests did not share one batch"
