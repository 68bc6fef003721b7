"""Request logging as TF Serving's LoggingConfig: TFRecord files of PredictionLog with LogMetadata, written by a
bounded queue that never slows or fails a request, rotated by size, counted in request_log_count, reloadable."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tfsctl.core.config import parse_model_server_config
from tfsctl.core.request_log import FileCollector, RequestLogger
from tfsctl.errors import ConfigError
from tfsctl.serving.tensors import from_numpy
from tfsctl.serving.testing import served as serve_model
from tfsctl.testing import toy_example, write_toy_model
from tfsctl.tfrecord import read_records


def _config(base: Path, prefix: Path | None, rate: float = 1.0, kind: str = "file") -> str:
    logging_config = "" if prefix is None else (
        f'logging_config {{ log_collector_config {{ type: "{kind}" filename_prefix: "{prefix}" }} '
        f"sampling_config {{ sampling_rate: {rate} }} }}")
    return (f'model_config_list {{ config {{ name: "toy" base_path: "{base}" model_platform: "tensorflow" '
            f"{logging_config} }} }}\n")


def _records(prefix: Path) -> list[prediction_log_pb2.PredictionLog]:
    out = []
    for path in sorted(prefix.parent.glob(prefix.name + "-*.tfrecord")):
        with open(path, "rb") as f:
            for data in read_records(f):
                entry = prediction_log_pb2.PredictionLog()
                entry.ParseFromString(data)
                out.append(entry)
    return out


def test_unknown_collector_types_and_bad_rates_are_refused_at_config_load(tmp_path):
    with pytest.raises(ConfigError, match="Cannot find LogCollector::Factory for type: 'kafka'.*file, tfrecord"):
        parse_model_server_config(_config(tmp_path, tmp_path / "log", kind="kafka"), "models.config")
    with pytest.raises(ConfigError, match="sampling_rate must be in"):
        parse_model_server_config(_config(tmp_path, tmp_path / "log", rate=1.5), "models.config")
    for kind in ("file", "tfrecord"):
        parse_model_server_config(_config(tmp_path, tmp_path / "log", kind=kind), "models.config")


@pytest.fixture
def served(tmp_path):
    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    config = tmp_path / "models.config"
    prefix = tmp_path / "logs" / "toy"
    config.write_text(_config(tmp_path / "toy", prefix))
    with serve_model(rest=True, ready_timeout=None, grace=2, model_config_file=str(config),
                     request_log_max_file_bytes=4096) as server:
        yield server, prefix, config


def _examples_input(target) -> None:
    target.example_list.examples.add().ParseFromString(toy_example([1.0, 2.0, 3.0, 4.0]))


def test_every_api_on_both_wires_is_logged_with_its_response_under_load(served):
    server, prefix, _ = served
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    rest = f"http://127.0.0.1:{server.rest_port}/v1/models/toy"

    def grpc_predict(i: int) -> None:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "toy"
        request.inputs["x"].CopyFrom(from_numpy(np.full((1, 4), i, np.float32)))
        stub.Predict(request, timeout=30)

    def rest_call(verb: str, body: dict) -> None:
        req = urllib.request.Request(f"{rest}:{verb}", data=json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.status == 200

    n = 40
    with ThreadPoolExecutor(8) as pool:  # concurrent traffic: the log keeps every one, in no particular order
        list(pool.map(grpc_predict, range(n)))
        list(pool.map(lambda i: rest_call("predict", {"instances": [[float(i)] * 4]}), range(n)))
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = "toy", "classify"
    _examples_input(classify.input)
    stub.Classify(classify, timeout=30)
    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = "toy", "regress"
    _examples_input(regress.input)
    stub.Regress(regress, timeout=30)
    multi = inference_pb2.MultiInferenceRequest()
    task = multi.tasks.add()
    task.model_spec.name, task.model_spec.signature_name = "toy", "regress"
    task.method_name = "tensorflow/serving/regress"
    _examples_input(multi.input)
    stub.MultiInference(multi, timeout=30)
    rest_call("classify", {"signature_name": "classify", "examples": [{"x": [1.0, 2.0, 3.0, 4.0]}]})
    rest_call("regress", {"signature_name": "regress", "examples": [{"x": [1.0, 2.0, 3.0, 4.0]}]})
    with pytest.raises(grpc.RpcError):  # a failed request is not logged
        bad = predict_pb2.PredictRequest()
        bad.model_spec.name = "toy"
        stub.Predict(bad, timeout=30)
    channel.close()
    assert server.request_logger.flush(30)
    page = server.metrics.render().decode()
    assert ':tensorflow:serving:request_log_count{model_name="toy",status_code="OK"} 85' in page
    server.stop(2)  # every file is finished: final names, nothing partial

    assert not list(prefix.parent.glob("*.partial"))
    files = sorted(prefix.parent.glob("toy-*.tfrecord"))
    assert len(files) > 1 and all(f.stat().st_size <= 4096 for f in files)  # rotated by size
    entries = _records(prefix)
    kinds = [e.WhichOneof("log_type") for e in entries]
    assert kinds.count("predict_log") == 2 * n
    assert (kinds.count("classify_log"), kinds.count("regress_log"), kinds.count("multi_inference_log")) == (2, 2, 1)
    predicts = [e for e in entries if e.WhichOneof("log_type") == "predict_log"]  # (reading a map key adds it)
    xs = [e.predict_log.request.inputs["x"] for e in predicts]
    sent = [float(np.frombuffer(x.tensor_content, np.float32)[0]) if x.tensor_content else x.float_val[0] for x in xs]
    assert sorted(sent) == sorted([float(i) for i in range(n)] * 2)
    for e in entries:
        meta = e.log_metadata
        assert meta.model_spec.name == "toy" and meta.model_spec.version.value == 1
        assert meta.sampling_config.sampling_rate == 1.0 and list(meta.saved_model_tags) == ["serve"]
        assert meta.timestamp_secs > 0
        if e.WhichOneof("log_type") == "predict_log":
            x = e.predict_log.request.inputs["x"]
            xs = np.frombuffer(x.tensor_content, np.float32) if x.tensor_content else np.array(x.float_val)
            np.testing.assert_allclose(e.predict_log.response.outputs["y"].float_val, xs * 2)
            assert meta.model_spec.signature_name == "serving_default"
    assert len(entries[kinds.index("classify_log")].classify_log.response.result.classifications) == 1


def test_reload_changes_the_logging(served):
    server, prefix, config = served
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "toy"
    request.inputs["x"].CopyFrom(from_numpy(np.ones((1, 4), np.float32)))
    stub.Predict(request, timeout=30)
    moved = prefix.parent / "moved"
    server.server_core.apply_config(parse_model_server_config(_config(Path(config).parent / "toy", moved)))
    stub.Predict(request, timeout=30)
    stub.Predict(request, timeout=30)
    server.server_core.apply_config(parse_model_server_config(_config(Path(config).parent / "toy", None)))
    stub.Predict(request, timeout=30)  # logging off: not logged
    assert server.request_logger.flush(30)
    channel.close()
    server.stop(2)
    assert len(_records(prefix)) == 1 and len(_records(moved)) == 2


# --- the queue and the sink, without a server -------------------------------------------------------------------


def _logger(tmp_path: Path, counts: dict, **kwargs) -> RequestLogger:
    logger = RequestLogger(counter=lambda model, code: counts.__setitem__(code, counts.get(code, 0) + 1), **kwargs)
    logger.configure(parse_model_server_config(_config(tmp_path, tmp_path / "logs" / "toy")))
    return logger


def _entry() -> prediction_log_pb2.PredictionLog:
    entry = prediction_log_pb2.PredictionLog()
    entry.predict_log.request.model_spec.name = "toy"
    return entry


def _spec():
    from tfsctl.serving.request_core import make_model_spec

    return make_model_spec("toy", 1, "serving_default")


def test_a_slow_sink_drops_and_counts_but_never_blocks_the_request_path(tmp_path, monkeypatch):
    counts: dict[str, int] = {}
    entered, release = threading.Event(), threading.Event()
    real_write = FileCollector.write

    def slow_write(self, data):
        entered.set()
        assert release.wait(60)
        real_write(self, data)

    monkeypatch.setattr(FileCollector, "write", slow_write)
    logger = _logger(tmp_path, counts, queue_records=4)
    logger.submit("toy", _spec(), _entry, 10)
    assert entered.wait(30)  # the writer is stuck on the first record
    for _ in range(99):  # each returns at once although the sink does not move
        logger.submit("toy", _spec(), _entry, 10)
    assert counts == {"UNAVAILABLE": 95}  # 4 queued, the rest dropped and counted
    release.set()
    assert logger.flush(30)
    logger.stop()
    assert counts == {"UNAVAILABLE": 95, "OK": 5}
    assert len(_records(tmp_path / "logs" / "toy")) == 5


def test_a_full_disk_is_logged_once_and_counted(tmp_path, monkeypatch, caplog):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    counts: dict[str, int] = {}

    def open_full(self):  # the kernel's always-full device: every write fails with ENOSPC
        self._path = str(tmp_path / "unused")
        self._file = open("/dev/full", "wb")  # noqa: SIM115 - closed by the collector
        self._size = 0

    monkeypatch.setattr(FileCollector, "_open", open_full)
    caplog.set_level(logging.ERROR, logger="tfsctl.core.request_log")
    logger = _logger(tmp_path, counts)
    for _ in range(5):
        logger.submit("toy", _spec(), _entry, 10)
    assert logger.flush(30)
    logger.stop()
    assert counts == {"RESOURCE_EXHAUSTED": 5}
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1


def test_an_unwritable_prefix_fails_no_request(tmp_path, caplog):
    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the prefix wants a directory")
    config = tmp_path / "models.config"
    config.write_text(_config(tmp_path / "toy", blocker / "logs" / "toy"))
    caplog.set_level(logging.ERROR, logger="tfsctl.core.request_log")
    with serve_model(ready_timeout=None, grace=2, model_config_file=str(config)) as server:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "toy"
        request.inputs["x"].CopyFrom(from_numpy(np.ones((1, 4), np.float32)))
        for _ in range(6):
            assert stub.Predict(request, timeout=30).outputs["y"].float_val == [2.0] * 4
        channel.close()
        assert server.request_logger.flush(30)
        page = server.metrics.render().decode()
        assert ':tensorflow:serving:request_log_count{model_name="toy",status_code="NOT_FOUND"} 6' in page
        assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1


def test_log_files_parse_as_tensorflow_tfrecords(tmp_path):
    counts: dict[str, int] = {}
    logger = _logger(tmp_path, counts)
    for _ in range(3):
        logger.submit("toy", _spec(), _entry, 10)
    logger.stop()
    import tensorflow as tf

    [path] = (tmp_path / "logs").glob("toy-*.tfrecord")
    records = list(tf.data.TFRecordDataset(str(path)).as_numpy_iterator())
    assert len(records) == 3 and text_format.MessageToString(
        prediction_log_pb2.PredictionLog.FromString(records[0]).log_metadata.model_spec).startswith('name: "toy"')


# --- using the logs: inspect, replay, warmup -----------------------------------------------------------------------


def _traffic(server, n: int) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    for i in range(n):
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "toy"
        request.inputs["x"].CopyFrom(from_numpy(np.full((1 + i % 3, 4), i, np.float32)))
        stub.Predict(request, timeout=30)
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = "toy", "classify"
    _examples_input(classify.input)
    stub.Classify(classify, timeout=30)
    channel.close()


def test_inspect_replay_and_warmup_from_a_request_log(served, tmp_path):
    from typer.testing import CliRunner

    from tfsctl.cli import app
    from tfsctl.client import bench
    from tfsctl.client.replay import load_requests
    from tfsctl.core.loader import Loader
    from tfsctl.export import export_model
    from tfsctl.inspection import inspect_request_log

    server, prefix, _ = served
    _traffic(server, 12)
    assert server.request_logger.flush(30)

    # inspect: a summary per model, signature and API (the file being written counts too)
    info = inspect_request_log(prefix)
    toy = info.models["toy"]
    assert info.records == 13 and toy["apis"] == {"predict_log": 12, "classify_log": 1}
    assert toy["signatures"] == {"serving_default": 12, "classify": 1} and toy["versions"] == {"1": 13}
    assert info.first and info.last >= info.first
    res = CliRunner().invoke(app, ["inspect", str(prefix), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert (doc["kind"], doc["records"], doc["models"]["toy"]["apis"]["predict_log"]) == ("request_log", 13, 12)
    res = CliRunner().invoke(app, ["inspect", str(prefix)])
    assert res.exit_code == 0 and "request log" in res.stdout and "predict_log:" in res.stdout, res.output

    # export --warmup-from: the logged requests become the new version's warmup records
    export_model(Path(server.server_core.config().model_config_list.config[0].base_path) / "1", tmp_path / "warm",
                 source_kind="saved-model", warmup_from=prefix)
    loaded = Loader("warm", 1, tmp_path / "warm" / "1").load()
    assert loaded.warmup_records == 13
    loaded.close()

    # bench --requests-from: the logged mix (Predict and Classify) goes back to the server
    replay = load_requests(str(prefix))
    assert [r.method for r in replay].count("Classify") == 1
    before = server.metrics.render().decode()
    (result,) = bench.run_sweep(f"127.0.0.1:{server.grpc_port}", [2], 0.0, 0.5, inputs={}, model="toy",
                                max_requests=26, replay=replay)
    assert result.errors == 0 and result.requests > 0
    after = server.metrics.render().decode()

    def count(text: str, api: str) -> int:
        m = re.search(rf'^:tensorflow:serving:request_latency_count\{{model_name="toy",API="{api}",'
                      rf'entrypoint="GRPC"\}} (\d+)$', text, re.M)
        return int(m.group(1)) if m else 0

    assert count(after, "Classify") > count(before, "Classify")
    assert count(after, "Predict") > count(before, "Predict")
    res = CliRunner().invoke(app, ["bench", "--server", f"127.0.0.1:{server.rest_port}", "--protocol", "rest",
                                   "--requests-from", str(prefix), "--model", "toy", "-c", "1",
                                   "--warmup-seconds", "0", "--measure-seconds", "0.3", "--json"])
    assert res.exit_code == 0, res.output
    assert '"errors": 0' in res.stdout.replace('"errors":0', '"errors": 0'), res.stdout



def test_sampling_rate_samples_about_that_share(tmp_path):
    logger = RequestLogger()
    logger.configure(parse_model_server_config(_config(tmp_path, tmp_path / "logs" / "toy", rate=0.05)))
    n = 20_000
    hits = sum(logger.wants("toy") for _ in range(n))
    sigma = (n * 0.05 * 0.95) ** 0.5
    assert abs(hits - n * 0.05) < 6 * sigma, hits  # binomial: outside 6 sigma about once in 10^9 runs
    assert not logger.wants("other")  # a model without logging_config
    logger.configure(parse_model_server_config(_config(tmp_path, tmp_path / "logs" / "toy", rate=0.0)))
    assert not any(logger.wants("toy") for _ in range(1000))
    logger.stop()


def test_per_task_sampling_configs_that_cannot_match_are_refused(tmp_path):
    text = _config(tmp_path, tmp_path / "log").replace(
        "sampling_rate: 1.0 }", 'sampling_rate: 1.0 per_task_sampling_configs { dc: "us" sampling_rate: 0.5 } }')
    with pytest.raises(ConfigError, match="per_task_sampling_configs naming a dc"):
        parse_model_server_config(text, "models.config")
