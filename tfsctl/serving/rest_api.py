"""TF Serving's REST API (``/v1/models/...``) on aiohttp, over the same :class:`PredictionCore` as gRPC.

Only encoding lives here: JSON bodies become numpy arrays (typed by the signature's input dtypes) or tf.Examples,
and results become JSON the way TF Serving writes them. Model calls run in a thread pool so the event loop, which
runs in a thread of its own, never blocks.

Routes::

    POST /v1/models/NAME[/versions/N|/labels/L]:predict|:classify|:regress
    GET  /v1/models/NAME[/versions/N|/labels/L]            model status (GetModelStatusResponse as JSON)
    GET  /v1/models/NAME[/versions/N|/labels/L]/metadata   model metadata (GetModelMetadataResponse as JSON)
    GET  /v1/health/ready   200 when every configured model has an AVAILABLE version, else 503
    GET  /v1/health/live    200 while the process serves HTTP
    GET  /monitoring/prometheus/metrics   Prometheus text (path configurable, None disables)

Errors are ``{"error": message}`` with the HTTP code of the typed error (tfsctl/errors.py).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf import json_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    regression_pb2,
)

from tfsctl.errors import Internal, InvalidArgument, NotFound, ServingError

log = logging.getLogger(__name__)

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"
# A 1080p RGB image as JSON numbers is ~40-60 MB of text; 128 MiB leaves room and still bounds memory.
DEFAULT_MAX_BODY_BYTES = 128 * 1024 * 1024
DEFAULT_WORKERS = 64

_MODEL_POST = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(-?\d+)|/labels/([^/:]+))?:(predict|classify|regress)$")
_MODEL_GET = re.compile(r"^/v1/models/([^/:]+)(?:/versions/(-?\d+)|/labels/([^/:]+))?(/metadata)?$")
_JSON = "application/json"
UNKNOWN_MODEL_LABEL = "<unknown>"  # metric label for requests naming a model that is not configured (as gRPC)
_MAX_RANK = 64  # numpy's (and so TF's eager) limit on dimensions


class _HttpError(Exception):
    """A front-end-only failure with its own HTTP status (413, 404, 405)."""

    def __init__(self, status: int, message: str, code_name: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code_name = code_name


# --- JSON -> numpy ------------------------------------------------------------------------------------------------


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and value.keys() == {"b64"}


def _b64decode(value: dict, where: str) -> bytes:
    data = value["b64"]
    if not isinstance(data, str):
        raise InvalidArgument(f"{where}: the value of a {{\"b64\": ...}} object must be a string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidArgument(f"{where}: invalid base64 in {{\"b64\": ...}} value: {e}") from None


def _ragged(where: str) -> InvalidArgument:
    return InvalidArgument(
        f"{where}: values do not form a tensor: nested lists at the same depth must all have the same length "
        "and hold values of one kind"
    )


def _string_tensor(value: Any, where: str) -> np.ndarray:
    """Nested lists of strings / {"b64": ...} objects -> object array of bytes."""
    shape: list[int] = []
    probe = value
    while isinstance(probe, list):
        if len(shape) == _MAX_RANK:
            raise InvalidArgument(f"{where}: nested more than {_MAX_RANK} levels deep (the most a tensor can have)")
        shape.append(len(probe))
        if not probe:
            break
        probe = probe[0]
    flat: list[bytes] = []

    def walk(v: Any, depth: int) -> None:
        if depth == len(shape):
            if isinstance(v, str):
                flat.append(v.encode("utf-8"))
            elif _is_b64(v):
                flat.append(_b64decode(v, where))
            elif isinstance(v, list):
                raise _ragged(where)
            else:
                raise InvalidArgument(
                    f"{where}: expects DT_STRING values (strings or {{\"b64\": ...}} objects), got {_kind(v)}"
                )
            return
        if not isinstance(v, list) or len(v) != shape[depth]:
            raise _ragged(where)
        for item in v:
            walk(item, depth + 1)

    walk(value, 0)
    arr = np.empty(len(flat), dtype=object)
    arr[:] = flat
    return arr.reshape(shape)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return f"the number {v!r}"
    if isinstance(v, str):
        return "a string"
    if _is_b64(v):
        return "a {\"b64\": ...} object"
    if isinstance(v, dict):
        return "an object"
    if v is None:
        return "null"
    return type(v).__name__


def _first_bad(value: Any, ok: Callable[[Any], bool]) -> tuple[bool, Any]:
    """(True, leaf) for the first leaf of a nested list for which ``ok`` is false, else (False, None)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(reversed(v))
        elif not ok(v):
            return True, v
    return False, None


