"""Open Inference Protocol (KServe v2) calls over gRPC, for ``tfsctl predict/status/bench --protocol v2``.

Works against any v2 server (tfsctl, Triton, KServe): ModelMetadata, ModelReady and ModelInfer with
``raw_input_contents`` (the encoding every v2 server reads), outputs read from ``raw_output_contents`` or the
typed ``contents``. Messages come from :mod:`tfsctl.core.v2_protos`, tensors are encoded by
:mod:`tfsctl.core.v2_tensors` (the server's own codec). v2 metadata describes the model's default signature
only and v2 has no version labels, so ``--signature`` and ``--label`` are v1 options.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np

from tfsctl.client import apis  # first: TensorFlow's protos without the TensorFlow runtime
from tfsctl.client.rpc import Endpoint, VersionStatus, check_timeout, endpoint, rpc_error
from tfsctl.core import v2_tensors
from tfsctl.core.v2_protos import service_pb2, service_pb2_grpc
from tfsctl.errors import ClientError, ServingError

PROTOCOLS = ("v1", "v2")
INFER_METHOD = f"/{service_pb2.DESCRIPTOR.services_by_name['GRPCInferenceService'].full_name}/ModelInfer"
HEADER_LENGTH = "Inference-Header-Content-Length"


def check_protocol(protocol: str, *, signature: str = "", label: str | None = None) -> None:
    """``--protocol`` is v1 or v2; v1-only options with v2 are refused by name."""
    if protocol not in PROTOCOLS:
        raise ClientError(f"--protocol must be v1 or v2, got {protocol!r}")
    if protocol == "v2" and label is not None:
        raise ClientError("--label is a v1 option: the v2 protocol has no version labels (give --version)")
    if protocol == "v2" and signature:
        raise ClientError("--signature is a v1 option: v2 metadata describes the model's default signature")


def _version(version: int | None) -> str:
    return "" if version is None else str(int(version))


def model_metadata(channel: grpc.Channel, ep: Endpoint, model: str, version: int | None = None,
                   timeout: float = 10.0) -> Any:
    """ModelMetadata: name, versions, platform, inputs and outputs (v2 datatypes, -1 for unknown dims)."""
    check_timeout(timeout)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        return stub.ModelMetadata(service_pb2.ModelMetadataRequest(name=model, version=_version(version)),
                                  timeout=timeout)
    except grpc.RpcError as e:
        raise rpc_error(e, ep, f"v2 ModelMetadata for model '{model}'", timeout) from None


def signature_def(metadata: Any) -> Any:
    """The v2 metadata as a SignatureDef, so the v1 planning rules (:mod:`tfsctl.client.signature`) apply as they
    are. A datatype the client does not know is an error naming it."""
    sig = apis.get_model_metadata_pb2.SignatureDefMap().signature_def["v2"]
    for side, tensors in ((sig.inputs, metadata.inputs), (sig.outputs, metadata.outputs)):
        for t in tensors:
            dtype = v2_tensors.TF_BY_V2.get(t.datatype)
            if dtype is None:
                raise ClientError(f"model '{metadata.name}': tensor '{t.name}' has datatype '{t.datatype}', which "
                                  "is not a v2 datatype")
            info = side[t.name]
            info.dtype = dtype
            for d in t.shape:
                info.tensor_shape.dim.add(size=int(d))
    return sig


def build_infer(model: str, inputs: dict[str, np.ndarray], *, version: int | None = None,
                outputs: Sequence[str] = (), request_id: str = "") -> Any:
    """A ModelInferRequest with every input in ``raw_input_contents``."""
    request = service_pb2.ModelInferRequest(model_name=model, model_version=_version(version), id=request_id)
    for name, arr in inputs.items():
        arr = np.asarray(arr)
        request.inputs.add(name=name, datatype=v2_tensors.datatype_of(arr.dtype, name), shape=list(arr.shape))
        request.raw_input_contents.append(v2_tensors.to_raw(arr))
    for name in outputs:
        request.outputs.add(name=name)
    return request


def decode_infer(response: Any) -> dict[str, np.ndarray]:
    """The outputs of a ModelInferResponse (raw or typed contents) as numpy arrays."""
    out = {}
    raw = response.raw_output_contents
    if raw and len(raw) != len(response.outputs):
        raise ClientError(f"v2 response has {len(raw)} raw_output_contents for {len(response.outputs)} outputs")
    try:
        for i, t in enumerate(response.outputs):
            if raw:
                out[t.name] = v2_tensors.from_raw(t.datatype, list(t.shape), raw[i], t.name)
            else:
                field = v2_tensors.CONTENTS_FIELD.get(t.datatype)
                if field is None:
                    raise ClientError(f"v2 output '{t.name}' ({t.datatype}) came without raw_output_contents")
                out[t.name] = v2_tensors.from_values(t.datatype, list(t.shape), list(getattr(t.contents, field)),
                                                     t.name)
    except ServingError as e:
        raise ClientError(f"cannot decode the v2 response: {e.message}") from None
    return out


def infer(channel: grpc.Channel, ep: Endpoint, request: Any, timeout: float = 10.0) -> tuple[Any, float]:
    """Send one ModelInfer; ``(response, round_trip_seconds)``."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    start = time.perf_counter()
    try:
        response = stub.ModelInfer(request, timeout=timeout)
    except grpc.RpcError as e:
        raise rpc_error(e, ep, f"v2 ModelInfer for model '{request.model_name}'", timeout) from None
    return response, time.perf_counter() - start


