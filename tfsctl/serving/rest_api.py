"""TF Serving's REST API (``/v1/...``, as ``http_rest_api_handler.cc``): its routes and handlers, on the HTTP
plumbing of ``rest_http.py`` (connections, body bounds, the pool; TF Serving's ``net_http``).

JSON <-> numpy is ``json_codec``; every model call goes through
:class:`~tfsctl.serving.request_core.RequestCore` like gRPC's, holding one servable handle for the whole request.
The Open Inference Protocol's ``/v2`` routes (``v2_rest.py``) share the port.

Routes (paths are case-insensitive and percent-decoded, as TF Serving's RE2 ``(?i)`` patterns and curl unescape)::

    POST /v1/models/NAME[/versions/N|/labels/L]:predict|:classify|:regress
    GET  /v1/models/NAME[/versions/N|/labels/L]            GetModelStatusResponse as JSON
    GET  /v1/models/NAME[/versions/N|/labels/L]/metadata   GetModelMetadataResponse as JSON
    OPTIONS /v1/...        CORS preflight: 200 when the Origin header names http(s)://, else 400
    GET  /v1/health/ready  (tfsctl) 200 when every configured model has an AVAILABLE version, else 503
    GET  /v1/health/live   (tfsctl) 200 while the process serves HTTP
    GET  <metrics_path>                   Prometheus text, only when given a path (--monitoring_config_file)

Any other ``/v1/`` request is 400 "Malformed request: METHOD PATH"; paths outside ``/v1/`` are 404. Errors are
``{"error": message}`` with the HTTP code of the typed error (tfsctl/errors.py). A model call that takes longer
than ``timeout_ms`` is answered 504 (DEADLINE_EXCEEDED, as TF Serving's RunOptions timeout).
"""

from __future__ import annotations

import functools
import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from aiohttp import web
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    regression_pb2,
)

from tfsctl.errors import InvalidArgument, ServingError
from tfsctl.serving import json_codec
from tfsctl.serving.logs import REQUEST_ID_HEADER
from tfsctl.serving.request_record import REST
from tfsctl.serving.rest_common import CORS_HEADERS as _CORS_HEADERS
from tfsctl.serving.rest_common import ORIGIN as _ORIGIN
from tfsctl.serving.rest_common import HttpError as _HttpError
from tfsctl.serving.rest_common import begin_record
from tfsctl.serving.rest_http import HttpServer
from tfsctl.serving.v2_rest import V2Rest, is_v2_path

if TYPE_CHECKING:
    from tfsctl.serving.request_core import RequestCore

log = logging.getLogger(__name__)

# TF Serving's kPredictionApiGegex and kModelStatusApiRegex (http_rest_api_util.cc), matched in full.
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.I)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.I)
_V1 = re.compile(r"/v1/", re.I)  # kHTTPRestApiHandlerPathRegex "(?i)/v1/.*": everything under it is the handler's
_JSON = "application/json"
_HEALTH_LIVE, _HEALTH_READY = "/v1/health/live", "/v1/health/ready"
_INT64_MAX = 2**63 - 1


def model_spec(name: str, version: str | None, label: str | None, signature: str = "") -> model_pb2.ModelSpec:
    """The ModelSpec of a route (FillModelSpecWithNameVersionAndLabel): version as TF Serving's SimpleAtoi int64."""
    spec = model_pb2.ModelSpec(name=name, signature_name=signature)
    if version is not None:
        number = int(version)
        if number > _INT64_MAX:
            raise InvalidArgument(f"Failed to convert version: {version} to numeric.")
        spec.version.value = number
    elif label is not None:
        spec.version_label = label
    return spec


