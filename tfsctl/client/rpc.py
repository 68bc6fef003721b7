"""gRPC plumbing shared by the client commands: target parsing, channels, error wording, ModelService calls.

Every failure becomes a :class:`~tfsctl.errors.ClientError` whose message names the server (``host:port``) and,
for RPC failures, the gRPC code and the server's own message, so the CLI can print one clear line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tfsctl.errors import ClientError, ConfigError

DEFAULT_GRPC_PORT = 8500

# Responses (segmentation maps, probabilities) easily exceed gRPC's 4 MiB default receive limit.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]

_CONNECT_HINTS = ("connect", "connection refused", "dns", "resolve", "no route", "unreachable", "socket closed")


def parse_target(server: str, default_port: int = DEFAULT_GRPC_PORT) -> str:
    """Normalise ``host[:port]`` (``[v6]:port`` too, optional ``grpc://``/``http://``) to ``host:port``."""
    text = re.sub(r"^(grpc|http|https)://", "", server.strip()).rstrip("/")
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]/\s]+)(?::(\d+))?", text)
    if not m:
        raise ClientError(f"invalid server address {server!r}: expected HOST:PORT, e.g. localhost:{default_port}")
    host, port_text = m.group(1), m.group(2)
    port = int(port_text) if port_text else default_port
    if not 0 < port < 65536:
        raise ClientError(f"invalid server address {server!r}: port {port} is out of range 1..65535")
    return f"{host}:{port}"


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise ClientError(f"--timeout must be positive, got {timeout:g}")


def open_channel(target: str) -> grpc.Channel:
    """Insecure channel to ``target`` without message size limits."""
    return grpc.insecure_channel(target, options=CHANNEL_OPTIONS)


def fill_model_spec(
    spec: Any, model: str, signature: str = "", version: int | None = None, label: str | None = None
) -> None:
    """Set a request's ModelSpec: name, signature name, and the version or the version label (never both)."""
    if version is not None and label is not None:
        raise ClientError("give either --version or --label, not both")
    spec.name = model
    if signature:
        spec.signature_name = signature
    if version is not None:
        spec.version.value = version
    elif label is not None:
        spec.version_label = label


def rpc_error(err: grpc.RpcError, target: str, what: str, timeout: float | None = None) -> ClientError:
    """Turn a failed RPC into a ClientError that names the server, the call, the code and the server's message."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.UNAVAILABLE and any(h in details.lower() for h in _CONNECT_HINTS):
        msg = f"cannot reach server at {target} (UNAVAILABLE): {details}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        limit = f" after {timeout:g} s" if timeout is not None else ""
        msg = f"{what} to {target} timed out{limit} (DEADLINE_EXCEEDED): {details}"
    else:
        msg = f"{what} failed: server at {target} answered {name}: {details}"
    return ClientError(msg, code)


# --- ModelService: status and reload ---


@dataclass(frozen=True)
class VersionStatus:
    """One row of GetModelStatus: version, state name (AVAILABLE, ...), error code name and message."""

    version: int
    state: str
    error_code: str
    error_message: str


def get_model_status(target: str, model: str, version: int | None = None, timeout: float = 10.0) -> list[VersionStatus]:
    """GetModelStatus for ``model`` (one version if given), sorted by version."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    _check_timeout(timeout)
    request = get_model_status_pb2.GetModelStatusRequest()
    fill_model_spec(request.model_spec, model, version=version)
    with open_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            response = stub.GetModelStatus(request, timeout=timeout)
        except grpc.RpcError as e:
            raise rpc_error(e, target, f"GetModelStatus for model '{model}'", timeout) from None
    state_name = get_model_status_pb2.ModelVersionStatus.State.Name
    rows = [
        VersionStatus(
            version=int(s.version),
            state=state_name(s.state),
            error_code=_code_name(s.status.error_code),
            error_message=s.status.error_message,
        )
        for s in response.model_version_status
    ]
    return sorted(rows, key=lambda r: r.version)


@dataclass(frozen=True)
class ReloadResult:
    """Outcome of HandleReloadConfigRequest: the models sent and the server's status."""

    models: list[tuple[str, str]]  # (name, base_path) of each model in the config sent
    ok: bool
    error_code: str
    error_message: str


def reload_config(target: str, config_file: str | Path, timeout: float = 30.0) -> ReloadResult:
    """Parse a text-proto ModelServerConfig and send it with HandleReloadConfigRequest."""
    from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

    from tfsctl.core.config import load_model_server_config

    _check_timeout(timeout)
    try:
        config = load_model_server_config(config_file)
    except ConfigError as e:
        raise ClientError(f"bad model config: {e}") from None
    models = [(m.name, m.base_path) for m in config.model_config_list.config]
    request = model_management_pb2.ReloadConfigRequest(config=config)
    with open_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            response = stub.HandleReloadConfigRequest(request, timeout=timeout)
        except grpc.RpcError as e:
            raise rpc_error(e, target, "HandleReloadConfigRequest", timeout) from None
    code = int(response.status.error_code)
    return ReloadResult(models, code == 0, _code_name(code), response.status.error_message)


def _code_name(code: int) -> str:
    """``error_codes.Code`` value as its name (``OK``, ``NOT_FOUND``, ...), as gRPC numbers them."""
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return f"CODE_{code}"
