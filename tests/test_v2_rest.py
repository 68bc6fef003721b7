"""The Open Inference Protocol's REST API on a real server, driven by Triton's unchanged HTTP client
(``tritonclient.http``) and by raw HTTP for the malformed requests no client would send."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import http.client  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import struct  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tritonclient.http as triton  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402
from v2_models import serve, write_models  # noqa: E402

from tfsctl.testing import half_plus_example, http_call, wait_until, write_monitoring_config  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("v2rest")
    with serve(write_models(base), monitoring_config_file=str(write_monitoring_config(base))) as srv:  # page read
        yield srv


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(f"127.0.0.1:{server.rest_port}", concurrency=2)
    yield c
    c.close()


def error_of(server, path: str, doc, headers: dict | None = None, binary: bytes = b""):
    """POST ``doc`` (JSON, then ``binary``); returns (status, error message)."""
    head = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
    h = dict(headers or {})
    if binary and "Inference-Header-Content-Length" not in h:
        h["Inference-Header-Content-Length"] = str(len(head))
    status, _, body = http_call(server.rest_port, "POST", path, head + binary, h)
    reply = json.loads(body)
    assert set(reply) == {"error"}, reply
    return status, reply["error"]


def _types_inputs(binary: bool, n: int = 2):
    rng = np.random.default_rng(0)
    arrays = {
        "image": rng.integers(0, 256, (n, 4, 5, 3), dtype=np.uint8),
        "ids": np.array([1, -(2**40), 7, 3][:n], np.int64),
        "text": np.array([b"ab", "h\u00e9llo".encode(), b"x", b""][:n], dtype=object),
        "flags": np.array([True, False, True, True][:n]),
        "half": np.array([0.5, 1.25, 3, 4][:n], np.float16),
    }
    datatypes = {"image": "UINT8", "ids": "INT64", "text": "BYTES", "flags": "BOOL", "half": "FP16"}
    inputs = []
    for name, arr in arrays.items():
        i = triton.InferInput(name, list(arr.shape), datatypes[name])
        i.set_data_from_numpy(arr, binary_data=binary or name == "half")  # FP16 has no JSON form in tritonclient
        inputs.append(i)
    return arrays, inputs


def test_health_and_server_metadata(client, server):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "tfsctl" and set(meta["extensions"]) >= {"binary_tensor_data", "model_repository"}
    status, _, body = http_call(server.rest_port, "GET", "/v2/health/ready")
    assert (status, json.loads(body)) == (200, {"ready": True})  # KServe's client reads the body
    assert client.is_model_ready("toy") and client.is_model_ready("toy", "1")
    assert not client.is_model_ready("toy", "2")
    assert http_call(server.rest_port, "GET", "/v2/models/toy/versions/2/ready")[0] == 400
    assert http_call(server.rest_port, "GET", "/v2/models/nope/ready")[0] == 404


def test_model_metadata_maps_signatures_and_datatypes(client, server):
    meta = client.get_model_metadata("types")
    assert meta["name"] == "types" and meta["versions"] == ["1"] and meta["platform"] == "tensorflow_savedmodel"
    inputs = {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"]}
    assert inputs == {"image": ("UINT8", [-1, -1, -1, 3]), "ids": ("INT64", [-1]), "text": ("BYTES", [-1]),
                      "flags": ("BOOL", [-1]), "half": ("FP16", [-1])}
    outputs = {t["name"]: t["datatype"] for t in meta["outputs"]}
    assert outputs == {"mean": "FP32", "inverted": "UINT8", "ids2": "INT64", "text_upper": "BYTES",
                       "flags_not": "BOOL", "half2": "FP16"}
    assert client.get_model_metadata("toy", "1")["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    # another signature through the signature_name parameter; a dtype v2 has no name for is a clear 400
    status, _, body = http_call(server.rest_port, "GET", "/v2/models/tf1?signature_name=classify_x_to_y")
    assert status == 200 and json.loads(body)["inputs"] == [{"name": "inputs", "datatype": "BYTES", "shape": [-1]}]
    status, _, body = http_call(server.rest_port, "GET", "/v2/models/types?signature_name=complex")
    assert status == 400 and "DT_COMPLEX64" in json.loads(body)["error"]
    for path, code in (("/v2/models/nope", 404), ("/v2/models/toy/versions/9", 404),
                       ("/v2/models/toy/versions/x1", 400)):
        status, _, body = http_call(server.rest_port, "GET", path)
        assert status == code and "error" in json.loads(body), (path, status, body)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_every_datatype(client, binary):
    arrays, inputs = _types_inputs(binary)
    outputs = [triton.InferRequestedOutput(n, binary_data=binary or n == "half2")
               for n in ("mean", "inverted", "ids2", "text_upper", "flags_not", "half2")]
    result = client.infer("types", inputs, outputs=outputs, request_id="req-7")
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == "types" and response["model_version"] == "1"
    np.testing.assert_allclose(result.as_numpy("mean"), arrays["image"].astype(np.float32).mean(axis=(1, 2, 3)),
                               rtol=1e-5)
    np.testing.assert_array_equal(result.as_numpy("inverted"), 255 - arrays["image"])
    assert result.as_numpy("inverted").dtype == np.uint8
    np.testing.assert_array_equal(result.as_numpy("ids2"), arrays["ids"] * 2)
    texts = [t.encode() if isinstance(t, str) else t for t in result.as_numpy("text_upper")]  # JSON: str
    assert texts == [b"AB", "H\u00e9LLO".encode()]
    np.testing.assert_array_equal(result.as_numpy("flags_not"), ~arrays["flags"])
    np.testing.assert_array_equal(result.as_numpy("half2"), arrays["half"] * 2)
    kinds = {o["name"]: ("data" in o, "binary_data_size" in o.get("parameters", {})) for o in response["outputs"]}
    assert kinds["ids2"] == ((False, True) if binary else (True, False))


def test_output_selection_and_binary_data_output(client, server):
    arrays, inputs = _types_inputs(True)
    result = client.infer("types", inputs, outputs=[triton.InferRequestedOutput("ids2", binary_data=False)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["ids2"]
    assert result.get_response()["outputs"][0]["data"] == [2, -(2**41)]
    # no outputs named: all of them, binary with the request parameter binary_data_output
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    doc = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": x.tolist()}],
           "parameters": {"binary_data_output": True}}
    status, headers, body = http_call(server.rest_port, "POST", "/v2/models/toy/infer", json.dumps(doc))
    n = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:n])
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    assert head["outputs"][0]["parameters"]["binary_data_size"] == 32
    np.testing.assert_array_equal(np.frombuffer(body[n:], np.float32).reshape(2, 4), x * 2)


def test_nested_and_flat_json_data(server):
    for data in ([1, 2, 3, 4, 5, 6, 7, 8], [[1, 2, 3, 4], [5, 6, 7, 8]]):
        doc = {"id": "n", "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": data}]}
        status, _, body = http_call(server.rest_port, "POST", "/v2/models/toy/versions/1/infer", json.dumps(doc))
        reply = json.loads(body)
        assert status == 200, reply
        assert reply["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [2, 4],
                                     "data": [2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0]}]


def test_async_infer(client):
    x = np.ones((3, 4), np.float32)
    i = triton.InferInput("x", [3, 4], "FP32")
    i.set_data_from_numpy(x)
    pending = [client.async_infer("toy", [i], request_id=str(k)) for k in range(4)]
    for k, p in enumerate(pending):
        r = p.get_result(timeout=60)
        assert r.get_response()["id"] == str(k)
        np.testing.assert_array_equal(r.as_numpy("y"), x * 2)


def test_tf1_export_predict_and_classify_signatures(client, server):
    i = triton.InferInput("x", [3, 1], "FP32")
    i.set_data_from_numpy(np.array([[0.0], [1.0], [4.0]], np.float32))
    np.testing.assert_allclose(client.infer("tf1", [i]).as_numpy("y"), [[2.0], [2.5], [4.0]])
    # the classify signature runs as a predict over serialized tf.Examples (BYTES)
    ex = triton.InferInput("inputs", [2], "BYTES")
    ex.set_data_from_numpy(np.array([half_plus_example(2.0), half_plus_example(6.0)], dtype=object))
    r = client.infer("tf1", [ex], parameters={"signature_name": "classify_x_to_y"})
    np.testing.assert_allclose(r.as_numpy("scores"), [[3.0], [5.0]])
    # a signature name that does not exist is a clear 400
    with pytest.raises(InferenceServerException, match="nope"):
        client.infer("tf1", [ex], parameters={"signature_name": "nope"})


BAD_JSON = [
    # (what, document, expected status, words in the error)
    ("wrong datatype", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "INT32", "data": [1, 2, 3, 4]}]},
     400, "INT32"),
    ("unknown datatype", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP8", "data": [1, 2, 3, 4]}]},
     400, "FP8"),
    ("shape vs data", {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
     400, "8 elements"),
    ("negative dim", {"inputs": [{"name": "x", "shape": [-1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
     400, "dimension"),
    ("huge shape", {"inputs": [{"name": "x", "shape": [2**62, 4], "datatype": "FP32", "data": [1]}]},
     400, "bytes"),
    ("shape not ints", {"inputs": [{"name": "x", "shape": "1,4", "datatype": "FP32", "data": [1, 2, 3, 4]}]},
     400, "shape"),
    ("ragged data", {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [[1, 2], [3, 4, 5]]}]},
     400, "nested unevenly"),
    ("strings as FP32", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["a", "b", "c", "d"]}]},
     400, "numbers"),
    ("unknown input", {"inputs": [{"name": "q", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
     400, "q"),
    ("no data", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32"}]}, 400, "data"),
    ("duplicate input", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}] * 2},
     400, "more than once"),
    ("unknown output", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
                        "outputs": [{"name": "zz"}]}, 400, "zz"),
    ("unknown parameter", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}],
                           "parameters": {"priority": 1}}, 400, "priority"),
    ("inputs not a list", {"inputs": {"x": [1, 2, 3, 4]}}, 400, "inputs"),
    ("booleans among FP32 numbers", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                                 "data": [1.5, True, 3, False]}]}, 400, "bool"),
    ("no elements, a huge dimension", {"inputs": [{"name": "x", "shape": [0, 2**62], "datatype": "FP32",
                                                   "data": []}]}, 400, "too large"),
    ("a boolean in nested FP32 data", {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                                   "data": [[1, 2, 3, True]]}]}, 400, "bool"),
]


@pytest.mark.parametrize("what,doc,status,words", BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_malformed_json_requests(server, what, doc, status, words):
    got, message = error_of(server, "/v2/models/toy/infer", doc)
    assert got == status and words in message, (what, got, message)


def test_malformed_bodies_and_binary_sizes(server):
    path = "/v2/models/toy/infer"
    x = np.ones(4, np.float32).tobytes()
    head = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 16}}]}
    assert error_of(server, path, head, binary=x[:12])[0] == 400  # fewer bytes than binary_data_size
    status, message = error_of(server, path, head, binary=x + b"extra")
    assert status == 400 and "5 bytes" in message  # bytes no input accounts for
    doc12 = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "parameters": {"binary_data_size": 12}}]}
    status, message = error_of(server, path, doc12, binary=x[:12])
    assert status == 400 and "16" in message  # size does not fit the shape
    status, message = error_of(server, path, head, {"Inference-Header-Content-Length": "99999"}, binary=x)
    assert status == 400 and "Inference-Header-Content-Length" in message
    status, message = error_of(server, path, head, {"Inference-Header-Content-Length": "abc"}, binary=x)
    assert status == 400 and "not a number" in message
    status, message = error_of(server, path, b'{"inputs": [{"name": "x", "shape": [1,')  # truncated JSON
    assert status == 400 and "JSON" in message
    # BYTES: element lengths that overrun the buffer, a huge shape over a tiny buffer
    tf1 = "/v2/models/tf1/versions/1/infer"
    bad = struct.pack("<I", 1000) + b"abc"
    doc = {"inputs": [{"name": "inputs", "shape": [1], "datatype": "BYTES",
                       "parameters": {"binary_data_size": len(bad)}}],
           "parameters": {"signature_name": "classify_x_to_y"}}
    status, message = error_of(server, tf1, doc, binary=bad)
    assert status == 400 and "1000" in message
    doc["inputs"][0]["shape"] = [3]
    status, message = error_of(server, tf1, doc, binary=bad)
    assert status == 400 and "4-byte length" in message
    doc["inputs"][0]["shape"] = [10**12]
    status, message = error_of(server, tf1, doc, binary=bad)
    assert status == 400 and "bytes allowed" in message


def test_unknown_models_versions_and_routes(server):
    doc = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    assert error_of(server, "/v2/models/nope/infer", doc)[0] == 404
    for body in ({}, b"not JSON", {"inputs": [{"name": "x"}]}):  # an unknown model first, as Triton looks it up
        status, message = error_of(server, "/v2/models/nope/infer", body)  # before it reads the body
        assert status == 404 and "nope" in message, (body, status, message)
    assert error_of(server, "/v2/models/toy/versions/3/infer", doc)[0] == 404
    assert error_of(server, "/v2/models/toy/versions/-3/infer", doc)[0] == 400
    for version in ("%C2%B2", "%D9%A1"):  # superscript two, Arabic-Indic one: str.isdigit() says digits
        status, message = error_of(server, f"/v2/models/toy/versions/{version}/infer", doc)
        assert status == 400 and "not a model version" in message, (version, status, message)
        status, _, body = http_call(server.rest_port, "GET", f"/v2/models/toy/versions/{version}/ready")
        assert status == 400 and "not a model version" in json.loads(body)["error"], (version, status, body)
    status, _, body = http_call(server.rest_port, "GET", "/v2/models/toy/infer")
    assert status == 400 and "POST" in json.loads(body)["error"]
    status, _, body = http_call(server.rest_port, "GET", "/v2/nothing/here")
    assert status == 404 and "error" in json.loads(body)


def test_server_keeps_serving_after_every_error(client, server):
    for _, doc, _, _ in BAD_JSON:
        error_of(server, "/v2/models/toy/infer", doc)
    i = triton.InferInput("x", [1, 4], "FP32")
    i.set_data_from_numpy(np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(client.infer("toy", [i]).as_numpy("y"), np.full((1, 4), 2.0))
    assert client.is_server_ready()


def test_repository_index_unload_and_load(client, server):
    index = {(m["name"], m.get("version")): m["state"] for m in client.get_model_repository_index()}
    assert index[("toy", "1")] == "READY" and index[("types", "1")] == "READY"
    client.unload_model("tf1")
    assert not client.is_model_ready("tf1")
    gone = [m for m in client.get_model_repository_index() if m["name"] == "tf1"]
    assert gone == [{"name": "tf1", "version": "", "state": "UNAVAILABLE", "reason": "unloaded"}]
    client.load_model("tf1")
    assert client.is_model_ready("tf1")
    status, _, body = http_call(server.rest_port, "POST", "/v2/repository/models/never/load", "{}")
    assert status == 404 and "never" in json.loads(body)["error"]
    status, _, body = http_call(server.rest_port, "POST", "/v2/repository/index", json.dumps({"ready": True}))
    assert status == 200 and all(m["state"] == "READY" for m in json.loads(body))


def test_large_json_image_same_answers_as_binary(server):
    """A large image as JSON numbers (read straight from the bytes) answers as its binary form, and its errors are
    the general path's."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (1, 64, 80, 3), dtype=np.uint8)

    def post(data):
        doc = {"inputs": [
            {"name": "image", "shape": list(image.shape), "datatype": "UINT8", "data": data},
            {"name": "ids", "shape": [1], "datatype": "INT64", "data": [1]},
            {"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]},
            {"name": "flags", "shape": [1], "datatype": "BOOL", "data": [True]},
            {"name": "half", "shape": [1], "datatype": "FP16", "parameters": {"binary_data_size": 2}}],
            "outputs": [{"name": "inverted"}]}
        head = json.dumps(doc).encode()
        status, _, reply = http_call(server.rest_port, "POST", "/v2/models/types/infer", head + np.float16(1).tobytes(),
                                {"Inference-Header-Content-Length": str(len(head))})
        return status, json.loads(reply)

    status, reply = post(image.tolist())
    assert status == 200, reply
    out = reply["outputs"][0]
    np.testing.assert_array_equal(np.array(out["data"], np.uint8).reshape(out["shape"]), 255 - image)
    wrong = image.astype(np.int64).tolist()
    wrong[0][10][10][1] = 300
    status, reply = post(wrong)
    assert status == 400 and "300" in reply["error"] and "UINT8" in reply["error"]
    status, reply = post((image / 2).tolist())
    assert status == 400 and "integers" in reply["error"]


def test_metrics_count_v2_requests_and_cors_preflight(client, server):
    i = triton.InferInput("x", [1, 4], "FP32")
    i.set_data_from_numpy(np.ones((1, 4), np.float32))
    client.infer("toy", [i])
    status, _, body = http_call(server.rest_port, "GET", "/monitoring/prometheus/metrics")
    text = body.decode()
    assert status == 200
    assert ':tensorflow:serving:request_latency_count{model_name="toy",API="infer",entrypoint="REST"}' in text
    origin = {"Origin": "http://example.com"}
    assert http_call(server.rest_port, "OPTIONS", "/v2/models/toy/infer", headers=origin)[0] == 200
    assert http_call(server.rest_port, "OPTIONS", "/v2/models/toy/infer")[0] == 400


def test_truncated_body_is_dropped_quietly_and_the_server_keeps_serving(client, server, caplog):
    import socket

    body = b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2'
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=30) as sock:
        sock.sendall(b"POST /v2/models/toy/infer HTTP/1.1\r\nHost: t\r\nContent-Length: 500\r\n\r\n" + body)
        sock.shutdown(socket.SHUT_WR)  # the client stops 440 bytes short
        while sock.recv(65536):
            pass
    # the request is counted once its handler is done: CANCELLED (the client left), not INTERNAL with a traceback
    pattern = re.compile(r':tensorflow:serving:request_count\{model_name="toy",status="(\w+)"\}')
    wait_until(lambda: {"CANCELLED", "INTERNAL"} & set(pattern.findall(
        http_call(server.rest_port, "GET", "/monitoring/prometheus/metrics")[2].decode())),
        30, "the truncated request to be counted", every=0.05)
    statuses = set(pattern.findall(http_call(server.rest_port, "GET", "/monitoring/prometheus/metrics")[2].decode()))
    assert "INTERNAL" not in statuses and "CANCELLED" in statuses, statuses
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    i = triton.InferInput("x", [1, 4], "FP32")
    i.set_data_from_numpy(np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(client.infer("toy", [i]).as_numpy("y"), np.full((1, 4), 2.0))


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client, algorithm):
    """tritonclient's request compression: the header length counts the decompressed body."""
    for binary in (True, False):
        i = triton.InferInput("x", [1, 4], "FP32")
        i.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4), binary_data=binary)
        r = client.infer("toy", [i], request_compression_algorithm=algorithm,
                         response_compression_algorithm=algorithm)
        np.testing.assert_array_equal(r.as_numpy("y"), [[0, 2, 4, 6]])


