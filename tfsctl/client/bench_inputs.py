"""What bench sends: random tensors from ``--input-shape`` specs or shaped after the model's metadata, or an image
prepared exactly as ``tfsctl predict`` prepares it (same signature rules, :mod:`tfsctl.client.signature`).
"""

from __future__ import annotations

import http.client
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tfsctl.client.rpc import Endpoint, endpoint, get_signature_defs
from tfsctl.client.signature import TensorSpec, plan_image_request, resolve_signature, tensor_specs
from tfsctl.errors import ClientError

_DTYPES = {
    "float32": np.float32, "float": np.float32, "fp32": np.float32, "float64": np.float64, "double": np.float64,
    "float16": np.float16, "half": np.float16, "int8": np.int8, "int16": np.int16, "int32": np.int32,
    "int": np.int32, "int64": np.int64, "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32,
    "uint64": np.uint64, "bool": np.bool_, "string": object, "bytes": object,
}


def parse_input_shape(spec: str) -> tuple[str, tuple[int, ...], np.dtype]:
    """``NAME:D1xD2x...:DTYPE`` (e.g. ``x:1x4:float32``) -> (name, shape, dtype)."""
    m = re.fullmatch(r"([^:]+):(\d+(?:[xX,]\d+)*)(?::(\w+))?", spec.strip())
    if not m:
        raise ClientError(f"bad --input-shape {spec!r}: expected NAME:D1xD2...:DTYPE, e.g. x:1x4:float32")
    name, dims, dtype_name = m.group(1), m.group(2), (m.group(3) or "float32").lower()
    if dtype_name not in _DTYPES:
        raise ClientError(f"bad --input-shape {spec!r}: unknown dtype {dtype_name!r} (one of {', '.join(_DTYPES)})")
    shape = tuple(int(d) for d in re.split(r"[xX,]", dims))
    if any(d <= 0 for d in shape):
        raise ClientError(f"bad --input-shape {spec!r}: every dimension must be positive")
    if math.prod(shape) > 64 * 1024 * 1024:
        raise ClientError(f"bad --input-shape {spec!r}: {math.prod(shape):,} elements is too large for a request")
    return name, shape, np.dtype(_DTYPES[dtype_name])