def json_to_tensor(value: Any, dtype: np.dtype, dtype_label: str, where: str) -> np.ndarray:
    """Convert a JSON value (scalar or nested lists) to an array of ``dtype``; InvalidArgument when it won't fit."""
    if dtype.kind == "O":
        return _string_tensor(value, where)
    if dtype.kind == "c":
        raise InvalidArgument(f"{where}: {dtype_label} inputs are not supported over REST")
    try:
        src = np.asarray(value)
    except (ValueError, OverflowError) as e:
        if "maximum number of dimension" in str(e):
            too_deep = f"{where}: nested more than {_MAX_RANK} levels deep (the most a tensor can have)"
            raise InvalidArgument(too_deep) from None
        raise _ragged(where) from None
    if src.dtype.kind == "O":
        found, bad = _first_bad(value, lambda v: isinstance(v, int | float) and not isinstance(v, bool))
        if not found:  # only numbers: integers too large for int64
            raise InvalidArgument(f"{where}: a value is out of range for {dtype_label}")
        if _is_b64(bad):
            raise InvalidArgument(f"{where}: {{\"b64\": ...}} values are only accepted for DT_STRING inputs, "
                                  f"this input is {dtype_label}")
        raise InvalidArgument(f"{where}: expects {dtype_label} values, got {_kind(bad)}")
    kind = src.dtype.kind
    if kind == "U":
        raise InvalidArgument(f"{where}: expects {dtype_label} values, got strings")
    if dtype.kind == "b":
        if kind != "b":
            raise InvalidArgument(f"{where}: expects {dtype_label} values (true/false), got numbers")
        return src
    if kind == "b":
        raise InvalidArgument(f"{where}: expects {dtype_label} values, got booleans")
    if dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected and reported below
            out = src.astype(dtype)
        if kind == "f" and src.size:
            overflow = np.isfinite(src) & ~np.isfinite(out)
            if overflow.any():
                raise InvalidArgument(
                    f"{where}: value {src[overflow].flat[0]!r} is out of range for {dtype_label}"
                )
        return out
    # integer target
    if kind == "f":
        frac = src != np.floor(src)
        if frac.any() or not np.isfinite(src).all():
            bad = src[frac | ~np.isfinite(src)].flat[0]
            raise InvalidArgument(f"{where}: value {bad!r} is not an integer ({dtype_label} expected)")
    info = np.iinfo(dtype)
    if src.size:
        low, high = src.min(), src.max()
        if low < info.min or high > info.max:
            bad = low if low < info.min else high
            bad = int(bad) if kind != "f" else bad
            raise InvalidArgument(
                f"{where}: value {bad!r} is out of range for {dtype_label} [{info.min}, {info.max}]"
            )
    return src.astype(dtype)


