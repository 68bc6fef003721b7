"""gRPC plumbing shared by the client commands: targets, TLS, channels, error wording, ModelService calls.

One :class:`Endpoint` (target + TLS files) serves predict, status, reload and bench alike. ``--server`` takes any gRPC
target: ``host[:port]``, ``[v6]:port``, ``dns:///host:port``, ``unix:/path``, ``unix-abstract:name``,
``ipv4:a:p,b:p`` / ``ipv6:[a]:p,...``. Targets that can name several backends (``dns:``, ``ipv4:``, ``ipv6:``) use
gRPC's ``round_robin`` policy, so requests spread over replicas, and retry UNAVAILABLE answers (up to 3 attempts).

Every failure becomes a :class:`~tfsctl.errors.ClientError` whose message names the server and, for RPCs, the gRPC
code and the server's own message, so the CLI prints one clear line.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tfsctl.errors import ClientError, ConfigError

DEFAULT_GRPC_PORT = 8500
DEFAULT_TIMEOUT = 30.0

# Responses (segmentation maps at full resolution) easily exceed gRPC's 4 MiB default receive limit.
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
]
# Balanced targets: spread calls over every resolved backend, and retry a call that a backend refused with
# UNAVAILABLE (a replica shutting down or gone) on another one, as TF Serving deployments behind DNS expect.
_ROUND_ROBIN = json.dumps({
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [{
        "name": [{"service": "tensorflow.serving.PredictionService"}, {"service": "tensorflow.serving.ModelService"}],
        "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.05s", "maxBackoff": "0.5s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]},
    }],
})
_URI_SCHEMES = ("dns", "unix", "unix-abstract", "ipv4", "ipv6", "vsock")
_BALANCED_SCHEMES = ("dns", "ipv4", "ipv6")
_CONNECT_HINTS = (
    "connect", "connection refused", "dns", "resolve", "no route", "unreachable", "socket closed", "handshake",
    "ssl", "tls", "no such file",
)


def _port_ok(text: str, server: str) -> None:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:  # isdigit alone takes "²"
        raise ClientError(f"invalid server address {server!r}: port {text} is out of range 1..65535")


def parse_target(server: str, default_port: int = DEFAULT_GRPC_PORT) -> str:
    """Normalise ``--server`` to a gRPC target string.

    ``host[:port]`` (``[v6]:port`` too, optional ``grpc://``/``http://``) becomes ``host:port``; gRPC name-syntax
    targets (``dns:``, ``unix:``, ``ipv4:``, ...) are checked and passed through unchanged.
    """
    text = server.strip()
    scheme = text.split(":", 1)[0].lower() if ":" in text else ""
    if scheme in _URI_SCHEMES:
        rest = text.split(":", 1)[1]
        if not rest.strip("/"):
            raise ClientError(f"invalid server address {server!r}: nothing after '{scheme}:'")
        if scheme == "ipv4":
            for addr in rest.split(","):
                m = re.fullmatch(r"(\d{1,3}(?:\.\d{1,3}){3})(?::(\w+))?", addr.strip())
                if not m:
                    raise ClientError(f"invalid server address {server!r}: {addr!r} is not IPV4:PORT")
                _port_ok(m.group(2) or str(default_port), server)
        if scheme == "dns":
            host_port = rest.lstrip("/").split("/")[-1]
            m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]/\s]+)(?::(\w+))?", host_port)
            if not m:
                raise ClientError(f"invalid server address {server!r}: expected dns:///HOST:PORT")
            if m.group(2):
                _port_ok(m.group(2), server)
            else:
                return f"{text}:{default_port}"
        return text
    text = re.sub(r"^(grpc|grpcs|http|https)://", "", text, flags=re.IGNORECASE).rstrip("/")
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]/\s]+)(?::(\w+))?", text)
    if not m:
        raise ClientError(
            f"invalid server address {server!r}: expected HOST:PORT (e.g. localhost:{default_port}), "
            "dns:///HOST:PORT, unix:PATH or ipv4:ADDR:PORT,ADDR:PORT"
        )
    host, port_text = m.group(1), m.group(2) or str(default_port)
    _port_ok(port_text, server)
    return f"{host}:{int(port_text)}"


def check_timeout(timeout: float) -> None:
    """``--timeout`` must be a positive number of seconds."""
    if not timeout > 0:
        raise ClientError(f"--timeout must be positive, got {timeout:g}")


def _read_pem(path: str | Path | None, flag: str) -> bytes | None:
    if path is None or str(path) == "":
        return None
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ClientError(f"{flag} {p}: file not found") from None
    except OSError as e:
        raise ClientError(f"{flag} {p}: cannot read it: {e.strerror or e}") from None
    if b"-----BEGIN" not in data:
        raise ClientError(f"{flag} {p}: not a PEM file (no '-----BEGIN' line)")
    return data


@dataclass(frozen=True)
class Endpoint:
    """Where and how to reach a server: a gRPC target plus optional TLS (CA, and client cert/key for mTLS).

    ``str(endpoint)`` is the target, for messages.
    """

    target: str
    ssl_ca: bytes | None = None
    ssl_cert: bytes | None = None
    ssl_key: bytes | None = None
    tls: bool = False

    def __str__(self) -> str:
        return self.target

    @property
    def balanced(self) -> bool:
        """True when the target may resolve to several backends (round_robin applies)."""
        return self.target.split(":", 1)[0].lower() in _BALANCED_SCHEMES

    def channel(self, extra_options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
        """A new channel without message size limits; TLS when configured, round_robin for balanced targets."""
        options = list(CHANNEL_OPTIONS) + list(extra_options or [])
        if self.balanced:
            options.append(("grpc.service_config", _ROUND_ROBIN))
        if not self.tls:
            return grpc.insecure_channel(self.target, options=options)
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ssl_ca, private_key=self.ssl_key, certificate_chain=self.ssl_cert
        )
        return grpc.secure_channel(self.target, creds, options=options)


def endpoint(
    server: str | Endpoint,
    *,
    ssl_ca: str | Path | None = None,
    ssl_cert: str | Path | None = None,
    ssl_key: str | Path | None = None,
    default_port: int = DEFAULT_GRPC_PORT,
) -> Endpoint:
    """Build an :class:`Endpoint` from ``--server`` and the ``--ssl-*`` files (read and checked here).

    Any ``--ssl-*`` flag, or a ``grpcs://`` / ``https://`` prefix, turns TLS on; without ``--ssl-ca`` the system's
    root certificates verify the server. ``--ssl-cert`` and ``--ssl-key`` go together (mutual TLS).
    """
    if isinstance(server, Endpoint):
        return server
    if (ssl_cert is None) != (ssl_key is None):
        raise ClientError("--ssl-cert and --ssl-key go together (the client certificate and its private key)")
    ca = _read_pem(ssl_ca, "--ssl-ca")
    cert = _read_pem(ssl_cert, "--ssl-cert")
    key = _read_pem(ssl_key, "--ssl-key")
    secure_scheme = bool(re.match(r"^(grpcs|https)://", server.strip(), flags=re.IGNORECASE))
    tls = secure_scheme or any(v is not None for v in (ca, cert, key))
    return Endpoint(parse_target(server, default_port), ca, cert, key, tls)


def open_channel(target: str | Endpoint) -> grpc.Channel:
    """Channel to ``target`` (a target string means plaintext) without message size limits."""
    return endpoint(target).channel()


def check_version_or_label(version: int | None, label: str | None) -> None:
    """The client's check that a request names a version or a version label, not both (ModelSpec's oneof).

    The server decides this again (``tfsctl.core.servable_request``); checking here first lets every command fail
    before it connects, with the flags' names in the message.
    """
    if version is not None and label is not None:
        raise ClientError("give either --version or --label, not both")


def fill_model_spec(
    spec: Any, model: str, signature: str = "", version: int | None = None, label: str | None = None
) -> None:
    """Set a request's ModelSpec: name, signature name, and the version or the version label (never both)."""
    check_version_or_label(version, label)
    if not model:
        raise ClientError("--model must not be empty")
    spec.name = model
    if signature:
        spec.signature_name = signature
    if version is not None:
        spec.version.value = version
    elif label is not None:
        spec.version_label = label


