"""Typed serving errors, mapped to gRPC status codes and HTTP codes in exactly one place.

Every layer (manager, servable, batcher, front ends) raises one of these; the gRPC front end aborts with
``error.grpc_code`` and the REST front end answers ``{"error": message}`` with ``error.http_status``.
The HTTP mapping follows TF Serving's ``ToHTTPStatusCode``.
"""

from __future__ import annotations

import grpc

_HTTP_BY_GRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def http_status_for(code: grpc.StatusCode) -> int:
    """HTTP status TF Serving's REST API uses for a gRPC status code."""
    return _HTTP_BY_GRPC.get(code, 500)


class ServingError(Exception):
    """Base of all errors that reach a client; carries its gRPC status code."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    @property
    def http_status(self) -> int:
        return http_status_for(self.grpc_code)


class NotFound(ServingError):
    """Unknown model, version or label (NOT_FOUND / 404)."""

    grpc_code = grpc.StatusCode.NOT_FOUND


class InvalidArgument(ServingError):
    """Bad request: wrong or missing inputs, dtype, shape, malformed body (INVALID_ARGUMENT / 400)."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT


class FailedPrecondition(ServingError):
    """Unknown signature or wrong method for the call (FAILED_PRECONDITION / 400)."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServingError):
    """A request waited in the batching queue past its Run() timeout (RESOURCE_EXHAUSTED / 429)."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ServingError):
    """The server is shutting down, a batch queue is full, or a reload was not confirmed by every worker
    (UNAVAILABLE / 503)."""

    grpc_code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServingError):
    """The request's deadline passed before or while its model ran (DEADLINE_EXCEEDED / 504)."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(ServingError):
    """The client cancelled the request before it ran (CANCELLED / 499)."""

    grpc_code = grpc.StatusCode.CANCELLED


class Unimplemented(ServingError):
    """Feature not supported (UNIMPLEMENTED / 501)."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED


class Unknown(ServingError):
    """TF Serving's code for models that did not become available after a config reload (UNKNOWN / 500)."""

    grpc_code = grpc.StatusCode.UNKNOWN


class Internal(ServingError):
    """Model execution failed in an unexpected way (INTERNAL / 500)."""

    grpc_code = grpc.StatusCode.INTERNAL


class ExportError(Exception):
    """`tfsctl export` could not produce a SavedModel (bad checkpoint, existing version, ...)."""


class InspectError(Exception):
    """`tfsctl inspect` was given a path that is not a SavedModel or a model base path."""


class ConfigError(Exception):
    """A ModelServerConfig, batching or monitoring config file could not be parsed or is inconsistent."""


class StorageError(Exception):
    """A model base path on object storage could not be listed or copied (access denied, unreachable endpoint)."""


class ClientError(Exception):
    """A client command (predict, status, reload, bench) failed: bad image, unreachable server, server error.

    ``code`` is the gRPC status code when the failure came from an RPC, else None.
    """

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class RunError(Exception):
    """`tfsctl run` could not run the signature (bad SavedModel, missing input, unreadable value, runtime error)."""