class RestServer:
    """TF Serving's REST API (and the v2 routes beside it) on an :class:`~tfsctl.serving.rest_http.HttpServer`
    (``.http``), which ``start()`` binds.

    ``enable_cors`` (``--rest_api_enable_cors_support``) adds TF Serving's CORS headers to every ``/v1`` reply;
    ``metrics_path`` serves the Prometheus page there (None, the default: no page, as TF Serving without a
    monitoring config that enables it). ``http`` are the plumbing's options (``timeout_ms``, ``num_threads``,
    ``max_body_bytes``, the connection bounds, ...: see :class:`~tfsctl.serving.rest_http.HttpServer`).
    """

    def __init__(self, core: RequestCore, metrics: Any = None, host: str = "0.0.0.0", port: int = 8501, *,
                 metrics_path: str | None = None, enable_cors: bool = False, **http: Any) -> None:
        self.core = core
        self.metrics = metrics
        self.metrics_path = metrics_path
        self.enable_cors = enable_cors
        self.http = HttpServer(self._dispatch, host, port, metrics=metrics, **http)
        self._v2 = V2Rest(self.http, core, enable_cors=enable_cors)

    @property
    def port(self) -> int:
        """The bound port (the OS's choice once started when given 0)."""
        return self.http.port

    def start(self, timeout: float = 30.0) -> None:
        """Bind and serve in a background thread; raises OSError if the port cannot be bound."""
        self.http.start(timeout)

    def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded by ``shutdown_timeout``), then stop the loop."""
        self.http.stop()

    # --- routes ---

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path, method = request.rel_url.raw_path, request.method
        if self.metrics_path and path == self.metrics_path and self.metrics is not None:
            body = await self.http.in_pool(self.metrics.render)
            return web.Response(status=200, body=body, headers={"Content-Type": self.metrics.content_type})
        if is_v2_path(path):  # the Open Inference Protocol beside /v1 (v2_rest.py)
            return await self._v2.dispatch(request)
        if not _V1.match(path):
            return self._reply(404, json_codec.encode_error(f"Not found: {method} {path}"), cors=False)
        if method == "OPTIONS":  # CORS preflight, answered whether or not CORS headers are on (http_server.cc)
            ok = _ORIGIN.search(request.headers.get("Origin", "")) is not None
            return self._reply(200 if ok else 400, b"", content_type=None)
        if method == "GET" and path in (_HEALTH_LIVE, _HEALTH_READY):
            return await self._health(path)
        malformed = InvalidArgument(f"Malformed request: {method} {path}")
        if method == "POST":
            m = _PREDICT_PATH.fullmatch(path)
            if m is not None:
                name, version, label, verb = m.groups()
                if verb in ("predict", "classify", "regress"):  # matched case-insensitively, compared exactly
                    return await self._model_call(request, verb, name, version, label)
        elif method == "GET":
            m = _STATUS_PATH.fullmatch(path)
            if m is not None:
                name, version, label, sub = m.groups()
                return await self._model_call(request, "metadata" if sub == "metadata" else "status",
                                              name or "", version, label)
        self.core.finish(self.core.begin(REST, "", ""), malformed.grpc_code.name)  # TF counts it (model_name "")
        return self._error_reply(malformed)

    async def _health(self, path: str) -> web.Response:
        if path == _HEALTH_LIVE:
            return self._reply(200, b'{"status":"live"}')
        if await self.http.in_pool(self.core.is_ready):
            return self._reply(200, b'{"status":"ready"}')
        return self._reply(503, json_codec.encode_error(
            "not ready: not every configured model has an AVAILABLE version"))

    async def _model_call(self, request: web.Request, verb: str, name: str, version: str | None,
                          label: str | None) -> web.Response:
        name = unquote(name)
        record = begin_record(self.core, request, verb, name)
        label = unquote(label) if label is not None else None
        try:
            model_spec(name, version, label)  # ParseModelInfo comes first: a version beyond int64 is 400 at once
            reserved = await self.http.reserve_body(request) if request.method == "POST" else 0
            encoded = await self._handle(request, verb, name, version, label, reserved)
            status, code = 200, "OK"
        except ServingError as e:
            status, encoded, code = e.http_status, json_codec.encode_error(e.message), e.grpc_code.name
        except _HttpError as e:
            status, encoded, code = e.status, json_codec.encode_error(e.message), e.code_name
        except Exception as e:  # noqa: BLE001 - never leak a traceback to the client
            log.exception("REST %s %s failed", request.method, request.path)
            status, code = 500, "INTERNAL"
            encoded = json_codec.encode_error(f"internal error: {type(e).__name__}: {e}")
        record.bytes_out = len(encoded)
        self.core.finish(record, code)
        response = self._reply(status, encoded)
        if record.request_id:
            response.headers[REQUEST_ID_HEADER] = record.request_id
        if status in (408, 413):
            response.force_close()
        return response

    async def _handle(self, request: web.Request, verb: str, name: str, version: str | None,
                      label: str | None, reserved: int = 0) -> bytes:
        """Read the body, run the handler in the pool (bounded by ``timeout_ms``), return the encoded reply."""
        return await self.http.run_with_body(request, functools.partial(getattr(self, f"_do_{verb}"), name, version,
                                                                        label),
                                             reserved, timed=verb in ("predict", "classify", "regress"),
                                             what=f"the {verb} request on model '{name}'")

    def _reply(self, status: int, body: bytes, *, content_type: str | None = _JSON, cors: bool = True
               ) -> web.Response:
        headers = dict(_CORS_HEADERS) if cors and self.enable_cors else {}
        if content_type is not None:
            headers["Content-Type"] = content_type
        return web.Response(status=status, body=body, headers=headers)

    def _error_reply(self, error: ServingError) -> web.Response:
        return self._reply(error.http_status, json_codec.encode_error(error.message))

    # --- handlers (run in the thread pool; each returns the encoded JSON reply) ---

    def _do_predict(self, name: str, version: str | None, label: str | None, raw: bytes) -> bytes:
        doc = json_codec.parse_predict_json(raw)
        sig = json_codec.signature_name(doc)
        with self.core.hold(model_spec(name, version, label, sig)) as held:
            inputs, row_format = json_codec.decode_predict(doc, held.signature.inputs, sig)  # type: ignore[arg-type]
            del doc  # a big body's lists (65k for a 256x256 image) go now, not after the model call
            _, outputs = held.predict(inputs)
        return json_codec.encode_predict(outputs, row_format)

    def _do_classify(self, name: str, version: str | None, label: str | None, raw: bytes) -> bytes:
        doc = json_codec.parse_json(raw)
        request = classification_pb2.ClassificationRequest(
            model_spec=model_spec(name, version, label, json_codec.signature_name(doc)))
        json_codec.decode_examples(doc, request)
        return json_codec.encode_classification(self.core.classify(request).result)

    def _do_regress(self, name: str, version: str | None, label: str | None, raw: bytes) -> bytes:
        doc = json_codec.parse_json(raw)
        request = regression_pb2.RegressionRequest(
            model_spec=model_spec(name, version, label, json_codec.signature_name(doc)))
        json_codec.decode_examples(doc, request)
        return json_codec.encode_regression(self.core.regress(request).result)

    def _do_status(self, name: str, version: str | None, label: str | None, raw: bytes) -> bytes:
        if not name:
            raise InvalidArgument("Missing model name in request.")
        request = get_model_status_pb2.GetModelStatusRequest(model_spec=model_spec(name, version, label))
        return json_codec.encode_status(self.core.get_model_status(request))

    def _do_metadata(self, name: str, version: str | None, label: str | None, raw: bytes) -> bytes:
        if not name:
            raise InvalidArgument("Missing model name in request.")
        request = get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec=model_spec(name, version, label), metadata_field=["signature_def"])
        return json_codec.encode_metadata(self.core.get_model_metadata(request))
