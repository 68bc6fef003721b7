"""A served TensorFlow model as the Open Inference Protocol (KServe v2) sees it; both v2 wires call this.

The mapping, one rule each:

- A v2 *model* is a served model name; its *versions* are the AVAILABLE versions, as strings; an empty version is
  the highest AVAILABLE one (the same choice as a v1 request without a version). The platform is
  ``tensorflow_savedmodel``.
- Its inputs and outputs are those of one signature: ``serving_default`` unless the request's (or metadata
  query's) ``signature_name`` parameter names another, as TF Serving picks it. Shapes come from the SignatureDef,
  -1 for an unknown dimension (``[-1]`` for an unknown rank).
- Datatypes map both ways as :data:`~tfsctl.core.v2_tensors.V2_BY_TF` says; a tensor of a TF dtype v2 has no
  name for (complex, the quantized types, resources, variants) is a clear INVALID_ARGUMENT when it is described or
  asked for.
- Infer runs on one held version through :meth:`RequestCore.hold` -> ``HeldServable.predict``: the same request
  core, batcher, metrics, warmed callables and hot-swap rule as a v1 REST Predict. Input names, datatypes and
  decoded sizes are checked against the held signature before any input is decoded.
- The model repository extension loads or unloads one model as a change of the server's model config, through
  :meth:`RequestCore.reload_config`, the path of ``HandleReloadConfigRequest``.

Wires (``v2_rest``, ``v2_grpc``) parse their requests into :class:`InferRequest` (inputs still encoded) and
encode :class:`InferResponse`; errors are the typed errors of ``tfsctl/errors.py`` (NOT_FOUND for an unknown
model or version, INVALID_ARGUMENT for a bad request).
"""

from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tensorflow_serving.apis import model_management_pb2, model_pb2
from tensorflow_serving.config import model_server_config_pb2

import tfsctl
from tfsctl.core import v2_tensors
from tfsctl.core.events import AVAILABLE, END, LOADING, START, UNLOADING
from tfsctl.core.servable import SignatureSpec, TensorSpec, capped_names
from tfsctl.core.v2_tensors import v2_datatype
from tfsctl.errors import InvalidArgument, NotFound
from tfsctl.serving.request_core import RequestCore

PLATFORM = "tensorflow_savedmodel"
SERVER_NAME = "tfsctl"
# What GET /v2 and ServerMetadata announce (Triton's names for the two extensions implemented here).
EXTENSIONS = ("binary_tensor_data", "model_repository")
SIGNATURE_PARAMETER = "signature_name"
_STATE_NAMES = {START: "LOADING", LOADING: "LOADING", AVAILABLE: "READY", UNLOADING: "UNLOADING", END: "UNAVAILABLE"}


def parse_version(name: str, version: str) -> int | None:
    """A v2 model version: "" is the latest AVAILABLE one; otherwise a non-negative int64 in decimal."""
    if not version:
        return None
    if not (version.isascii() and version.isdigit()) or int(version) > 2**63 - 1:  # isdigit alone: "²", "١"
        raise InvalidArgument(f"model '{name}': version '{version[:64]}' is not a model version (a non-negative "
                              "integer)")
    return int(version)


def _signature_name(parameters: Mapping[str, Any]) -> str:
    value = parameters.get(SIGNATURE_PARAMETER, "")
    if not isinstance(value, str):
        raise InvalidArgument(f"parameter '{SIGNATURE_PARAMETER}' must be a string, got {type(value).__name__}")
    return value


def check_parameters(parameters: Mapping[str, Any], accepted: frozenset[str], where: str) -> None:
    """Parameters this server cannot act on are refused by name, never silently ignored."""
    unknown = set(parameters) - accepted
    if unknown:
        raise InvalidArgument(f"{where}: unsupported parameter(s) {capped_names(unknown)} (this server accepts: "
                              f"{', '.join(sorted(accepted)) or 'none'})")


