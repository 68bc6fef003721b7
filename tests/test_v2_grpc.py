"""The Open Inference Protocol's gRPC API (``inference.GRPCInferenceService``) on a real server's gRPC port,
driven by Triton's unchanged gRPC clients (``tritonclient.grpc``, ``tritonclient.grpc.aio``) and, for typed
``contents`` and malformed requests, by the generated stub of the same package."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import asyncio  # noqa: E402
import threading  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tritonclient.grpc as triton  # noqa: E402
import tritonclient.grpc.aio as triton_aio  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402
from v2_models import serve, write_models  # noqa: E402

from tfsctl.testing import half_plus_example  # noqa: E402

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with serve(write_models(tmp_path_factory.mktemp("v2grpc"))) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(f"127.0.0.1:{server.grpc_port}")
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def _inputs():
    rng = np.random.default_rng(1)
    arrays = {
        "image": rng.integers(0, 256, (2, 3, 4, 3), dtype=np.uint8),
        "ids": np.array([5, -(2**50)], np.int64),
        "text": np.array([b"tf", b"\xff\x00raw"], dtype=object),
        "flags": np.array([False, True]),
        "half": np.array([1.5, -2], np.float16),
    }
    datatypes = {"image": "UINT8", "ids": "INT64", "text": "BYTES", "flags": "BOOL", "half": "FP16"}
    inputs = []
    for name, arr in arrays.items():
        i = triton.InferInput(name, list(arr.shape), datatypes[name])
        i.set_data_from_numpy(arr)
        inputs.append(i)
    return arrays, inputs


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("toy") and client.is_model_ready("toy", "1") and not client.is_model_ready("toy", "4")
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        client.is_model_ready("nope")
    meta = client.get_server_metadata()
    assert meta.name == "tfsctl" and "binary_tensor_data" in meta.extensions
    m = client.get_model_metadata("types", as_json=True)
    assert m["platform"] == "tensorflow_savedmodel" and m["versions"] == ["1"]
    assert {t["name"]: (t["datatype"], t["shape"]) for t in m["inputs"]}["image"] == ("UINT8", ["-1", "-1", "-1", "3"])
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        client.get_model_metadata("toy", "9")


def test_infer_every_datatype_raw(client):
    arrays, inputs = _inputs()
    result = client.infer("types", inputs, request_id="g1")
    assert result.get_response().id == "g1" and result.get_response().model_version == "1"
    np.testing.assert_array_equal(result.as_numpy("inverted"), 255 - arrays["image"])
    np.testing.assert_array_equal(result.as_numpy("ids2"), arrays["ids"] * 2)
    assert list(result.as_numpy("text_upper")) == [b"TF", b"\xff\x00RAW"]
    np.testing.assert_array_equal(result.as_numpy("flags_not"), ~arrays["flags"])
    np.testing.assert_array_equal(result.as_numpy("half2"), arrays["half"] * 2)
    np.testing.assert_allclose(result.as_numpy("mean"), arrays["image"].astype(np.float32).mean(axis=(1, 2, 3)),
                               rtol=1e-5)


def test_output_selection(client):
    _, inputs = _inputs()
    result = client.infer("types", inputs, outputs=[triton.InferRequestedOutput("flags_not"),
                                                    triton.InferRequestedOutput("ids2")])
    assert [o.name for o in result.get_response().outputs] == ["flags_not", "ids2"]


def test_typed_contents_in_typed_contents_out(stub):
    request = service_pb2.ModelInferRequest(model_name="toy", model_version="1", id="typed")
    x = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    x.contents.fp32_contents.extend(range(8))
    reply = stub.ModelInfer(request, timeout=30)
    assert not reply.raw_output_contents and reply.id == "typed"
    assert list(reply.outputs[0].shape) == [2, 4] and reply.outputs[0].datatype == "FP32"
    assert list(reply.outputs[0].contents.fp32_contents) == [2.0 * v for v in range(8)]
    # BYTES typed, on the TF1 export's classify signature run as a predict
    request = service_pb2.ModelInferRequest(model_name="tf1")
    request.parameters["signature_name"].string_param = "classify_x_to_y"
    e = request.inputs.add(name="inputs", datatype="BYTES", shape=[2])
    e.contents.bytes_contents.extend([half_plus_example(0.0), half_plus_example(10.0)])
    reply = stub.ModelInfer(request, timeout=30)
    assert list(reply.outputs[0].contents.fp32_contents) == [2.0, 7.0]


def test_async_infer_callback_and_aio(client, server):
    x = np.full((2, 4), 3, np.float32)
    i = triton.InferInput("x", [2, 4], "FP32")
    i.set_data_from_numpy(x)
    done = threading.Event()
    got: list = []

    def callback(result, error):
        got.append((result, error))
        done.set()

    client.async_infer("toy", [i], callback)
    assert done.wait(60)
    result, error = got[0]
    assert error is None
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)

    async def run():
        async with triton_aio.InferenceServerClient(f"127.0.0.1:{server.grpc_port}") as aio:
            assert await aio.is_server_ready()
            results = await asyncio.gather(*(aio.infer("toy", [i]) for _ in range(4)))
            return [r.as_numpy("y") for r in results]

    for y in asyncio.run(run()):
        np.testing.assert_array_equal(y, x * 2)


def _request(**fields) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=fields.pop("model", "toy"), model_version=fields.pop("v", ""))
    x = request.inputs.add(name=fields.pop("name", "x"), datatype=fields.pop("datatype", "FP32"),
                           shape=fields.pop("shape", [1, 4]))
    raw = fields.pop("raw", None)
    if raw is not None:
        request.raw_input_contents.extend(raw)
    else:
        getattr(x.contents, fields.pop("field", "fp32_contents")).extend(fields.pop("values", [1, 2, 3, 4]))
    for key, value in fields.pop("params", {}).items():
        request.parameters[key].int64_param = value
    assert not fields
    return request


ERRORS = [
    ("wrong datatype", dict(datatype="INT32", field="int_contents"), grpc.StatusCode.INVALID_ARGUMENT, "INT32"),
    ("contents in the wrong field", dict(field="int64_contents"), grpc.StatusCode.INVALID_ARGUMENT,
     "int64_contents"),
    ("shape vs data", dict(shape=[2, 4]), grpc.StatusCode.INVALID_ARGUMENT, "8 elements"),
    ("negative dim", dict(shape=[-5, 4]), grpc.StatusCode.INVALID_ARGUMENT, "dimension"),
    ("huge shape", dict(shape=[2**40, 2**20], raw=[b"1234"]), grpc.StatusCode.INVALID_ARGUMENT, "bytes"),
    ("raw size", dict(raw=[b"\0" * 15]), grpc.StatusCode.INVALID_ARGUMENT, "15 bytes"),
    ("raw count", dict(raw=[b"\0" * 16, b"\0" * 16]), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
    ("FP16 typed", dict(datatype="FP16"), grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents"),
    ("unknown parameter", dict(params={"priority": 3}), grpc.StatusCode.INVALID_ARGUMENT, "priority"),
    ("unknown model", dict(model="nope"), grpc.StatusCode.NOT_FOUND, "nope"),
    ("unknown model, bad request", dict(model="nope", raw=[b"1", b"2"]), grpc.StatusCode.NOT_FOUND, "nope"),
    ("unknown version", dict(v="12"), grpc.StatusCode.NOT_FOUND, "12"),
    ("bad version", dict(v="v1"), grpc.StatusCode.INVALID_ARGUMENT, "v1"),
    ("no elements, a huge dimension", dict(shape=[2**62, 0], raw=[b""]), grpc.StatusCode.INVALID_ARGUMENT,
     "too large"),
    ("superscript version", dict(v="\u00b2"), grpc.StatusCode.INVALID_ARGUMENT, "not a model version"),
    ("Arabic-Indic version", dict(v="\u0661"), grpc.StatusCode.INVALID_ARGUMENT, "not a model version"),
    ("raw too short", dict(model="tf1", name="x", datatype="FP32", raw=[b"\0" * 3], shape=[1, 1]),
     grpc.StatusCode.INVALID_ARGUMENT, "3 bytes"),
]


@pytest.mark.parametrize("what,fields,code,words", ERRORS, ids=[e[0] for e in ERRORS])
def test_error_matrix(stub, what, fields, code, words):
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(_request(**fields), timeout=30)
    assert info.value.code() == code and words in info.value.details(), (what, info.value.details())


def test_bytes_lengths_that_overrun(stub):
    request = service_pb2.ModelInferRequest(model_name="tf1")
    request.parameters["signature_name"].string_param = "classify_x_to_y"
    request.inputs.add(name="inputs", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(b"\xff\xff\xff\x7fab")
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "claims" in info.value.details()


def test_keeps_serving_after_errors(client, stub):
    for _, fields, _, _ in ERRORS:
        with pytest.raises(grpc.RpcError):
            stub.ModelInfer(_request(**fields), timeout=30)
    i = triton.InferInput("x", [1, 4], "FP32")
    i.set_data_from_numpy(np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(client.infer("toy", [i]).as_numpy("y"), np.full((1, 4), 2.0))


def test_repository_rpcs(client):
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {"name": "types", "version": "1", "state": "READY"} in index
    client.unload_model("types")
    assert not client.is_model_ready("types")
    with pytest.raises(InferenceServerException, match="NOT_FOUND"):
        client.load_model("never-configured")
    client.load_model("types")
    assert client.is_model_ready("types")


def test_binary_data_parameters_as_kserve_sends_them(stub):
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    request = service_pb2.ModelInferRequest(model_name="toy")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).parameters["binary_data_size"].int64_param = 16
    request.raw_input_contents.append(x.tobytes())
    request.outputs.add(name="y").parameters["binary_data"].bool_param = False  # typed, though the inputs were raw
    reply = stub.ModelInfer(request, timeout=30)
    assert not reply.raw_output_contents and list(reply.outputs[0].contents.fp32_contents) == [0, 2, 4, 6]
    request.inputs[0].parameters["binary_data_size"].int64_param = 12
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "binary_data_size is 12" in info.value.details()
    typed = _request()
    typed.outputs.add(name="y").parameters["binary_data"].bool_param = True
    reply = stub.ModelInfer(typed, timeout=30)
    assert np.frombuffer(reply.raw_output_contents[0], np.float32).tolist() == [2, 4, 6, 8]


def test_repository_is_one_across_wires(client, server):
    """A model unloaded over REST loads again over gRPC (one repository state per server)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=60)
    conn.request("POST", "/v2/repository/models/toy/unload", body=b"{}")
    assert conn.getresponse().status == 200
    conn.close()
    assert not client.is_model_ready("toy")
    client.load_model("toy")
    assert client.is_model_ready("toy")


