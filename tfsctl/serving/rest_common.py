"""What both REST front ends (TF Serving's /v1 in rest_api.py, the Open Inference Protocol's /v2 in v2_rest.py)
and their plumbing (rest_http.py) share: the CORS headers and origin pattern (TF Serving's AddCORSHeaders), the
front-end-only error and a request's record. A module of its own so v2_rest need not import rest_api, which
imports it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from aiohttp import web

from tfsctl.serving.logs import REQUEST_ID_HEADER, request_id
from tfsctl.serving.request_record import REST, RequestRecord
from tfsctl.serving.tracing import TRACEPARENT, TRACESTATE

if TYPE_CHECKING:
    from tfsctl.serving.request_core import RequestCore

ORIGIN = re.compile(r"https?://")
CORS_HEADERS = {  # AddCORSHeaders
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "POST, GET",
    "Access-Control-Allow-Headers": "Content-Type",
}


class HttpError(Exception):
    """A front-end-only failure with its own HTTP status (413, 408, 504)."""

    def __init__(self, status: int, message: str, code_name: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code_name = code_name


def begin_record(core: RequestCore, request: web.Request, api: str, name: str) -> RequestRecord:
    """The request core's record of a REST request (``api`` its verb), with the client's request id, peer and
    trace context when the server tags requests (access log, traces)."""
    record = core.begin(REST, api, name)
    if core.tag_requests:
        record.request_id = request_id(request.headers.get(REQUEST_ID_HEADER))
        record.peer = request.remote or ""
        record.traceparent = request.headers.get(TRACEPARENT, "")
        record.tracestate = request.headers.get(TRACESTATE, "")
    return record


__all__ = ["CORS_HEADERS", "ORIGIN", "HttpError", "begin_record"]