def rpc_error(err: grpc.RpcError, target: str | Endpoint, what: str, timeout: float | None = None) -> ClientError:
    """Turn a failed RPC into a ClientError that names the server, the call, the code and the server's message."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.UNAVAILABLE and any(h in details.lower() for h in _CONNECT_HINTS):
        hint = ""
        if isinstance(target, Endpoint) and not target.tls and "socket closed" in details.lower():
            hint = " (a TLS server? give --ssl-ca)"
        msg = f"cannot reach server at {target} (UNAVAILABLE): {details}{hint}"
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        limit = f" after {timeout:g} s" if timeout is not None else ""
        msg = f"{what} to {target} timed out{limit} (DEADLINE_EXCEEDED): {details}"
    else:
        msg = f"{what} failed: server at {target} answered {name}: {details}"
    return ClientError(msg, code)


# --- PredictionService.GetModelMetadata ---


def get_signature_defs(
    target: str | Endpoint,
    model: str,
    *,
    version: int | None = None,
    label: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    channel: grpc.Channel | None = None,
) -> tuple[Any, dict[str, Any]]:
    """GetModelMetadata(signature_def): ``(resolved ModelSpec, {signature name: SignatureDef})``.

    ``channel`` reuses an open channel (predict sends its Predict on the same connection).
    """
    from tfsctl.client.apis import get_model_metadata_pb2, prediction_service_pb2_grpc

    check_timeout(timeout)
    ep = endpoint(target)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    fill_model_spec(request.model_spec, model, version=version, label=label)
    if channel is None:
        with ep.channel() as own:
            return get_signature_defs(ep, model, version=version, label=label, timeout=timeout, channel=own)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        reply = stub.GetModelMetadata(request, timeout=timeout)
    except grpc.RpcError as e:
        raise rpc_error(e, ep, f"GetModelMetadata for model '{model}'", timeout) from None
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    if "signature_def" not in reply.metadata or not reply.metadata["signature_def"].Unpack(sig_map):
        raise ClientError(f"GetModelMetadata for model '{model}' on {ep}: the answer holds no SignatureDefMap")
    return reply.model_spec, dict(sig_map.signature_def)


# --- ModelService: status and reload ---


@dataclass(frozen=True)
class VersionStatus:
    """One row of GetModelStatus: version, state name (AVAILABLE, ...), error code name and message."""

    version: int
    state: str
    error_code: str
    error_message: str

    def to_dict(self) -> dict:
        return {"version": self.version, "state": self.state, "error_code": self.error_code,
                "error_message": self.error_message}


def get_model_status(
    target: str | Endpoint,
    model: str,
    version: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    *,
    label: str | None = None,
) -> list[VersionStatus]:
    """GetModelStatus for ``model`` (one version if given), sorted by version.

    TF Serving's GetModelStatus ignores version labels, so a ``label`` is first resolved to its version with
    GetModelMetadata (which honours labels), then that version's status is asked for.
    """
    from tfsctl.client.apis import get_model_status_pb2, model_service_pb2_grpc

    check_timeout(timeout)
    ep = endpoint(target)
    check_version_or_label(version, label)
    if label is not None:
        spec, _ = get_signature_defs(ep, model, label=label, timeout=timeout)
        version = int(spec.version.value)
    request = get_model_status_pb2.GetModelStatusRequest()
    fill_model_spec(request.model_spec, model, version=version)
    with ep.channel() as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            response = stub.GetModelStatus(request, timeout=timeout)
        except grpc.RpcError as e:
            raise rpc_error(e, ep, f"GetModelStatus for model '{model}'", timeout) from None
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

    def to_dict(self) -> dict:
        return {"models": [{"name": n, "base_path": p} for n, p in self.models], "ok": self.ok,
                "error_code": self.error_code, "error_message": self.error_message}


def reload_config(target: str | Endpoint, config_file: str | Path, timeout: float = DEFAULT_TIMEOUT) -> ReloadResult:
    """Parse a text-proto ModelServerConfig and send it with HandleReloadConfigRequest."""
    from tfsctl.client.apis import model_management_pb2, model_service_pb2_grpc
    from tfsctl.core.config import load_model_server_config

    check_timeout(timeout)
    ep = endpoint(target)
    try:
        config = load_model_server_config(config_file)
    except ConfigError as e:
        raise ClientError(f"bad model config: {e}") from None
    models = [(m.name, m.base_path) for m in config.model_config_list.config]
    request = model_management_pb2.ReloadConfigRequest(config=config)
    with ep.channel() as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            response = stub.HandleReloadConfigRequest(request, timeout=timeout)
        except grpc.RpcError as e:
            raise rpc_error(e, ep, "HandleReloadConfigRequest", timeout) from None
    code = int(response.status.error_code)
    return ReloadResult(models, code == 0, _code_name(code), response.status.error_message)


def _code_name(code: int) -> str:
    """``error_codes.Code`` value as its name (``OK``, ``NOT_FOUND``, ...), as gRPC numbers them."""
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status.name
    return f"CODE_{code}"
