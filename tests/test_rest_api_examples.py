"""Every example of TF Serving's g3doc/api_rest.md against a real ``tfsctl serve`` process on 127.0.0.1.

The models are written here with TF2 APIs: ``saved_model_half_plus_three`` (version 123: y = 0.5 x + 3, with
regress and classify signatures over tf.Examples, as TF Serving's testdata model) and ``examples`` (the doc's request
shapes: three named inputs tag/signal/sensor, a string input, a [N, 1, 2] input, and ``classify_objects`` over
Examples with ``image`` bytes and a ``caption``).
"""

from __future__ import annotations

import base64
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfsctl.testing import free_port, http_call, wait_until  # noqa: E402

HALF = "saved_model_half_plus_three"


def _write_half_plus_three(path: Path) -> None:
    import tensorflow as tf

    from tfsctl.savedmodel import CLASSIFY_METHOD, REGRESS_METHOD, set_method_names

    def parse(serialized: tf.Tensor) -> tf.Tensor:
        return tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([1], tf.float32)})["x"]

    class HalfPlusThree(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def predict(self, x):
            return {"y": 0.5 * x + 3.0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs):
            return {"outputs": 0.5 * parse(inputs) + 3.0}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs):
            return {"scores": 0.5 * parse(inputs) + 3.0}

    m = HalfPlusThree()
    tf.saved_model.save(m, str(path), signatures={
        "serving_default": m.predict, "tensorflow/serving/regress": m.regress,
        "tensorflow/serving/classify": m.classify})
    set_method_names(path, {"tensorflow/serving/regress": REGRESS_METHOD,
                            "tensorflow/serving/classify": CLASSIFY_METHOD})


