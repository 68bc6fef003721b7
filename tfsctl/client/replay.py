"""``tfsctl bench --requests-from LOG``: replay a server's request log (the real traffic mix) instead of synthetic
inputs.

A request log (a model config's ``logging_config``, :mod:`tfsctl.core.request_log`) holds each sampled request as a
``PredictionLog``. Over gRPC every record is sent as logged, with its own method (Predict, Classify, Regress,
MultiInference), model and signature; over REST the Predict records are sent as TF Serving REST bodies (REST has no
MultiInference, and a logged Classify/Regress carries tf.Examples, not the JSON they came from). Each worker goes
through the records in order from its own starting point, round and round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc

from tfsctl.client.rpc import Endpoint, endpoint
from tfsctl.client.senders import Sender, SenderFactory, _RestSender, rest_body, rest_path
from tfsctl.errors import ClientError
from tfsctl.tfrecord import RecordError, read_log

_SERVICE = "/tensorflow.serving.PredictionService/"
METHODS = {"predict_log": "Predict", "classify_log": "Classify", "regress_log": "Regress",
           "multi_inference_log": "MultiInference"}
MAX_RECORDS = 100_000  # read at most this many records (a replay holds them all in memory)


@dataclass(frozen=True)
class Recorded:
    """One logged request: its gRPC method, model and serialized request (what is sent)."""

    method: str
    model: str
    payload: bytes
    log: object  # the PredictionLog (for REST bodies)


def load_requests(path: str, limit: int = MAX_RECORDS) -> list[Recorded]:
    """The logged requests of a request log (a .tfrecord file, a directory of them or a filename_prefix)."""
    from tfsctl.client.apis import prediction_log_pb2

    out: list[Recorded] = []
    try:
        for data in read_log(path):
            entry = prediction_log_pb2.PredictionLog.FromString(data)
            kind = entry.WhichOneof("log_type")
            if kind not in METHODS:
                continue
            request = getattr(entry, kind).request
            model = request.tasks[0].model_spec.name if kind == "multi_inference_log" and request.tasks \
                else getattr(request, "model_spec", None) and request.model_spec.name
            out.append(Recorded(METHODS[kind], model or "", request.SerializeToString(), entry))
            if len(out) >= limit:
                break
    except (OSError, RecordError) as e:
        raise ClientError(f"--requests-from {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - bytes that are not PredictionLog records
        raise ClientError(f"--requests-from {path}: record {len(out) + 1} is not a PredictionLog: {e}") from None
    if not out:
        raise ClientError(f"--requests-from {path}: no Predict, Classify, Regress or MultiInference record")
    return out


class _GrpcReplay:
    def __init__(self, channel: grpc.Channel, recorded: list[Recorded], start: int, timeout: float,
                 owns: bool) -> None:
        calls = {m: channel.unary_unary(_SERVICE + m, request_serializer=None, response_deserializer=None)
                 for m in {r.method for r in recorded}}
        self._items = [(calls[r.method], r.payload) for r in recorded]
        self._i, self._timeout, self._channel, self._owns = start, timeout, channel, owns

    def __call__(self) -> None:
        call, payload = self._items[self._i % len(self._items)]
        self._i += 1
        call(payload, timeout=self._timeout)

    def close(self) -> None:
        if self._owns:
            self._channel.close()


class _RestReplay:
    def __init__(self, host: str, port: int, items: list[tuple[str, bytes]], start: int, timeout: float) -> None:
        self._sender = _RestSender(host, port, items[0][0], items[0][1], timeout)
        self._items, self._i = items, start

    def __call__(self) -> None:
        path, body = self._items[self._i % len(self._items)]
        self._i += 1
        self._sender.send(path, body)

    def close(self) -> None:
        self._sender.close()


def replay_factory(target: str | Endpoint, recorded: list[Recorded], *, protocol: str = "grpc",
                   timeout: float = 10.0, channels: str = "shared") -> tuple[SenderFactory, Callable[[], None]]:
    """Senders that replay ``recorded``; worker i starts at record i (spread over the log)."""
    counter = iter(range(1 << 62))
    if protocol == "grpc":
        ep = endpoint(target, default_port=8500)
        shared = ep.channel() if channels == "shared" else None

        def make_grpc() -> Sender:
            if shared is not None:
                return _GrpcReplay(shared, recorded, next(counter), timeout, owns=False)
            own = ep.channel([("grpc.use_local_subchannel_pool", 1)])
            return _GrpcReplay(own, recorded, next(counter), timeout, owns=True)

        return make_grpc, (lambda: shared.close() if shared is not None else None)
    if protocol != "rest":
        raise ClientError(f"--protocol must be 'grpc' or 'rest', got {protocol!r}")
    from tfsctl.client.apis import to_numpy

    items = []
    for r in recorded:
        if r.method != "Predict":
            continue
        request = r.log.predict_log.request  # type: ignore[attr-defined]
        spec = request.model_spec
        version = spec.version.value if spec.HasField("version") else None
        label = spec.version_label if spec.WhichOneof("version_choice") == "version_label" else None
        inputs = {k: to_numpy(v) for k, v in request.inputs.items()}
        items.append((rest_path(spec.name, version, label), rest_body(inputs, spec.signature_name)))
    if not items:
        raise ClientError("--requests-from over REST replays Predict records, and the log has none: use --protocol "
                          "grpc")
    host, _, port = str(endpoint(target, default_port=8501)).rpartition(":")

    def make_rest() -> Sender:
        return _RestReplay(host.strip("[]"), int(port), items, next(counter), timeout)

    return make_rest, (lambda: None)
