"""The Open Inference Protocol's REST API (KServe v2) on the REST port, beside TF Serving's ``/v1``.

Routes (model names and versions are percent-decoded)::

    GET  /v2                                   server metadata: name, version, extensions
    GET  /v2/health/live | /v2/health/ready    200, or 400 when not ready; {"live"|"ready": bool} as KServe
                                               answers (its client reads it; Triton's reads the status only)
    GET  /v2/models/NAME[/versions/V]          model metadata (``?signature_name=S`` describes another signature)
    GET  /v2/models/NAME[/versions/V]/ready    200 ready, 400 not ready ({"name", "ready"}), 404 unknown model
    POST /v2/models/NAME[/versions/V]/infer    inference (JSON, or JSON + binary tensor data)
    POST /v2/repository/index                  the model repository extension: every model's versions and states
    POST /v2/repository/models/NAME/load | /unload

Inference requests are JSON (``data`` flat or nested) or use the binary tensor data extension: the
``Inference-Header-Content-Length`` header says how many leading body bytes are the JSON; each input with the
``binary_data_size`` parameter takes that many of the bytes after it, in order, and the sizes must add up to the
rest of the body exactly. Outputs asked with ``binary_data`` (or all, with the request parameter
``binary_data_output``) come back the same way, ``application/octet-stream`` with the header set. Request
parameters this server cannot act on are refused by name. Errors are ``{"error": message}`` with the typed error's
HTTP status (400 bad request, 404 unknown model or version, 503 shutting down, 504 past ``--rest_api_timeout_in_ms``).

Bodies pass the same bounds as ``/v1`` (size, in-flight bytes, time without progress); decoding is bounded before
allocation (``core/v2_tensors.py``); the model call runs in the REST pool through
:class:`~tfsctl.serving.v2_core.V2Core`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import numpy as np
import orjson
from aiohttp import web

from tfsctl.core import v2_tensors
from tfsctl.errors import InvalidArgument, ServingError
from tfsctl.serving import json_codec, json_dense
from tfsctl.serving.logs import REQUEST_ID_HEADER
from tfsctl.serving.rest_common import CORS_HEADERS, ORIGIN, HttpError, begin_record
from tfsctl.serving.v2_core import SIGNATURE_PARAMETER, InferRequest, InferResponse, InferTensor, V2Core

if TYPE_CHECKING:
    from tfsctl.serving.request_core import RequestCore
    from tfsctl.serving.rest_http import HttpServer

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"
BINARY_OUTPUT = "binary_data_output"
BINARY = "binary_data"
# Parameters accepted where: request level, per input, per requested output. ``content_type`` is the codec hint
# KServe / MLServer clients attach; the datatype alone decides the decoding here, so it changes nothing.
REQUEST_PARAMETERS = frozenset({SIGNATURE_PARAMETER, BINARY_OUTPUT, "content_type"})
INPUT_PARAMETERS = frozenset({BINARY_SIZE, "content_type"})
OUTPUT_PARAMETERS = frozenset({BINARY})
_MODEL = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?")
_REPOSITORY = re.compile(r"/v2/repository/(?:(index)|models/([^/]+)/(load|unload))")
_V2 = re.compile(r"/v2(?:/|$)")
_JSON = "application/json"
_OCTETS = "application/octet-stream"


def is_v2_path(path: str) -> bool:
    """Whether a request path belongs to the v2 API (``/v2`` and everything under ``/v2/``)."""
    return _V2.match(path) is not None


class _Reply:
    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else ({"Content-Type": _JSON} if body else {})


def _error(status: int, message: str) -> _Reply:
    return _Reply(status, orjson.dumps({"error": message}))


def _json(doc: Any) -> _Reply:
    return _Reply(200, orjson.dumps(doc))


def _as_dict(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _parameters(node: dict, accepted: frozenset[str], where: str) -> dict:
    params = _as_dict(node.get("parameters"), f"{where}: 'parameters'")
    unknown = set(params) - accepted
    if unknown:
        raise InvalidArgument(f"{where}: unsupported parameter(s) {', '.join(sorted(unknown)[:5])} (accepted "
                              f"here: {', '.join(sorted(accepted))})")
    return params


def _string(node: dict, key: str, where: str, required: bool = True) -> str:
    value = node.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"{where}: '{key}' must be a string" + ("" if value is not None else ", and is missing"))
    return value


def _dense_inputs(doc: Any, count: int) -> bool:
    """Turn each input's ``data`` that json_dense read as a DenseArray into numpy (its datatype's); False when one
    cannot be (then the caller parses the body the general way) or a DenseArray stands anywhere else."""
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list):
        return False
    converted = 0
    for node in inputs:
        data = node.get("data") if isinstance(node, dict) else None
        if isinstance(data, json_dense.DenseArray):
            datatype = node.get("datatype")
            if not isinstance(datatype, str) or datatype in (v2_tensors.BYTES, "BOOL", v2_tensors.BF16):
                return False
            node["data"] = json_dense.to_array(data, v2_tensors.numpy_dtype(datatype))
            converted += 1
    return converted == count


def _load(head: bytes | memoryview) -> Any:
    """The JSON document; large dense numeric ``data`` (an image as JSON numbers) is read straight from the bytes
    by :mod:`json_dense` when it can decide it, else everything is parsed the general way (same answers, same
    errors)."""
    raw = bytes(head)
    found = json_dense.extract(raw)
    if found is not None:
        text, arrays = found
        try:
            doc = json_dense.replace(orjson.loads(text), arrays)
            if doc is not None and _dense_inputs(doc, len(arrays)):
                return doc
        except (orjson.JSONDecodeError, json_dense.NotDense, ServingError):
            pass
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if b"NaN" in raw or b"Infinity" in raw:  # tokens Triton reads (and tritonclient's json.dumps writes)
            try:
                return json.loads(raw)
            except (ValueError, RecursionError):
                pass
        raise InvalidArgument(f"malformed JSON in the inference request: {e}") from None


def parse_infer(body: bytes, header_length: str | None, model: str, version: str
                ) -> tuple[InferRequest, dict[str, bool], bool]:
    """An infer body -> the request (inputs not decoded), each requested output's binary choice, and the default
    binary choice for outputs that do not say."""
    binary = memoryview(b"")
    head: bytes | memoryview = body
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise InvalidArgument(f"{HEADER_LENGTH} header '{header_length[:32]}' is not a number") from None
        if n < 0 or n > len(body):
            raise InvalidArgument(f"{HEADER_LENGTH} is {n}, but the body has {len(body)} bytes")
        view = memoryview(body)
        head, binary = view[:n], view[n:]
    doc = _as_dict(_load(head), "the inference request")
    params = _parameters(doc, REQUEST_PARAMETERS, "the inference request")
    default_binary = params.get(BINARY_OUTPUT, False)
    if not isinstance(default_binary, bool):
        raise InvalidArgument(f"parameter '{BINARY_OUTPUT}' must be true or false")
    request_id = _string(doc, "id", "the inference request", required=False)
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise InvalidArgument("the inference request needs 'inputs', a list of tensors")
    tensors: list[InferTensor] = []
    at = 0
    for i, node in enumerate(inputs):
        node = _as_dict(node, f"input {i}")
        name = _string(node, "name", f"input {i}")
        where = f"input '{name}'"
        tensor = InferTensor(name, _string(node, "datatype", where), node.get("shape"))
        if tensor.shape is None:
            raise InvalidArgument(f"{where}: 'shape' is missing")
        size = _parameters(node, INPUT_PARAMETERS, where).get(BINARY_SIZE)
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidArgument(f"{where}: '{BINARY_SIZE}' must be a non-negative integer")
            if "data" in node:
                raise InvalidArgument(f"{where}: give 'data' or '{BINARY_SIZE}', not both")
            if at + size > len(binary):
                raise InvalidArgument(f"{where}: '{BINARY_SIZE}' is {size}, but only {len(binary) - at} bytes of "
                                      "binary data remain in the body")
            tensor.raw = binary[at:at + size]
            at += size
        elif "data" not in node:
            raise InvalidArgument(f"{where}: 'data' is missing (or give '{BINARY_SIZE}' with binary data)")
        else:
            tensor.data = node["data"]
        tensors.append(tensor)
    if at != len(binary):
        raise InvalidArgument(f"{len(binary) - at} bytes of binary data follow the JSON that no input's "
                              f"'{BINARY_SIZE}' accounts for")
    choices: dict[str, bool] = {}
    outputs = doc.get("outputs")
    names: list[str] | None = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise InvalidArgument("'outputs' must be a list of {\"name\": ...} objects")
        names = []
        for i, node in enumerate(outputs):
            node = _as_dict(node, f"output {i}")
            name = _string(node, "name", f"output {i}")
            choice = _parameters(node, OUTPUT_PARAMETERS, f"output '{name}'").get(BINARY, default_binary)
            if not isinstance(choice, bool):
                raise InvalidArgument(f"output '{name}': '{BINARY}' must be true or false")
            names.append(name)
            choices[name] = choice
        names = names or None  # "outputs": [] names none: every output, as with no "outputs" (and as Triton)
    request = InferRequest(model, version, request_id, params, tensors, names)
    return request, choices, default_binary


def encode_infer(response: InferResponse, choices: dict[str, bool], default_binary: bool) -> _Reply:
    """The response JSON, followed by the binary outputs when any was asked for binary."""
    outputs = []
    blobs: list[bytes] = []
    for name, datatype, array in response.outputs:
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if choices.get(name, default_binary):
            raw = v2_tensors.to_raw(array)
            entry["parameters"] = {BINARY_SIZE: len(raw)}
            blobs.append(raw)
        elif array.dtype.kind in "OSU":
            entry["data"] = v2_tensors.to_values(array)
        else:
            flat = np.ascontiguousarray(array.reshape(-1))  # orjson writes numpy arrays natively
            if flat.dtype.name == "bfloat16":
                flat = flat.astype(np.float32)
            if flat.dtype.kind == "f" and not np.isfinite(flat).all():  # NaN, Infinity, -Infinity as Triton writes
                entry["data"] = json_codec.tensor_json(name, flat)  # them (orjson alone writes null)
            else:
                entry["data"] = flat
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model, "model_version": response.version}
    if response.id:
        doc["id"] = response.id
    doc["outputs"] = outputs
    head = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return _Reply(200, head)
    return _Reply(200, head + b"".join(blobs), {"Content-Type": _OCTETS, HEADER_LENGTH: str(len(head))})


class V2Rest:
    """The v2 routes beside TF Serving's on one REST port: they share its plumbing (``http``: body bounds, pool,
    timeout) and request core; ``enable_cors`` as ``/v1``'s."""

    def __init__(self, http: HttpServer, core: RequestCore, *, enable_cors: bool = False) -> None:
        self.http = http
        self.core = core
        self.enable_cors = enable_cors
        self._v2: V2Core | None = None

        self._cors, self._origin = dict(CORS_HEADERS), ORIGIN

    @property
    def v2(self) -> V2Core:
        """The v2 mapping over the request core, made on the first v2 request."""
        if self._v2 is None:
            self._v2 = V2Core.of(self.core)
        return self._v2

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path, method = request.rel_url.raw_path, request.method
        if method == "OPTIONS":  # CORS preflight, answered as under /v1 (http_server.cc)
            ok = self._origin.search(request.headers.get("Origin", "")) is not None
            return self._response(_Reply(200 if ok else 400))
        if method == "GET":
            if path in ("/v2", "/v2/"):
                return self._response(_json(V2Core.server_metadata()))
            if path == "/v2/health/live":
                return self._response(_Reply(200, b'{"live":true}'))
            if path == "/v2/health/ready":
                ready = await self.http.in_pool(self.v2.server_ready)
                return self._response(_Reply(200, b'{"ready":true}') if ready else _Reply(400, b'{"ready":false}'))
        m = _MODEL.fullmatch(path)
        if m is not None:
            name, version, verb = unquote(m.group(1)), unquote(m.group(2) or ""), m.group(3)
            if method == "GET" and verb is None:
                signature = request.query.get(SIGNATURE_PARAMETER, "")
                return await self._call(request, "rest_v2_metadata", name,
                                        lambda _: _json(self.v2.model_metadata(name, version, signature)))
            if method == "GET" and verb == "ready":
                return await self._call(request, "rest_v2_ready", name, lambda _: self._ready(name, version))
            if method == "POST" and verb == "infer":
                header = request.headers.get(HEADER_LENGTH)
                return await self._call(request, "rest_v2_infer", name,
                                        lambda body: self._infer(body, header, name, version), timed=True)
        r = _REPOSITORY.fullmatch(path)
        if r is not None and method == "POST":
            index, name, verb = r.group(1), unquote(r.group(2) or ""), r.group(3)
            if index:
                return await self._call(request, "rest_v2_repository_index", "", self._index)
            return await self._call(request, f"rest_v2_repository_{verb}", name,
                                    lambda body: self._repository(verb, name, body))
        if m is not None or r is not None or path in ("/v2", "/v2/", "/v2/health/live", "/v2/health/ready"):
            return self._response(_error(400, f"Malformed request: {method} {path} (this route takes "
                                              f"{'POST' if r is not None or path.endswith('/infer') else 'GET'})"))
        return self._response(_error(404, f"Not found: {method} {path}"))

    # --- handlers (in the pool) ---

    def _infer(self, body: bytes, header: str | None, name: str, version: str) -> _Reply:
        self.v2.check_model(name)
        request, choices, default_binary = parse_infer(body, header, name, version)
        del body
        return encode_infer(self.v2.infer(request), choices, default_binary)

    def _ready(self, name: str, version: str) -> _Reply:
        ready = self.v2.model_ready(name, version)
        return _Reply(200 if ready else 400, orjson.dumps({"name": name, "ready": ready}))

    def _index(self, body: bytes) -> _Reply:
        doc = _as_dict(orjson.loads(body) if body.strip() else {}, "the index request") if body else {}
        ready = doc.get("ready", False)
        if not isinstance(ready, bool):
            raise InvalidArgument("'ready' must be true or false")
        unknown = set(doc) - {"ready"}
        if unknown:
            raise InvalidArgument(f"the index request: unsupported field(s) {', '.join(sorted(unknown)[:5])}")
        return _json(self.v2.repository_index(ready))

    def _repository(self, verb: str, name: str, body: bytes) -> _Reply:
        doc = _as_dict(orjson.loads(body), f"the {verb} request") if body.strip() else {}
        params = _as_dict(doc.get("parameters"), "'parameters'")
        if verb == "load":
            self.v2.load(name, params)
        else:
            self.v2.unload(name, params)
        return _Reply(200)

    # --- the call: body bounds, pool, timeout, errors, metrics ---

    async def _call(self, request: web.Request, api: str, name: str, work: Callable[[bytes], _Reply], *,
                    timed: bool = False) -> web.Response:
        record = begin_record(self.core, request, api, name)
        try:
            reply = await self._run(request, work, timed, name)
            code = "OK"
        except ServingError as e:
            reply, code = _error(e.http_status, e.message), e.grpc_code.name
        except orjson.JSONDecodeError as e:
            reply, code = _error(400, f"malformed JSON: {e}"), "INVALID_ARGUMENT"
        except ConnectionError:  # the client went away mid-body (a truncated request): nobody reads a reply
            reply, code = _error(499, "the client closed the connection before sending the whole body"), "CANCELLED"
        except HttpError as e:  # a front-end error with its own status (413, 408, 504, 503)
            reply, code = _error(e.status, e.message), e.code_name
        except Exception as e:  # noqa: BLE001 - a bug: never a traceback
            log.exception("REST %s %s failed", request.method, request.path)
            reply, code = _error(500, f"internal error: {type(e).__name__}: {e}"), "INTERNAL"
        record.bytes_out = len(reply.body)
        self.core.finish(record, code)
        response = self._response(reply)
        if record.request_id:
            response.headers[REQUEST_ID_HEADER] = record.request_id
        if reply.status in (408, 413):
            response.force_close()
        return response

    async def _run(self, request: web.Request, work: Callable[[bytes], _Reply], timed: bool, name: str) -> _Reply:
        reserved = await self.http.reserve_body(request) if request.method == "POST" else 0
        return await self.http.run_with_body(request, work, reserved, timed=timed,
                                             what=f"the v2 infer request on model '{name}'")

    def _response(self, reply: _Reply) -> web.Response:
        headers = dict(reply.headers)
        if self.enable_cors:
            headers.update(self._cors)
        return web.Response(status=reply.status, body=reply.body, headers=headers)


__all__ = ["HEADER_LENGTH", "V2Rest", "encode_infer", "is_v2_path", "parse_infer"]