def _tensor_metadata(spec: TensorSpec, what: str) -> dict[str, Any]:
    shape = [-1] if spec.shape is None else [int(d) if d >= 0 else -1 for d in spec.shape]
    return {"name": spec.key, "datatype": v2_datatype(spec.dtype_enum, f"{what} '{spec.key}'"), "shape": shape}


@dataclass
class InferTensor:
    """One request input as a wire parsed it, not decoded yet: its elements are ``data`` (flat or nested
    values) or ``raw`` (the binary / raw encoding)."""

    name: str
    datatype: str
    shape: Any
    data: Any = None
    raw: bytes | memoryview | None = None

    def decoded_bytes(self) -> int:
        """What decoding allocates; the shape is checked (no decode)."""
        dims = v2_tensors.checked_shape(self.shape, self.name)
        if self.datatype != v2_tensors.BYTES:
            return v2_tensors.decoded_bytes(self.datatype, dims)
        return v2_tensors.decoded_bytes(v2_tensors.BYTES, dims, len(self.raw) if self.raw is not None else 0)

    def decode(self, max_bytes: int | None) -> np.ndarray:
        if self.raw is not None:
            return v2_tensors.from_raw(self.datatype, self.shape, self.raw, self.name, max_bytes)
        if self.data is None:
            raise InvalidArgument(f"input '{self.name}': no data (give 'data', or binary data)")
        return v2_tensors.from_values(self.datatype, self.shape, self.data, self.name, max_bytes)


@dataclass
class InferRequest:
    """A v2 inference request on one model: ``outputs`` None means every output of the signature."""

    model: str
    version: str = ""
    id: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[InferTensor] = field(default_factory=list)
    outputs: list[str] | None = None


@dataclass
class InferResponse:
    model: str
    version: str
    id: str
    outputs: list[tuple[str, str, np.ndarray]]  # (name, v2 datatype, array), in the order asked