@pytest.mark.parametrize("datatype,field,values", [
    ("FP32", "fp32_contents", np.arange(2_000_000, dtype=np.float32)),
    ("BYTES", "bytes_contents", [b"ab"] * 1_000_000),
])
def test_typed_contents_are_decoded_without_a_python_list_of_every_value(datatype, field, values):
    """A typed request that holds far more values than its shape says is refused before its values become Python
    objects (~30 bytes each against 4 on the wire), and a valid one decodes with at most one copy of them."""
    import tracemalloc

    from tfsctl.errors import InvalidArgument
    from tfsctl.serving import v2_grpc

    request = service_pb2.ModelInferRequest(model_name="toy")
    getattr(request.inputs.add(name="x", datatype=datatype, shape=[1, 4]).contents, field).extend(values)
    size = request.ByteSize()
    tracemalloc.start()
    try:
        with pytest.raises(InvalidArgument, match="holds 4 elements"):
            parsed, _ = v2_grpc.parse_infer(request)
            parsed.inputs[0].decode(64 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * size, (peak, size)  # at most one copy of the values (it was about ten)
    if datatype == "FP32":
        del request.inputs[0].shape[:]
        request.inputs[0].shape.append(len(values))
        tracemalloc.start()
        try:
            parsed, _ = v2_grpc.parse_infer(request)
            decoded = parsed.inputs[0].decode(64 << 20)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        np.testing.assert_array_equal(decoded, values)
        assert decoded.dtype == np.float32 and peak < 2 * size, (peak, size)


@pytest.mark.parametrize("kind,value", [("string_param", "16"), ("bool_param", True), ("double_param", 16.0),
                                        ("int64_param", -16)])
def test_binary_data_size_of_the_wrong_kind(stub, kind, value):
    """binary_data_size must be an integer parameter; "16" or true is named as such, not compared with 16."""
    request = _request(raw=[np.arange(4, dtype=np.float32).tobytes()])
    setattr(request.inputs[0].parameters["binary_data_size"], kind, value)
    with pytest.raises(grpc.RpcError) as info:
        stub.ModelInfer(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert "binary_data_size must be a non-negative integer" in info.value.details(), info.value.details()
    request.inputs[0].parameters["binary_data_size"].uint64_param = 16  # the unsigned kind is as good
    assert stub.ModelInfer(request, timeout=30).model_version == "1"


def test_status_client_skips_versions_that_are_not_ascii_numbers():
    """``tfsctl status --protocol v2`` on a server whose metadata lists versions it cannot ask about ('v2', '²'):
    those are skipped; '²' passed str.isdigit() and crashed int() with a ValueError."""
    from concurrent import futures

    from tfsctl.client import v2 as v2_client

    class Odd(service_pb2_grpc.GRPCInferenceServiceServicer):
        def ModelMetadata(self, request, context):  # noqa: N802
            return service_pb2.ModelMetadataResponse(name=request.name, versions=["\u00b2", "v2", "3"])

        def ModelReady(self, request, context):  # noqa: N802
            return service_pb2.ModelReadyResponse(ready=request.version == "3")

    server = grpc.server(futures.ThreadPoolExecutor(2))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Odd(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        rows = v2_client.model_status(f"127.0.0.1:{port}", "m", timeout=30)
    finally:
        server.stop(0)
    assert [(r.version, r.state) for r in rows] == [(3, "READY")]
