"""Bench senders: one call sends one request and raises on failure, over gRPC or REST.

gRPC sends a pre-serialised PredictRequest and checks that the first answer decodes as a PredictResponse; REST POSTs
a pre-encoded JSON body ("inputs" columnar or "instances" rows) on a keep-alive connection per worker and checks the
first answer's JSON.
"""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Callable, Sequence
from typing import Protocol

import grpc
import numpy as np

from tfsctl.client.rpc import Endpoint, endpoint, fill_model_spec
from tfsctl.errors import ClientError

PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"

class Sender(Protocol):
    """One worker's way of sending a request: ``sender()`` returns on success and raises on failure.

    ``close()`` is optional for :func:`run_level`: a plain function works as a sender too.
    """

    def __call__(self) -> None: ...

    def close(self) -> None: ...


SenderFactory = Callable[[], Sender]


def _check_predict(reply: bytes) -> None:
    from tfsctl.client.apis import predict_pb2

    if not predict_pb2.PredictResponse.FromString(reply).outputs:
        raise RuntimeError("PredictResponse without outputs")


class _GrpcSender:
    def __init__(self, channel: grpc.Channel, payload: bytes, timeout: float, owns_channel: bool,
                 method: str = PREDICT_METHOD, check: Callable[[bytes], None] = _check_predict) -> None:
        # No (de)serialisers: the request is serialised once and the reply is not decoded on the hot path.
        self._call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        self._channel, self._payload, self._timeout, self._owns = channel, payload, timeout, owns_channel
        self._check = check
        self._checked = False

    def __call__(self) -> None:
        reply = self._call(self._payload, timeout=self._timeout)
        if not self._checked:
            self._check(reply)  # the first answer is decoded once
            self._checked = True

    def close(self) -> None:
        if self._owns:
            self._channel.close()


def grpc_sender_factory(
    target: str | Endpoint,
    model: str,
    inputs: dict[str, np.ndarray],
    *,
    signature: str = "",
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
    channels: str = "shared",
    output_filter: Sequence[str] = (),
    v2: bool = False,
) -> tuple[SenderFactory, Callable[[], None]]:
    """Factory of gRPC Predict senders plus a cleanup; ``channels`` is ``shared`` (one channel) or ``per-thread``.

    ``per-thread`` gives each worker its own channel *and* TCP connection (local subchannel pool).
    ``output_filter`` asks for only those outputs (e.g. skip DeepLab's large ``probabilities``). ``v2`` sends the
    Open Inference Protocol's ModelInfer (raw tensors) instead (no signature or label there).
    """
    from tfsctl.client.apis import from_numpy, predict_pb2

    if channels not in ("shared", "per-thread"):
        raise ClientError(f"--grpc-channels must be 'shared' or 'per-thread', got {channels!r}")
    method, check = PREDICT_METHOD, _check_predict
    if v2:
        from tfsctl.client import v2 as v2_client

        payload = v2_client.build_infer(model, inputs, version=version, outputs=output_filter).SerializeToString()
        method, check = v2_client.INFER_METHOD, v2_client.check_infer_reply
    else:
        request = predict_pb2.PredictRequest()
        fill_model_spec(request.model_spec, model, signature, version, label)
        for name, arr in inputs.items():
            request.inputs[name].CopyFrom(from_numpy(arr))
        request.output_filter.extend(output_filter)
        payload = request.SerializeToString()
    ep = endpoint(target)
    shared = ep.channel() if channels == "shared" else None

    def make() -> Sender:
        if shared is not None:
            return _GrpcSender(shared, payload, timeout, owns_channel=False, method=method, check=check)
        own = ep.channel([("grpc.use_local_subchannel_pool", 1)])
        return _GrpcSender(own, payload, timeout, owns_channel=True, method=method, check=check)

    def cleanup() -> None:
        if shared is not None:
            shared.close()

    return make, cleanup


def _json_value(arr: np.ndarray):
    """JSON-ready nested lists; bytes become TF Serving's ``{"b64": ...}``."""
    if arr.dtype.kind == "O":
        flat = [{"b64": base64.b64encode(v).decode("ascii")} for v in arr.reshape(-1).tolist()]
        return np.array(flat, dtype=object).reshape(arr.shape).tolist()
    if arr.dtype == np.float16:
        arr = arr.astype(np.float32)
    return arr.tolist()