def check_infer_reply(reply: bytes) -> None:
    """A serialized ModelInferResponse that has outputs (bench checks its first answer)."""
    if not service_pb2.ModelInferResponse.FromString(reply).outputs:
        raise RuntimeError("ModelInferResponse without outputs")


def rest_infer(model: str, inputs: dict[str, np.ndarray], *, version: int | None = None
               ) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of a REST v2 infer with every input and output as binary tensor data."""
    tensors = []
    raws = []
    for name, arr in inputs.items():
        arr = np.asarray(arr)
        raws.append(v2_tensors.to_raw(arr))
        tensors.append({"name": name, "shape": list(arr.shape), "datatype": v2_tensors.datatype_of(arr.dtype, name),
                        "parameters": {"binary_data_size": len(raws[-1])}})
    head = json.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}},
                      separators=(",", ":")).encode()
    path = f"/v2/models/{quote(model, safe='')}" + (f"/versions/{int(version)}" if version is not None else "")
    return path + "/infer", head + b"".join(raws), {HEADER_LENGTH: str(len(head)),
                                                     "Content-Type": "application/octet-stream"}


def check_rest_reply(data: bytes, headers: Any) -> None:
    """A REST v2 infer answer whose JSON (before any binary data) has outputs."""
    n = headers.get(HEADER_LENGTH)
    if not json.loads(data[: int(n)] if n is not None else data).get("outputs"):
        raise RuntimeError("v2 infer answer without outputs")


def metadata_from_json(doc: Any) -> Any:
    """REST v2 model metadata (JSON) as the gRPC ModelMetadataResponse, so both wires plan alike."""
    from google.protobuf import json_format

    try:
        return json_format.ParseDict(doc, service_pb2.ModelMetadataResponse(), ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError) as e:
        raise ClientError(f"not a v2 model metadata answer: {e}") from None


def version_number(text: str) -> int | None:
    """A v2 version string as a number, or None when it is not one (``isdigit`` alone takes "²", which ``int``
    refuses)."""
    return int(text) if text.isascii() and text.isdigit() else None


def latest_version(metadata: Any) -> int | None:
    """The highest numeric version a ModelMetadata answer lists: the one a v2 server (tfsctl, Triton, KServe)
    describes when no version is asked. None when it lists no number."""
    numbers = [n for n in map(version_number, metadata.versions) if n is not None]
    return max(numbers, default=None)


def model_status(target: str | Endpoint, model: str, version: int | None = None, timeout: float = 10.0
                 ) -> list[VersionStatus]:
    """The status rows v2 can give: the versions ModelMetadata lists (or the one asked), each READY or
    UNAVAILABLE by ModelReady."""
    check_timeout(timeout)
    ep = endpoint(target)
    with ep.channel() as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        if version is None:
            listed = (version_number(v) for v in model_metadata(channel, ep, model, None, timeout).versions)
            versions = [v for v in listed if v is not None]
        else:
            versions = [int(version)]
        rows = []
        for v in versions:
            try:
                ready = stub.ModelReady(service_pb2.ModelReadyRequest(name=model, version=str(v)),
                                        timeout=timeout).ready
            except grpc.RpcError as e:
                raise rpc_error(e, ep, f"v2 ModelReady for model '{model}' version {v}", timeout) from None
            rows.append(VersionStatus(v, "READY" if ready else "UNAVAILABLE", "OK", ""))
    return sorted(rows, key=lambda r: r.version)


__all__ = ["INFER_METHOD", "PROTOCOLS", "build_infer", "check_infer_reply", "check_protocol", "check_rest_reply",
           "decode_infer", "infer", "metadata_from_json", "model_metadata", "model_status", "rest_infer",
           "signature_def"]