def _write_examples(path: Path) -> None:
    import tensorflow as tf

    from tfsctl.savedmodel import CLASSIFY_METHOD, set_method_names

    class Examples(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="tag"),
                                      tf.TensorSpec([None, 5], tf.int32, name="signal"),
                                      tf.TensorSpec([None, 2, 2], tf.int32, name="sensor")])
        def named(self, tag, signal, sensor):
            return {"tag": tag, "total": tf.reduce_sum(signal, 1) + tf.reduce_sum(sensor, [1, 2])}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="s")])
        def strings(self, s):
            return {"length": tf.strings.length(s)}

        @tf.function(input_signature=[tf.TensorSpec([None, 1, 2], tf.float32, name="p")])
        def pairs(self, p):
            return {"sum": tf.reduce_sum(p, [1, 2])}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify_objects(self, inputs):
            f = tf.io.parse_example(inputs, {"image": tf.io.FixedLenFeature([], tf.string),
                                             "caption": tf.io.FixedLenFeature([], tf.string)})
            return {"classes": tf.expand_dims(f["caption"], 1),
                    "scores": tf.expand_dims(tf.cast(tf.strings.length(f["image"]), tf.float32), 1)}

    m = Examples()
    tf.saved_model.save(m, str(path), signatures={
        "serving_default": m.named, "strings": m.strings, "pairs": m.pairs, "classify_objects": m.classify_objects})
    set_method_names(path, {"classify_objects": CLASSIFY_METHOD})


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api_rest")
    _write_half_plus_three(tmp / HALF / "123")
    _write_examples(tmp / "examples" / "1")
    config = tmp / "models.config"
    config.write_text(f'model_config_list {{\n  config {{ name: "{HALF}" base_path: "{tmp / HALF}" '
                      f'model_platform: "tensorflow" }}\n  config {{ name: "examples" base_path: "{tmp / "examples"}" '
                      f'model_platform: "tensorflow" }}\n}}\n')
    rest_port = free_port()
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "tfsctl", "serve", f"--port={free_port()}", f"--rest_api_port={rest_port}",
         f"--model_config_file={config}", "--host=127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    try:
        def ready() -> bool:
            assert proc.poll() is None, (tmp / "serve.log").read_text()[-3000:]
            try:
                return all(http_call(rest_port, "GET", f"/v1/models/{m}")[0] == 200 for m in (HALF, "examples"))
            except OSError:
                return False  # the port is not open yet: poll again

        wait_until(ready, 180, "both models over REST", every=0.2,
                   explain=lambda: (tmp / "serve.log").read_text()[-3000:])
        yield rest_port
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_status(port):
    status, headers, body = http_call(port, "GET", f"/v1/models/{HALF}")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"model_version_status": [
        {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}


def test_predict_regress_and_classify(port):
    status, _, body = http_call(port, "POST", f"/v1/models/{HALF}:predict", '{"instances": [1.0,2.0,5.0]}')
    assert status == 200 and json.loads(body) == {"predictions": [3.5, 4.0, 5.5]}
    status, _, body = http_call(port, "POST", f"/v1/models/{HALF}:regress",
                           '{"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}')
    assert status == 200 and json.loads(body) == {"results": [3.5, 4.0]}
    status, _, body = http_call(port, "POST", f"/v1/models/{HALF}/versions/123:classify",
                           '{"signature_name": "tensorflow/serving/classify", "examples": [{"x": 2.0}]}')
    assert status == 200 and json.loads(body) == {"results": [[["", 4.0]]]}


def test_unknown_model_is_404_with_tf_serving_text(port):
    status, headers, body = http_call(port, "POST", "/v1/models/half:predict", '{"instances": [1.0,5.0]}')
    assert status == 404 and headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"].startswith("Servable not found for request: Latest(half)")


def test_metadata(port):
    status, _, body = http_call(port, "GET", f"/v1/models/{HALF}/metadata")
    doc = json.loads(body)
    assert status == 200 and doc["model_spec"] == {"name": HALF, "signature_name": "", "version": "123"}
    sigs = doc["metadata"]["signature_def"]["signature_def"]
    assert sigs["tensorflow/serving/regress"]["method_name"] == "tensorflow/serving/regress"
    assert sigs["serving_default"]["inputs"]["x"]["dtype"] == "DT_FLOAT"


def test_row_and_columnar_request_formats(port):
    status, _, body = http_call(port, "POST", "/v1/models/examples:predict",
                           json.dumps({"signature_name": "strings", "instances": ["foo", "bar", "baz"]}))
    assert status == 200 and json.loads(body) == {"predictions": [3, 3, 3]}
    status, _, body = http_call(port, "POST", "/v1/models/examples:predict",
                           json.dumps({"signature_name": "pairs", "instances": [[[1, 2]], [[3, 4]]]}))
    assert status == 200 and json.loads(body) == {"predictions": [3.0, 7.0]}
    rows = {"instances": [{"tag": "foo", "signal": [1, 2, 3, 4, 5], "sensor": [[1, 2], [3, 4]]},
                          {"tag": "bar", "signal": [3, 4, 1, 2, 5], "sensor": [[4, 5], [6, 8]]}]}
    cols = {"inputs": {"tag": ["foo", "bar"], "signal": [[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]],
                       "sensor": [[[1, 2], [3, 4]], [[4, 5], [6, 8]]]}}
    status, _, body = http_call(port, "POST", "/v1/models/examples:predict", json.dumps(rows))
    predictions = sorted(json.loads(body)["predictions"], key=lambda p: p["tag"], reverse=True)
    assert status == 200 and predictions == [{"tag": "foo", "total": 25}, {"tag": "bar", "total": 38}]
    status, _, body = http_call(port, "POST", "/v1/models/examples:predict", json.dumps(cols))
    assert status == 200 and json.loads(body) == {"outputs": {"tag": ["foo", "bar"], "total": [25, 38]}}


def test_classify_with_binary_values(port):
    request = {"signature_name": "classify_objects", "examples": [
        {"image": {"b64": "aW1hZ2UgYnl0ZXM="}, "caption": "seaside"},
        {"image": {"b64": "YXdlc29tZSBpbWFnZSBieXRlcw=="}, "caption": "mountains"}]}
    assert base64.b64decode("aW1hZ2UgYnl0ZXM=") == b"image bytes"
    status, _, body = http_call(port, "POST", "/v1/models/examples:classify", json.dumps(request))
    assert status == 200 and json.loads(body) == {"results": [[["seaside", 11.0]], [["mountains", 19.0]]]}


def test_json_conformance_nan_and_infinity(port):
    body = '{"signature_name": "tensorflow/serving/regress", "examples": [{"x": NaN}, {"x": Infinity}, {"x": -Inf}]}'
    status, _, reply = http_call(port, "POST", f"/v1/models/{HALF}:regress", body)
    assert status == 200 and b"NaN" in reply and b"-Infinity" in reply
    results = json.loads(reply)["results"]  # Python's json reads the tokens, as the doc says
    assert math.isnan(results[0]) and results[1:] == [math.inf, -math.inf]
    status, _, reply = http_call(port, "POST", f"/v1/models/{HALF}:predict", '{"inputs": [NaN, 2.1, -Infinity]}')
    assert status == 200 and reply.replace(b" ", b"") == b'{"outputs":[NaN,4.05,-Infinity]}'
