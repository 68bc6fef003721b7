"""What both REST front ends (TF Serving's /v1 in rest_api.py, the Open Inference Protocol's /v2 in v2_rest.py)
share: the CORS headers and origin pattern (TF Serving's AddCORSHeaders) and the front-end-only error. A module of
its own so v2_rest need not import rest_api, which imports it.
"""

from __future__ import annotations

import re

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


__all__ = ["CORS_HEADERS", "ORIGIN", "HttpError"]