def rest_body(inputs: dict[str, np.ndarray], signature: str = "", fmt: str = "inputs") -> bytes:
    """TF Serving REST predict body: columnar ``{"inputs": {...}}`` or row ``{"instances": [...]}``."""
    body: dict = {}
    if signature:
        body["signature_name"] = signature
    if fmt == "inputs":
        body["inputs"] = {name: _json_value(arr) for name, arr in inputs.items()}
    elif fmt == "instances":
        sizes = {arr.shape[0] if arr.ndim else None for arr in inputs.values()}
        if len(sizes) != 1 or None in sizes:
            raise ClientError("--rest-format instances needs every input to share its first (batch) dimension")
        (n,) = sizes
        cols = {name: _json_value(arr) for name, arr in inputs.items()}
        if len(cols) == 1:
            body["instances"] = next(iter(cols.values()))
        else:
            body["instances"] = [{name: col[i] for name, col in cols.items()} for i in range(n)]
    else:
        raise ClientError(f"--rest-format must be 'inputs' or 'instances', got {fmt!r}")
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def rest_path(model: str, version: int | None = None, label: str | None = None) -> str:
    """``/v1/models/NAME[/versions/N|/labels/L]:predict``."""
    path = f"/v1/models/{model}"
    if version is not None:
        path += f"/versions/{version}"
    elif label is not None:
        path += f"/labels/{label}"
    return path + ":predict"


class RestError(Exception):
    """A REST predict answered with a non-200 status."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
        self.status = status


def _check_rest(data: bytes, headers: http.client.HTTPMessage) -> None:
    answer = json.loads(data)
    if "outputs" not in answer and "predictions" not in answer:
        raise RuntimeError("REST answer has neither 'outputs' nor 'predictions'")


class _RestSender:
    def __init__(self, host: str, port: int, path: str, body: bytes, timeout: float, headers: dict | None = None,
                 check: Callable[[bytes, http.client.HTTPMessage], None] = _check_rest) -> None:
        self._host, self._port, self._path, self._body, self._timeout = host, port, path, body, timeout
        self._headers = {"Content-Type": "application/json", "Connection": "keep-alive", **(headers or {})}
        self._check = check
        self._conn: http.client.HTTPConnection | None = None
        self._checked = False

    def __call__(self) -> None:
        self.send(self._path, self._body)

    def send(self, path: str, body: bytes) -> None:
        """POST ``body`` to ``path`` on the kept-alive connection (a replay sends a different record each call)."""
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
        try:
            self._conn.request("POST", path, body=body, headers=self._headers)
            resp = self._conn.getresponse()
            data = resp.read()
        except BaseException:
            self.close()  # the connection state is unknown: reconnect on the next request
            raise
        if resp.status != 200:
            if resp.will_close:
                self.close()
            raise RestError(resp.status, data)
        if resp.will_close:
            self.close()
        if not self._checked:
            self._check(data, resp.headers)
            self._checked = True

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def rest_sender_factory(
    target: str,
    model: str,
    inputs: dict[str, np.ndarray],
    *,
    signature: str = "",
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
    fmt: str = "inputs",
    v2: bool = False,
) -> tuple[SenderFactory, Callable[[], None]]:
    """Factory of REST predict senders (one keep-alive HTTP/1.1 connection per worker) plus a no-op cleanup.

    ``v2``: the Open Inference Protocol's infer with the binary tensor data extension (raw bytes both ways)."""
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if v2:
        from tfsctl.client import v2 as v2_client

        path, body, headers = v2_client.rest_infer(model, inputs, version=version)
        return (lambda: _RestSender(host, int(port), path, body, timeout, headers, v2_client.check_rest_reply)), \
            (lambda: None)
    body = rest_body(inputs, signature, fmt)
    path = rest_path(model, version, label)
    return (lambda: _RestSender(host, int(port), path, body, timeout)), (lambda: None)


def error_kind(exc: BaseException) -> str:
    """Short name for a failure: the gRPC code, ``HTTP 429``, or the exception class."""
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return exc.code().name
    if isinstance(exc, RestError):
        return f"HTTP {exc.status}"
    return type(exc).__name__