def synthetic_inputs(specs: Sequence[str], seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors for ``--input-shape`` specs: floats in [0, 1), ints in [0, 10), uint8 in [0, 256)."""
    rng = np.random.default_rng(seed)
    inputs: dict[str, np.ndarray] = {}
    for spec in specs:
        name, shape, dtype = parse_input_shape(spec)
        if name in inputs:
            raise ClientError(f"input '{name}' given twice in --input-shape")
        if dtype.kind == "f":
            arr = rng.random(shape).astype(dtype)
        elif dtype == np.uint8:
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
        elif dtype.kind in "iu":
            arr = rng.integers(0, 10, shape).astype(dtype)
        elif dtype.kind == "b":
            arr = rng.random(shape) < 0.5
        else:
            arr = np.array([f"s{i}".encode() for i in range(math.prod(shape))], dtype=object).reshape(shape)
        inputs[name] = arr
    return inputs


def image_inputs(
    path: str | Path,
    sig_defs: dict[str, Any] | None = None,
    *,
    signature: str = "",
    model: str = "",
    input_key: str | None = None,
    scale: str = "0-255",
    max_side: int = 0,
) -> dict[str, np.ndarray]:
    """One image as the request tensors ``tfsctl predict`` would send for the model's signature.

    Without ``sig_defs`` (no metadata), the tfsctl sample's inputs: ``images`` uint8 [1,H,W,3], ``height`` and
    ``width`` int32 [1].
    """
    from tfsctl.client.predict import load_image, prepare_image

    img = load_image(path)
    if sig_defs is None:
        h, w = img.shape[:2]
        return {"images": img[None], "height": np.array([h], np.int32), "width": np.array([w], np.int32)}
    sig = resolve_signature(sig_defs, signature, model)
    plan = plan_image_request(sig_defs[sig], sig, model=model, input_key=input_key, output_keys=(), scale=scale,
                              any_outputs=True)
    return plan.inputs(prepare_image(img, plan, max_side))


def _inputs_from_specs(specs: dict[str, TensorSpec], batch: int, seed: int = 0) -> dict:
    """Synthetic inputs from a signature's input specs: unknown dims become ``batch`` (first) or 1."""
    wanted = []
    for name, spec in sorted(specs.items()):
        np_name = "string" if spec.dtype_name == "DT_STRING" else (
            str(spec.np_dtype) if spec.np_dtype is not None else spec.dtype_name)
        if np_name not in _DTYPES:
            raise ClientError(f"input '{name}' has dtype {spec.dtype_name}, which bench cannot synthesise; "
                              "use --input-shape")
        dims = spec.shape
        shape = [batch] if dims is None else [(batch if i == 0 else 1) if d < 0 else d for i, d in enumerate(dims)]
        if not shape:  # a scalar input: TF Serving accepts a 0-d tensor, but our spec grammar needs a dim
            raise ClientError(f"input '{name}' is a scalar; give it with --input-shape")
        wanted.append(f"{name}:{'x'.join(str(d) for d in shape)}:{np_name}")
    return synthetic_inputs(wanted, seed)


def signature_defs(
    target: str | Endpoint,
    model: str,
    *,
    protocol: str = "grpc",
    version: int | None = None,
    label: str | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """``{name: SignatureDef}`` from GetModelMetadata (gRPC) or ``GET .../metadata`` (REST, the same proto as JSON);
    over v2 (``v2-grpc``/``v2-rest``) the default signature from the v2 model metadata."""
    if protocol.startswith("v2-"):
        return _v2_signature_defs(target, model, protocol, version, timeout)
    if protocol == "grpc":
        return get_signature_defs(target, model, version=version, label=label, timeout=timeout)[1]
    if protocol != "rest":
        raise ClientError(f"--protocol must be 'grpc' or 'rest', got {protocol!r}")
    from google.protobuf import json_format

    from tfsctl.client.apis import get_model_metadata_pb2
    from tfsctl.client.senders import rest_path

    target = str(target)
    path = rest_path(model, version, label).removesuffix(":predict") + "/metadata"
    data = _get(target, path, timeout)
    try:
        doc = json.loads(data)["metadata"]["signature_def"]
        doc.pop("@type", None)
        sig_map = json_format.ParseDict(doc, get_model_metadata_pb2.SignatureDefMap(), ignore_unknown_fields=True)
    except (ValueError, KeyError, TypeError, AttributeError, json_format.ParseError):
        raise ClientError(f"GET {path} on {target}: not a model metadata answer") from None
    return dict(sig_map.signature_def)


def _get(target: str, path: str, timeout: float) -> bytes:
    """The body of ``GET path`` on a REST server at ``host:port``; ClientError unless it answers 200."""
    host, _, port = target.rpartition(":")
    conn = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        data = resp.read()
    except OSError as e:
        raise ClientError(f"cannot reach server at {target}: {e}") from None
    finally:
        conn.close()
    if resp.status != 200:
        raise ClientError(f"GET {path} on {target} answered HTTP {resp.status}: "
                          f"{data[:300].decode('utf-8', 'replace')}")
    return data


def _v2_signature_defs(target: str | Endpoint, model: str, protocol: str, version: int | None, timeout: float
                      ) -> dict[str, Any]:
    from tfsctl.client import v2
    from tfsctl.model_layout import DEFAULT_SIGNATURE

    if protocol == "v2-grpc":
        ep = endpoint(target)
        with ep.channel() as channel:
            meta = v2.model_metadata(channel, ep, model, version, timeout)
        return {DEFAULT_SIGNATURE: v2.signature_def(meta)}
    target = str(target)
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version is not None else "")
    data = _get(target, path, timeout)
    try:
        doc = json.loads(data)
    except ValueError:
        raise ClientError(f"GET {path} on {target}: not JSON") from None
    return {DEFAULT_SIGNATURE: v2.signature_def(v2.metadata_from_json(doc))}


def inputs_from_metadata(
    target: str | Endpoint,
    model: str,
    *,
    protocol: str = "grpc",
    signature: str = "",
    version: int | None = None,
    label: str | None = None,
    batch: int = 1,
    timeout: float = 10.0,
) -> dict[str, np.ndarray]:
    """Random inputs shaped after the signature's metadata (as perf_analyzer does when given no data).

    Unknown dimensions become ``batch`` for the first dimension and 1 elsewhere. The signature follows the rule
    every client command uses (:func:`tfsctl.client.signature.resolve_signature`).
    """
    sigs = signature_defs(target, model, protocol=protocol, version=version, label=label, timeout=timeout)
    return inputs_from_signature(sigs, signature, model, batch=batch)


def inputs_from_signature(sigs: dict[str, Any], signature: str = "", model: str = "", *, batch: int = 1) -> dict:
    """Random inputs for the signature chosen by the shared rule, from ``{name: SignatureDef}``."""
    if batch < 1:
        raise ClientError(f"--batch-size must be >= 1, got {batch}")
    sig = resolve_signature(sigs, signature, model)
    specs = tensor_specs(sigs[sig].inputs)
    if not specs:
        raise ClientError(f"signature '{sig}' of model '{model}' has no inputs")
    return _inputs_from_specs(specs, batch)