def decode_predict_body(body: dict, spec: Any, where: str) -> tuple[dict[str, np.ndarray], bool]:
    """Row ("instances") or columnar ("inputs") body -> named arrays; returns (inputs, row_format)."""
    has_rows, has_cols = "instances" in body, "inputs" in body
    if has_rows and has_cols:
        raise InvalidArgument(f"{where}: the body must hold 'instances' (row format) or 'inputs' (columnar), not both")
    if not has_rows and not has_cols:
        raise InvalidArgument(f"{where}: missing 'instances' or 'inputs' key in the JSON body")
    expected = spec.inputs
    named: dict[str, Any]
    if has_rows:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument(f"{where}: 'instances' must be a list, got {_kind(instances)}")
        if not instances:
            raise InvalidArgument(f"{where}: 'instances' is an empty list")
        objects = [isinstance(i, dict) and not _is_b64(i) for i in instances]
        if any(objects) and not all(objects):
            raise InvalidArgument(f"{where}: 'instances' mixes objects (named inputs) and bare values")
        if all(objects):
            keys = set(instances[0])
            for idx, inst in enumerate(instances):
                if set(inst) != keys:
                    raise InvalidArgument(
                        f"{where}: instance {idx} names inputs {sorted(inst)} but instance 0 names {sorted(keys)}; "
                        "every instance must give the same named inputs"
                    )
            named = {k: [inst[k] for inst in instances] for k in instances[0]}
        else:
            named = {_single_input(expected, where, "instances"): instances}
    else:
        inputs = body["inputs"]
        if isinstance(inputs, dict) and not _is_b64(inputs):
            named = inputs
        else:
            named = {_single_input(expected, where, "inputs"): inputs}
    unknown = [k for k in named if k not in expected]
    if unknown:
        raise InvalidArgument(
            f"{where}: unexpected input '{unknown[0]}'; the signature expects "
            f"{', '.join(repr(k) for k in sorted(expected))}"
        )
    arrays = {
        k: json_to_tensor(v, expected[k].dtype, _dtype_label(expected[k]), f"{where}, input '{k}'")
        for k, v in named.items()
    }
    return arrays, has_rows


def _dtype_label(ts: Any) -> str:
    from tfsctl.serving.tensors import dtype_name

    return dtype_name(ts.dtype_enum)


def _single_input(expected: dict, where: str, key: str) -> str:
    if len(expected) != 1:
        raise InvalidArgument(
            f"{where}: '{key}' holds bare values, which needs a signature with exactly one input; this one has "
            f"{', '.join(repr(k) for k in sorted(expected)) or 'none'}: send named inputs as objects"
        )
    return next(iter(expected))


# --- numpy -> JSON ------------------------------------------------------------------------------------------------


def _bytes_to_json(arr: np.ndarray, binary: bool) -> Any:
    def enc(v: Any) -> Any:
        if isinstance(v, list):
            return [enc(x) for x in v]
        if isinstance(v, str):
            return v
        if not binary:
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(bytes(v)).decode("ascii")}

    return enc(arr.tolist())


def tensor_to_json(name: str, arr: np.ndarray) -> Any:
    """An output as JSON: numbers/bools as is; strings as text, or {"b64": ...} for ``*_bytes`` / non-UTF-8."""
    arr = np.asarray(arr)
    if arr.dtype.kind in "OS":
        return _bytes_to_json(arr, name.endswith("_bytes"))
    if arr.dtype.kind == "c":
        raise Internal(f"output '{name}': complex values cannot be written as JSON")
    return arr.tolist()


def encode_predict_outputs(outputs: dict[str, np.ndarray], row_format: bool, where: str) -> dict[str, Any]:
    """TF Serving's response: {"predictions": rows} for row requests, {"outputs": ...} for columnar ones."""
    if not row_format:
        values = {k: tensor_to_json(k, v) for k, v in outputs.items()}
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}
    batch = None
    for k, v in outputs.items():
        if np.ndim(v) == 0:
            raise InvalidArgument(f"{where}: output '{k}' is a scalar and cannot be split into rows; "
                                  "use the columnar format ('inputs')")
        if batch is None:
            batch = v.shape[0]
        elif v.shape[0] != batch:
            raise InvalidArgument(f"{where}: outputs have different batch sizes ({batch} vs {v.shape[0]} for "
                                  f"'{k}'); use the columnar format ('inputs')")
    values = {k: tensor_to_json(k, v) for k, v in outputs.items()}
    if len(values) == 1:
        return {"predictions": next(iter(values.values()))}
    return {"predictions": [{k: values[k][i] for k in values} for i in range(batch or 0)]}