class V2Core:
    """The v2 protocol over :class:`RequestCore`: health, metadata, infer and the model repository. Both wires
    take the one instance of their core from :meth:`of`, so a model unloaded over REST can be loaded over gRPC."""

    _instances: weakref.WeakKeyDictionary[RequestCore, V2Core] = weakref.WeakKeyDictionary()
    _instances_lock = threading.Lock()

    @classmethod
    def of(cls, core: RequestCore) -> V2Core:
        """The V2Core of ``core`` (made on first use)."""
        with cls._instances_lock:
            found = cls._instances.get(core)
            if found is None:
                found = cls._instances[core] = cls(core)
            return found

    def __init__(self, core: RequestCore, *, max_request_bytes: int | None = None) -> None:
        self.core = core
        self.max_request_bytes = max_request_bytes if max_request_bytes is not None else core.max_request_bytes
        self._unloaded: dict[str, model_server_config_pb2.ModelConfig] = {}  # for repository load after unload
        self._repository = threading.Lock()  # one load/unload at a time: each edits the config in force

    # --- health and metadata --------------------------------------------------------------------------------

    def server_ready(self) -> bool:
        """Every configured model has an AVAILABLE version (as /v1/health/ready)."""
        return self.core.is_ready()

    @staticmethod
    def server_metadata() -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": tfsctl.__version__, "extensions": list(EXTENSIONS)}

    def _available(self, name: str) -> list[int]:
        return [int(s.version) for s in self.core.version_states(name) if s.state == AVAILABLE]

    def model_ready(self, name: str, version: str = "") -> bool:
        """Whether the model (or that version) can serve; NotFound for a model that was never configured."""
        number = parse_version(name, version)
        available = self._available(self._known(name))
        return bool(available) if number is None else number in available

    def check_model(self, name: str) -> None:
        """NotFound for a model never configured, before its request is parsed: Triton looks the model up first,
        so an unknown model is 404 / NOT_FOUND whatever the body holds."""
        self._known(name)

    def _known(self, name: str) -> str:
        if not name:
            raise InvalidArgument("missing model name")
        self.core.version_states(name)  # NotFound for a model never configured
        return name

    def model_metadata(self, name: str, version: str = "", signature_name: str = "") -> dict[str, Any]:
        """Name, AVAILABLE versions, platform, and the signature's inputs and outputs."""
        with self.core.hold(self._spec(name, version, signature_name)) as held:
            sig = held.signature
            return {
                "name": name,
                "versions": [str(v) for v in self._available(name)],
                "platform": PLATFORM,
                "inputs": [_tensor_metadata(sig.inputs[k], "input") for k in sorted(sig.inputs)],
                "outputs": [_tensor_metadata(sig.outputs[k], "output") for k in sorted(sig.outputs)],
            }

    def _spec(self, name: str, version: str, signature_name: str) -> model_pb2.ModelSpec:
        if not name:
            raise InvalidArgument("missing model name")
        spec = model_pb2.ModelSpec(name=name, signature_name=signature_name)
        number = parse_version(name, version)
        if number is not None:
            spec.version.value = number
        return spec

    # --- infer ----------------------------------------------------------------------------------------------

    def infer(self, request: InferRequest, *, only_if_quick: bool = False, request_bytes: int = 0) -> InferResponse:
        """Run ``request`` on one held version (the v1 Predict path); outputs in the order asked.

        ``only_if_quick`` (the gRPC event loop): ``WouldWait`` before running, unless the request is small
        (``request_bytes``) and the version's steps are short, as for a v1 Predict (``RequestCore.hold``)."""
        name = request.model
        signature_name = _signature_name(request.parameters)
        with self.core.hold(self._spec(name, request.version, signature_name), only_if_quick=only_if_quick,
                            request_bytes=request_bytes) as held:
            sig = held.signature
            where = f"model '{name}' version {held.servable.version}, signature '{sig.name}'"
            self._check_inputs(held.servable, sig, request.inputs, where)
            wanted = self._check_outputs(sig, request.outputs, where)
            arrays = {t.name: t.decode(self.max_request_bytes) for t in request.inputs}
            _, outputs = held.predict(arrays, wanted if request.outputs is not None else ())
            del arrays
            result = [(key, v2_datatype(sig.outputs[key].dtype_enum, f"{where}: output '{key}'"),
                       np.asarray(outputs[key])) for key in wanted]
            return InferResponse(name, str(held.servable.version), request.id, result)

    def _check_inputs(self, servable: Any, sig: SignatureSpec, inputs: list[InferTensor], where: str) -> None:
        """Names (no duplicates, the signature's keys), datatypes and the total decoded size, before decoding."""
        names = [t.name for t in inputs]
        if len(set(names)) != len(names):
            dup = {n for n, k in Counter(names).items() if k > 1}  # linear: names.count per name was quadratic
            raise InvalidArgument(f"{where}: input(s) {capped_names(dup)} given more than once")
        servable.check_input_keys(sig, set(names))
        total, biggest, most = 0, "", -1
        for t in inputs:
            want = v2_datatype(sig.inputs[t.name].dtype_enum, f"{where}: input '{t.name}'")
            if t.datatype != want:
                v2_tensors.numpy_dtype(t.datatype, t.name)  # an unknown datatype says so first
                raise InvalidArgument(f"{where}: input '{t.name}' has datatype {t.datatype}, the model expects "
                                      f"{want}")
            need = t.decoded_bytes()
            total += need
            if need > most:
                biggest, most = t.name, need
        limit = self.max_request_bytes
        if limit is not None and total > limit:
            raise InvalidArgument(f"{where}: the inputs need {total} bytes once decoded (input "
                                  f"'{capped_names([biggest], 1)}' {most} bytes), more than the {limit} bytes "
                                  "allowed for a request")

    @staticmethod
    def _check_outputs(sig: SignatureSpec, asked: list[str] | None, where: str) -> list[str]:
        if asked is None:
            return sorted(sig.outputs)
        if len(set(asked)) != len(asked):
            dup = {n for n, k in Counter(asked).items() if k > 1}
            raise InvalidArgument(f"{where}: output(s) {capped_names(dup)} requested more than once")
        unknown = [n for n in asked if n not in sig.outputs]
        if unknown:
            raise InvalidArgument(f"{where}: unknown output(s) {capped_names(unknown)} (the signature's outputs: "
                                  f"{capped_names(sig.outputs)})")
        return list(asked)

    # --- model repository extension --------------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every configured model's versions with their state (READY, LOADING, UNLOADING, UNAVAILABLE), and the
        models unloaded through the repository API (no version, UNAVAILABLE); ``ready_only``: READY ones only."""
        entries: list[dict[str, str]] = []
        for name in self.core.model_names():
            states = self.core.version_states(name)
            if not states and not ready_only:
                entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "no version loaded"})
            for s in states:
                state = _STATE_NAMES.get(s.state, "UNAVAILABLE")
                if ready_only and state != "READY":
                    continue
                entry = {"name": name, "version": str(s.version), "state": state}
                if s.error:
                    entry["reason"] = s.error
                entries.append(entry)
        if not ready_only:
            configured = set(self.core.model_names())
            for name in sorted(set(self._unloaded) - configured):
                entries.append({"name": name, "version": "", "state": "UNAVAILABLE", "reason": "unloaded"})
        return entries

    def load(self, name: str, parameters: Mapping[str, Any] | None = None, wait_seconds: float | None = None) -> None:
        """Serve ``name`` again: a model unloaded through :meth:`unload` comes back with its config; a configured
        one is left as it is, once AVAILABLE. Anything else is NOT_FOUND (this server's repository is its model
        config)."""
        if parameters:
            check_parameters(parameters, frozenset(), f"load of model '{name}'")
        if not name:
            raise InvalidArgument("missing model name")
        with self._repository:
            self._load(name, wait_seconds)

    def _load(self, name: str, wait_seconds: float | None) -> None:
        config = self.core.model_config()
        models = config.model_config_list.config
        if any(mc.name == name for mc in models):
            added = False
        elif name in self._unloaded:
            models.add().CopyFrom(self._unloaded[name])
            added = True
        else:
            raise NotFound(f"model '{name}' is not in the model config (unload a model first to load it again, or "
                           "add it with --model_config_file or HandleReloadConfigRequest)")
        self.core.reload_config(model_management_pb2.ReloadConfigRequest(config=config), wait_seconds)
        if added:
            self._unloaded.pop(name, None)
        if not any(s.state == AVAILABLE for s in self.core.version_states(name)):
            raise InvalidArgument(f"model '{name}' has no AVAILABLE version yet (see its versions' states in the "
                                  "repository index)")

    def unload(self, name: str, parameters: Mapping[str, Any] | None = None,
               wait_seconds: float | None = None) -> None:
        """Stop serving ``name``: it leaves the model config (a config reload), so its versions unload; the
        config is kept for :meth:`load`."""
        if parameters:  # Triton's clients send unload_dependents; no model here depends on another, so it holds
            check_parameters(parameters, frozenset({"unload_dependents"}), f"unload of model '{name}'")
        if not name:
            raise InvalidArgument("missing model name")
        with self._repository:
            self._unload(name, wait_seconds)

    def _unload(self, name: str, wait_seconds: float | None) -> None:
        config = self.core.model_config()
        models = config.model_config_list.config
        keep = [mc for mc in models if mc.name != name]
        if len(keep) == len(models):
            raise NotFound(f"model '{name}' is not in the model config")
        removed = next(mc for mc in models if mc.name == name)
        saved = model_server_config_pb2.ModelConfig()
        saved.CopyFrom(removed)
        new = model_server_config_pb2.ModelServerConfig()
        new.model_config_list.SetInParent()
        for mc in keep:
            new.model_config_list.config.add().CopyFrom(mc)
        self.core.reload_config(model_management_pb2.ReloadConfigRequest(config=new), wait_seconds)
        self._unloaded[name] = saved


__all__ = ["EXTENSIONS", "PLATFORM", "InferRequest", "InferResponse", "InferTensor", "V2Core", "check_parameters",
           "parse_version"]