def test_zero_size_tensors_as_json(server):
    """An empty tensor of any datatype is ``"data": []`` (numpy reads [] as float64; that says nothing about the
    datatype), and the outputs come back empty with their shapes."""
    inputs = {"image": ("UINT8", [0, 2, 2, 3]), "ids": ("INT64", [0]), "text": ("BYTES", [0]),
              "flags": ("BOOL", [0]), "half": ("FP16", [0])}
    doc = {"inputs": [{"name": k, "datatype": dt, "shape": shape, "data": []} for k, (dt, shape) in inputs.items()]}
    status, _, body = http_call(server.rest_port, "POST", "/v2/models/types/infer", json.dumps(doc))
    assert status == 200, body
    shapes = {o["name"]: (o["shape"], o["data"]) for o in json.loads(body)["outputs"]}
    assert shapes == {"inverted": ([0, 2, 2, 3], []), "mean": ([0], []), "ids2": ([0], []), "text_upper": ([0], []),
                      "flags_not": ([0], []), "half2": ([0], [])}, shapes


def test_an_empty_outputs_list_asks_for_every_output(server):
    """"outputs": [] names no output, so all of them come back, as in Triton (no requested output: all) and as
    over gRPC here."""
    doc = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}], "outputs": []}
    status, _, body = http_call(server.rest_port, "POST", "/v2/models/toy/infer", json.dumps(doc))
    assert status == 200, body
    assert [(o["name"], o["data"]) for o in json.loads(body)["outputs"]] == [("y", [2, 4, 6, 8])]