# --- classify / regress bodies ------------------------------------------------------------------------------------


def _fill_features(features: Any, obj: Any, where: str, skip: set[str] | None = None) -> None:
    if not isinstance(obj, dict):
        raise InvalidArgument(f"{where} must be an object of feature name -> value or list, got {_kind(obj)}")
    for fname, value in obj.items():
        if skip and fname in skip:
            raise InvalidArgument(f"{where}: feature '{fname}' appears in both 'context' and the example")
        vals = value if isinstance(value, list) else [value]
        kinds = set()
        for v in vals:
            if isinstance(v, bool) or v is None or (isinstance(v, dict) and not _is_b64(v)) or isinstance(v, list):
                raise InvalidArgument(f"{where}, feature '{fname}': unsupported value {_kind(v)} "
                                      "(use numbers, strings or {\"b64\": ...})")
            kinds.add("int" if isinstance(v, int) else "float" if isinstance(v, float) else "bytes")
        feature = features.feature[fname]
        if kinds == {"int"}:
            if any(not -(2**63) <= v < 2**63 for v in vals):
                raise InvalidArgument(f"{where}, feature '{fname}': integer out of int64 range")
            feature.int64_list.value.extend(vals)
        elif kinds and kinds <= {"int", "float"}:
            feature.float_list.value.extend(float(v) for v in vals)
        elif kinds == {"bytes"}:
            feature.bytes_list.value.extend(
                _b64decode(v, f"{where}, feature '{fname}'") if isinstance(v, dict) else v.encode("utf-8")
                for v in vals
            )
        elif kinds:
            raise InvalidArgument(f"{where}, feature '{fname}': mixes numbers and strings in one list")


def decode_examples_body(body: dict, request: Any, where: str) -> None:
    """Fill a Classification/RegressionRequest's signature_name and input from TF Serving's JSON body."""
    examples = body.get("examples")
    if not isinstance(examples, list):
        raise InvalidArgument(f"{where}: the JSON body needs an 'examples' list")
    if not examples:
        raise InvalidArgument(f"{where}: 'examples' is an empty list")
    context = body.get("context")
    if context is not None:
        target = request.input.example_list_with_context
        _fill_features(target.context.features, context, f"{where}: 'context'")
        skip = set(context)
    else:
        target = request.input.example_list
        skip = None
    for i, obj in enumerate(examples):
        ex = target.examples.add()
        _fill_features(ex.features, obj, f"{where}: example {i}", skip)


# --- server -------------------------------------------------------------------------------------------------------


def _proto_json(message: Any) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _model_spec(name: str, version: str | None, label: str | None, signature: str = "") -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        number = int(version)
        if not -(2**63) <= number < 2**63:  # ModelSpec.version is int64: no such version can exist
            raise NotFound(f"Servable not found for request: Specific({name}, {version}) (version out of range)")
        spec.version.value = number
    elif label is not None:
        spec.version_label = label
    return spec


class RestServer:
    """TF Serving's REST API in a thread of its own; ``start()`` returns once the port is bound."""

    def __init__(
        self,
        core: Any,
        manager: Any,
        metrics: Any = None,
        host: str = "0.0.0.0",
        port: int = 8501,
        *,
        metrics_path: str | None = DEFAULT_METRICS_PATH,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_workers: int = DEFAULT_WORKERS,
        shutdown_timeout: float = 10.0,
        timeout_ms: int = 30000,
        num_threads: int = 0,
        enable_cors: bool = False,
        reuse_port: bool = False,
    ) -> None:
        self.timeout_ms = timeout_ms
        self.reuse_port = reuse_port  # SO_REUSEPORT: several worker processes share the port (serve --workers)
        self.num_threads = num_threads
        self.enable_cors = enable_cors
        self.core = core
        self.manager = manager
        self.metrics = metrics
        self.host = host
        self.port = port
        self.metrics_path = metrics_path
        self.max_body_bytes = max_body_bytes
        self.shutdown_timeout = shutdown_timeout
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="tfsctl-rest")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # --- lifecycle ---

    def start(self, timeout: float = 30.0) -> None:
        """Bind and serve in a background thread; raises if the port cannot be bound."""
        self._thread = threading.Thread(target=self._serve, name="tfsctl-rest-loop", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"REST server did not start within {timeout}s")
        if self._start_error is not None:
            raise OSError(f"cannot serve REST on {self.host}:{self.port}: {self._start_error}") from self._start_error

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._start_error = e
            if self._runner is not None:
                loop.run_until_complete(self._runner.cleanup())
            loop.close()
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=self.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=self.shutdown_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_port=self.reuse_port or None)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded by ``shutdown_timeout``), then stop the loop."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            self._executor.shutdown(wait=False)
            return
        if self._runner is not None:
            fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop)
            try:
                fut.result(self.shutdown_timeout + 5)
            except Exception:  # noqa: BLE001 - stop anyway
                log.exception("REST server cleanup failed")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._executor.shutdown(wait=True)

    # --- dispatch ---

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        if path == "/v1/health/live":
            return self._json(200, {"status": "live"}) if method == "GET" else self._not_allowed(method, path)
        if path == "/v1/health/ready":
            if method != "GET":
                return self._not_allowed(method, path)
            ready = await self._in_pool(self.manager.is_ready)
            if ready:
                return self._json(200, {"status": "ready"})
            return self._json(503, {"error": "not ready: not every configured model has an AVAILABLE version"})
        if self.metrics_path and path == self.metrics_path and self.metrics is not None:
            if method != "GET":
                return self._not_allowed(method, path)
            body = await self._in_pool(self.metrics.render)
            return web.Response(status=200, body=body, headers={"Content-Type": self.metrics.content_type})
        m = _MODEL_POST.match(path)
        if m:
            if method != "POST":
                return self._not_allowed(method, path)
            name, version, label, verb = m.groups()
            return await self._model_call(request, f"rest_{verb}", name, version, label, verb)
        m = _MODEL_GET.match(path)
        if m:
            if method != "GET":
                return self._not_allowed(method, path)
            name, version, label, meta = m.groups()
            api = "rest_metadata" if meta else "rest_status"
            return await self._model_call(request, api, name, version, label, "metadata" if meta else "status")
        return self._json(404, {"error": f"Malformed request: {method} {path} is not a TF Serving REST route"})

    async def _model_call(self, request: web.Request, api: str, name: str, version: str | None,
                          label: str | None, verb: str) -> web.Response:
        start = time.perf_counter()
        try:
            body = b""
            if request.method == "POST":
                if request.content_length is not None and request.content_length > self.max_body_bytes:
                    raise _HttpError(413, self._too_large(request.content_length), "RESOURCE_EXHAUSTED")
                try:
                    body = await request.read()
                except web.HTTPRequestEntityTooLarge:
                    raise _HttpError(413, self._too_large(None), "RESOURCE_EXHAUSTED") from None
                except RequestPayloadError as e:  # e.g. a Content-Encoding the body does not match
                    detail = " ".join(str(e).split())
                    raise InvalidArgument(f"cannot read the request body: {detail}") from None
            handler = getattr(self, f"_do_{verb}")
            encoded = await self._in_pool(self._encoded, handler, name, version, label, body)
            code = "OK"
        except ServingError as e:
            status, payload, code = e.http_status, {"error": e.message}, e.grpc_code.name
        except _HttpError as e:
            status, payload, code = e.status, {"error": e.message}, e.code_name
        except Exception as e:  # noqa: BLE001 - never leak a traceback to the client
            log.exception("REST %s %s failed", request.method, request.path)
            status, payload, code = 500, {"error": f"internal error: {type(e).__name__}: {e}"}, "INTERNAL"
        else:
            status, payload = 200, None
        if self.metrics is not None:
            label = name
            if code != "OK" and name not in self._known_models():
                label = UNKNOWN_MODEL_LABEL  # clients must not grow the metric label set without bound
            self.metrics.observe_request(label, api, code, time.perf_counter() - start)
        if payload is None:
            return web.Response(status=200, body=encoded, content_type=_JSON)
        return self._json(status, payload)

    def _known_models(self) -> set[str]:
        try:
            return set(self.manager.model_names())
        except Exception:  # noqa: BLE001 - metrics must not fail a request
            return set()

    @staticmethod
    def _encoded(handler: Callable[..., dict], *args: Any) -> bytes:
        """Run a handler and serialize its reply in the pool: big outputs never block the event loop."""
        return json.dumps(handler(*args)).encode("utf-8")

    def _too_large(self, size: int | None) -> str:
        got = f" ({size} bytes)" if size is not None else ""
        return f"request body{got} is larger than the limit of {self.max_body_bytes} bytes"

    async def _in_pool(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    @staticmethod
    def _json(status: int, payload: Any) -> web.Response:
        return web.Response(status=status, body=json.dumps(payload).encode("utf-8"), content_type=_JSON)

    def _not_allowed(self, method: str, path: str) -> web.Response:
        return self._json(405, {"error": f"Method {method} is not allowed for {path}"})

    # --- handlers (run in the thread pool) ---

    @staticmethod
    def _parse_body(body: bytes) -> dict:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidArgument(f"request body is not valid UTF-8: {e}") from None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidArgument(f"malformed JSON body: {e.msg} at line {e.lineno} column {e.colno}") from None
        except RecursionError:
            raise InvalidArgument("malformed JSON body: nested too deeply") from None
        if not isinstance(obj, dict):
            raise InvalidArgument(f"the JSON body must be an object, got {_kind(obj)}")
        return obj

    @staticmethod
    def _signature_name(body: dict) -> str:
        sig = body.get("signature_name", "")
        if not isinstance(sig, str):
            raise InvalidArgument(f"'signature_name' must be a string, got {_kind(sig)}")
        return sig

    def _do_predict(self, name: str, version: str | None, label: str | None, raw: bytes) -> dict:
        body = self._parse_body(raw)
        spec = _model_spec(name, version, label, self._signature_name(body))
        with self.manager.handle(name, int(version) if version is not None else None, label) as servable:
            sig = servable.signature(spec.signature_name)
            where = f"model '{name}' version {servable.version}, signature '{sig.name}'"
        # Run on the version whose signature decoded the body, even if a newer one became latest meanwhile.
        spec.version.value = servable.version
        inputs, row = decode_predict_body(body, sig, where)
        resolved, outputs = self.core.predict(spec, inputs, ())
        return encode_predict_outputs(outputs, row, f"model '{name}', signature '{resolved.signature_name}'")

    def _do_classify(self, name: str, version: str | None, label: str | None, raw: bytes) -> dict:
        body = self._parse_body(raw)
        request = classification_pb2.ClassificationRequest(
            model_spec=_model_spec(name, version, label, self._signature_name(body)))
        decode_examples_body(body, request, f"model '{name}' classify")
        result = self.core.classify(request).result
        return {"results": [[[c.label, c.score] for c in cl.classes] for cl in result.classifications]}

    def _do_regress(self, name: str, version: str | None, label: str | None, raw: bytes) -> dict:
        body = self._parse_body(raw)
        request = regression_pb2.RegressionRequest(
            model_spec=_model_spec(name, version, label, self._signature_name(body)))
        decode_examples_body(body, request, f"model '{name}' regress")
        result = self.core.regress(request).result
        return {"results": [r.value for r in result.regressions]}

    def _do_status(self, name: str, version: str | None, label: str | None, raw: bytes) -> dict:
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=_model_spec(name, version, label))
        return _proto_json(self.core.get_model_status(request))

    def _do_metadata(self, name: str, version: str | None, label: str | None, raw: bytes) -> dict:
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=_model_spec(name, version, label), metadata_field=["signature_def"])
        return _proto_json(self.core.get_model_metadata(request))