def test_many_duplicate_inputs_or_outputs_are_refused_promptly(server):
    """100k copies of one input (or requested output) are one 400 naming it; finding the duplicates counted each
    name over the whole list (quadratic: minutes of CPU with the GIL held for a 6 MB body, the server frozen)."""
    x = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
    for doc, words in (({"inputs": [x] * 100_000}, "input(s) x given more than once"),
                       ({"inputs": [x], "outputs": [{"name": "y"}] * 100_000}, "output(s) y requested more than once")):
        conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
        try:
            conn.request("POST", "/v2/models/toy/infer", body=json.dumps(doc).encode())
            r = conn.getresponse()
            status, message = r.status, json.loads(r.read())["error"]
        finally:
            conn.close()
        assert status == 400 and words in message, (status, message)


def test_non_finite_floats_as_triton_writes_and_reads_them(server):
    """NaN and ±Infinity travel as the bare tokens NaN, Infinity, -Infinity both ways, as Triton reads and writes
    them (rapidjson's NaN/Inf flags, server#3870) and tritonclient.http's json.dumps sends them. orjson wrote each as
    null, so an infinity came back as NaN (tritonclient reads null as NaN) or not a number at all, and it refused
    the tokens in a request as malformed JSON."""
    values = [float("nan"), float("inf"), float("-inf"), 1.0]
    x = {"name": "x", "shape": [1, 4], "datatype": "FP32"}
    raw = np.array(values, np.float32).tobytes()
    head = json.dumps({"inputs": [{**x, "parameters": {"binary_data_size": 16}}]}).encode()
    binary = {"Inference-Header-Content-Length": str(len(head))}
    replies = [http_call(server.rest_port, "POST", "/v2/models/toy/infer", head + raw, binary),
               http_call(server.rest_port, "POST", "/v2/models/toy/infer",
                         json.dumps({"inputs": [{**x, "data": values}]}))]
    for status, _, body in replies:
        assert status == 200, body
        assert b"[NaN,Infinity,-Infinity,2.0]" in body, body
        y = json.loads(body)["outputs"][0]["data"]
        assert np.isnan(y[0]) and y[1:] == [float("inf"), float("-inf"), 2.0], y
