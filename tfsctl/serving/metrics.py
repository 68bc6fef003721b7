"""Prometheus metrics: TF Serving 2.21's own metrics, exactly as it exports them, and tfsctl's additional ones.

**TF Serving's metrics** (:data:`TF_METRICS`) keep its names, label sets, units (microseconds) and bucket bounds
(``servables/tensorflow/util.cc``, ``batching/batching_session.cc`` and ``batching_util.h``,
``saved_model_warmup_util.cc``, ``core/request_logger.cc`` and TensorFlow's ``cc/saved_model/loader.cc``), and
are rendered as its ``util/prometheus_exporter.cc`` renders them: ``/tensorflow/serving/request_count`` becomes
``:tensorflow:serving:request_count`` (every character outside ``[a-zA-Z0-9_]`` turns into ``:``), a counter has no
``_total`` suffix, a ``# TYPE`` line and no ``# HELP``, counter values are integers, bucket bounds and sums are
printed with six significant digits (absl's ``StrCat`` of a double), and the last bucket is ``+Inf``. TensorFlow's
histograms count a value in the first bucket whose bound is *greater* than it (Prometheus: greater or equal):
they are stored here with each bound moved down by one ulp, so an integer value lands where TF puts it.

**tfsctl's own metrics** (:data:`TFSCTL_METRICS`, documented in docs/OBSERVABILITY.md) keep Prometheus' own style
(``tfsctl_*``, seconds, ``_total``) and prometheus_client's exposition.

Every value lives in prometheus_client metrics of one registry per :class:`Metrics`, so ``serve --workers``
(prometheus_client's multiprocess mode, :mod:`tfsctl.serving.supervisor`) sums both kinds over the workers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


def tf_exponential_buckets(scale: float, growth: float, count: int) -> tuple[float, ...]:
    """TensorFlow's ``monitoring::Buckets::Exponential(scale, growth, count)`` bounds (DBL_MAX, i.e. +Inf, after)."""
    bounds, bound = [], float(scale)
    for _ in range(count):
        bounds.append(bound)
        bound *= growth
    return tuple(bounds)


LATENCY_BUCKETS_US = tf_exponential_buckets(10, 1.8, 33)  # "~20 minutes": request, runtime, warmup, load stages
QUEUING_BUCKETS_US = tf_exponential_buckets(100, 1.2, 52)  # batching_session/queuing_latency ("~1 second")
BATCH_SIZE_BUCKETS = tf_exponential_buckets(1, 2, 14)  # batching_util.h: 1 .. 8192
EXAMPLE_COUNT_BUCKETS = tf_exponential_buckets(1, 2, 15)  # request_example_counts: 1 .. 16384


@dataclass(frozen=True)
class TfMetric:
    """One of TF Serving's metrics: its TF name, kind, help text, labels (in TF's order) and bucket bounds."""

    tf_name: str
    kind: str  # "counter" or "histogram"
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        """The Prometheus name, as prometheus_exporter.cc's GetPrometheusMetricName."""
        name = re.sub(r"[^a-zA-Z0-9_]", ":", self.tf_name)
        return "_" + name if name[:1].isdigit() else name


_S, _CC = "/tensorflow/serving/", "/tensorflow/cc/saved_model/"
REQUEST_COUNT = TfMetric(_S + "request_count", "counter", "The total number of requests.", ("model_name", "status"))
REQUEST_LATENCY = TfMetric(
    _S + "request_latency", "histogram",
    "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
    ("model_name", "API", "entrypoint"), LATENCY_BUCKETS_US)
RUNTIME_LATENCY = TfMetric(
    _S + "runtime_latency", "histogram", "Distribution of wall time (in microseconds) for Tensorflow runtime.",
    ("model_name", "API", "runtime"), LATENCY_BUCKETS_US)
EXAMPLE_COUNTS = TfMetric(_S + "request_example_counts", "histogram",
                          "The number of tensorflow.Examples per request.", ("model",), EXAMPLE_COUNT_BUCKETS)
EXAMPLE_COUNT_TOTAL = TfMetric(_S + "request_example_count_total", "counter",
                               "The total number of tensorflow.Examples.", ("model",))
QUEUING_LATENCY = TfMetric(_S + "batching_session/queuing_latency", "histogram",
                           "Distribution of wall time spent (in microseconds) in queuing", ("thread_pool_name",),
                           QUEUING_BUCKETS_US)
WRAPPED_RUN_COUNT = TfMetric(_S + "batching_session/wrapped_run_count", "counter",
                             "Total count of run calls on the wrapped session")
INPUT_BATCH_SIZE = TfMetric(_S + "batching_session/input_batch_size", "histogram",
                            "Tracks the batch size distribution on the inputs.", (), BATCH_SIZE_BUCKETS)
PROCESSED_BATCH_SIZE = TfMetric(_S + "batching_session/processed_batch_size", "histogram",
                                "Tracks the batch size distribution on processing.", (), BATCH_SIZE_BUCKETS)
PADDING_SIZE = TfMetric(_S + "batching_session/padding_size", "histogram",
                        "Tracks the padding size distribution on batches.", ("execution_batch_size",),
                        BATCH_SIZE_BUCKETS)
WARMUP_LATENCY = TfMetric(_S + "model_warmup_latency", "histogram",
                          "Distribution of wall time (in microseconds) for warming up the model.",
                          ("model_path", "status"), LATENCY_BUCKETS_US)
WARMUP_RECORDS_READ = TfMetric(_S + "model_warmup_records_read", "counter",
                               "Total number of warmup records read during model warmup.", ("model_path", "status"))
REQUEST_LOG_COUNT = TfMetric(
    _S + "request_log_count", "counter",
    "The total number of requests logged from the model server sliced down by model_name and status code.",
    ("model_name", "status_code"))
LOAD_ATTEMPT_COUNT = TfMetric(_CC + "load_attempt_count", "counter",
                              "The number of times a SavedModel was successfully loaded.", ("model_path", "status"))
LOAD_LATENCY = TfMetric(_CC + "load_latency", "counter",
                        "Latency in microseconds for SavedModels that were successfully loaded.", ("model_path",))
LOAD_LATENCY_BY_STAGE = TfMetric(
    _CC + "load_latency_by_stage", "histogram",
    "Distribution of wall time spent (in microseconds) in each stage (restore graph from disk, run init graph op, "
    "etc) when loading the model", ("model_path", "stage"), LATENCY_BUCKETS_US)

TF_METRICS: tuple[TfMetric, ...] = (
    REQUEST_COUNT, REQUEST_LATENCY, RUNTIME_LATENCY, EXAMPLE_COUNTS, EXAMPLE_COUNT_TOTAL, QUEUING_LATENCY,
    WRAPPED_RUN_COUNT, INPUT_BATCH_SIZE, PROCESSED_BATCH_SIZE, PADDING_SIZE, WARMUP_LATENCY, WARMUP_RECORDS_READ,
    REQUEST_LOG_COUNT, LOAD_ATTEMPT_COUNT, LOAD_LATENCY, LOAD_LATENCY_BY_STAGE,
)

_SECONDS_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# tfsctl's own metrics: (name, kind, help, labels). The one table of them is in docs/OBSERVABILITY.md.
TFSCTL_METRICS = (
    ("tfsctl_batch_size", "histogram", "Size of the batches the batcher ran (after padding), by model.",
     ("model_name",)),
    ("tfsctl_batch_queue_latency_seconds", "histogram", "Time a request waited in the batch queue, by model.",
     ("model_name",)),
    ("tfsctl_model_events", "counter", "Servable load/unload events by outcome (load, load_error, unload).",
     ("model_name", "event")),
    ("tfsctl_model_event_seconds", "histogram", "Time taken to load or unload a servable version.",
     ("model_name", "event")),
    ("tfsctl_grpc_requests_in_flight", "gauge", "TF Serving gRPC requests being handled (queued ones too).", ()),
    ("tfsctl_rest_connections_open", "gauge", "REST connections open now.", ()),
    ("tfsctl_rest_connections_refused", "counter", "REST connections refused (503) at the connection limit.", ()),
)


def _tf_double(value: float) -> str:
    """A double as absl's StrCat prints it (six significant digits, as ``%.6g``)."""
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return "%.6g" % value  # noqa: UP031 - exactly printf's %g, which absl's SixDigitsToBuffer follows


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _storage_bounds(bounds: tuple[float, ...]) -> list[float]:
    """Bucket bounds one ulp below TF's: ``v <= b'`` is ``v < b`` for every value TF records (integers)."""
    return [math.nextafter(b, -math.inf) for b in bounds] + [math.inf]


class Metrics:
    """All server metrics: the request core, batcher and loader report into one instance; the manager's state
    events feed it (``on_servable_state``)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, collect: Callable[[], Iterable] | None = None) -> None:
        """``collect``: where the page's metric families come from (``serve --workers``: the sum over the
        workers); None: this process's registry."""
        self._collect = collect
        self.registry = CollectorRegistry(auto_describe=True)
        self._tf: dict[str, object] = {}
        self._tf_by_family: dict[str, TfMetric] = {}
        for spec in TF_METRICS:
            metric: Counter | Histogram
            if spec.kind == "counter":
                metric = Counter(spec.name, spec.help, spec.labels, registry=self.registry)
            else:
                metric = Histogram(spec.name, spec.help, spec.labels, buckets=_storage_bounds(spec.buckets),
                                   registry=self.registry)
            self._tf[spec.tf_name] = metric
            family = spec.name[:-len("_total")] if spec.kind == "counter" and spec.name.endswith("_total") \
                else spec.name
            self._tf_by_family[family] = spec
        own: dict[str, object] = {}
        for name, kind, doc, labels in TFSCTL_METRICS:
            if kind == "counter":
                own[name] = Counter(name, doc, labels, registry=self.registry)
            elif kind == "gauge":
                own[name] = Gauge(name, doc, labels, registry=self.registry, multiprocess_mode="livesum")
            else:
                buckets = _BATCH_BUCKETS if name == "tfsctl_batch_size" else _SECONDS_BUCKETS
                own[name] = Histogram(name, doc, labels, buckets=buckets, registry=self.registry)
        self.batch_size = own["tfsctl_batch_size"]
        self.queue_latency = own["tfsctl_batch_queue_latency_seconds"]
        self.model_events = own["tfsctl_model_events"]
        self.model_event_latency = own["tfsctl_model_event_seconds"]
        self.grpc_in_flight = own["tfsctl_grpc_requests_in_flight"]
        self.rest_connections_open = own["tfsctl_rest_connections_open"]
        self.rest_connections_refused = own["tfsctl_rest_connections_refused"]
        self._children: dict[tuple, object] = {}

    def _child(self, spec: TfMetric, *values: str) -> object:
        """A TF metric's labelled child, cached: prometheus_client's ``labels()`` costs more than the update."""
        key = (spec.tf_name, *values)
        child = self._children.get(key)
        if child is None:
            metric = self._tf[spec.tf_name]
            child = self._children[key] = metric.labels(*values) if values else metric  # type: ignore[attr-defined]
        return child

    # --- TF Serving's metrics -------------------------------------------------------------------------------

    def observe_request(self, model_name: str, api: str, entrypoint: str, status: str, latency_us: int | None
                        ) -> None:
        """RecordModelRequestCount (``status`` a gRPC code name) and, for a successful request, RecordRequestLatency
        (``api`` "Predict"/"Classify"/"Regress" over gRPC, the URL's verb over REST; ``entrypoint`` GRPC or REST)."""
        self._child(REQUEST_COUNT, model_name, status).inc()  # type: ignore[attr-defined]
        if latency_us is not None:
            self._child(REQUEST_LATENCY, model_name, api, entrypoint).observe(latency_us)  # type: ignore[attr-defined]

    def observe_runtime(self, model_name: str, api: str, latency_us: int) -> None:
        """RecordRuntimeLatency: the signature's run (the session, through the batch queue when batching)."""
        self._child(RUNTIME_LATENCY, model_name, api, "TF1").observe(latency_us)  # type: ignore[attr-defined]

    def observe_examples(self, model_name: str, count: int) -> None:
        """RecordRequestExampleCount (MultiInference)."""
        self._child(EXAMPLE_COUNTS, model_name).observe(count)  # type: ignore[attr-defined]
        self._child(EXAMPLE_COUNT_TOTAL, model_name).inc(count)  # type: ignore[attr-defined]

    def observe_request_log(self, model_name: str, status_code: str) -> None:
        """request_log_count: one sampled request handed to (or dropped before) the log collector."""
        self._child(REQUEST_LOG_COUNT, model_name, status_code).inc()  # type: ignore[attr-defined]

    def observe_saved_model_load(self, model_path: str, ok: bool, latency_us: int,
                                 stages: Iterable[tuple[str, int]] = ()) -> None:
        """TensorFlow's LoadSavedModel metrics: one attempt, its latency, and each finished stage's time."""
        self._child(LOAD_ATTEMPT_COUNT, model_path, "success" if ok else "fail").inc()  # type: ignore[attr-defined]
        self._child(LOAD_LATENCY, model_path).inc(latency_us)  # type: ignore[attr-defined]
        for stage, us in stages:
            self._child(LOAD_LATENCY_BY_STAGE, model_path, stage).observe(us)  # type: ignore[attr-defined]

    def observe_warmup(self, model_path: str, status: str, latency_us: int, records: int) -> None:
        """model_warmup_latency and model_warmup_records_read (``status`` as absl's Status::ToString: "OK")."""
        self._child(WARMUP_LATENCY, model_path, status).observe(latency_us)  # type: ignore[attr-defined]
        self._child(WARMUP_RECORDS_READ, model_path, status).inc(records)  # type: ignore[attr-defined]

    def observe_batch_input(self, sizes: Iterable[int]) -> None:
        """batching_session/input_batch_size: dimension 0 of each input tensor of a request entering a queue."""
        child = self._child(INPUT_BATCH_SIZE)
        for size in sizes:
            child.observe(size)  # type: ignore[attr-defined]

    def observe_batch(self, model_name: str, size: int, queue_seconds: list[float], *, real_size: int | None = None,
                      thread_pool_name: str = "batch_threads") -> None:
        """One executed batch (``size`` after padding, ``real_size`` before) and each request's queue wait:
        TF Serving's batching_session metrics and tfsctl's per-model batch size and queue latency."""
        self._child(PROCESSED_BATCH_SIZE).observe(size)  # type: ignore[attr-defined]
        self._child(PADDING_SIZE, str(size)).observe(size - (size if real_size is None else real_size))  # type: ignore[attr-defined]
        self._child(WRAPPED_RUN_COUNT).inc()  # type: ignore[attr-defined]
        queuing = self._child(QUEUING_LATENCY, thread_pool_name)
        key = ("tfsctl_batch", model_name)
        own = self._children.get(key)
        if own is None:
            own = self._children[key] = (self.batch_size.labels(model_name),  # type: ignore[attr-defined]
                                         self.queue_latency.labels(model_name))  # type: ignore[attr-defined]
        own[0].observe(size)  # type: ignore[index]
        for s in queue_seconds:
            own[1].observe(s)  # type: ignore[index]
            queuing.observe(int(s * 1e6))  # type: ignore[attr-defined]

    # --- tfsctl's own -----------------------------------------------------------------------------------------

    def observe_model_event(self, model_name: str, event: str, seconds: float) -> None:
        """A load/unload: ``event`` one of load, load_error, unload."""
        self.model_events.labels(model_name, event).inc()  # type: ignore[attr-defined]
        self.model_event_latency.labels(model_name, event).observe(seconds)  # type: ignore[attr-defined]

    def on_servable_state(self, event) -> None:
        """Subscriber of the Manager's state events (``manager.events.subscribe(metrics.on_servable_state)``).

        AVAILABLE counts a load, END after a failed load a load_error, END after UNLOADING an unload; each with
        the time the phase took.
        """
        from tfsctl.core.events import AVAILABLE, END, UNLOADING

        if event.state == AVAILABLE:
            self.observe_model_event(event.name, "load", event.seconds)
        elif event.state == END and event.error:
            self.observe_model_event(event.name, "load_error", event.seconds)
        elif event.state == END and event.previous == UNLOADING:
            self.observe_model_event(event.name, "unload", event.seconds)

    # --- exposition ---------------------------------------------------------------------------------------------

    def collect(self) -> Iterable:
        """The metric families to render: the ``collect`` given, else this process's registry."""
        return self._collect() if self._collect is not None else self.registry.collect()

    def render(self) -> bytes:
        """The Prometheus page: TF Serving's metrics as its exporter writes them, then tfsctl's."""
        return render_families(self.collect(), self._tf_by_family)


def render_families(families: Iterable, tf_by_family: dict[str, TfMetric] | None = None) -> bytes:
    """Render collected families: TF Serving's (by family name) in its exporter's format, sorted by TF name as its
    registry does, every other family in prometheus_client's exposition."""
    if tf_by_family is None:
        tf_by_family = {}
        for spec in TF_METRICS:
            name = spec.name
            tf_by_family[name[:-6] if spec.kind == "counter" and name.endswith("_total") else name] = spec
    tf: dict[str, object] = {}
    own: list = []
    for family in families:
        found = tf_by_family.get(family.name)
        if found is not None:
            tf[found.tf_name] = family
        else:
            own.append(family)
    lines: list[str] = []
    for spec in sorted(tf_by_family.values(), key=lambda s: s.tf_name):
        family = tf.get(spec.tf_name)
        samples = family.samples if family is not None else []  # type: ignore[attr-defined]
        if spec.kind == "counter":
            _tf_counter(spec, samples, lines)
        else:
            _tf_histogram(spec, samples, lines)
    page = "\n".join(lines) + "\n"

    class _Own:
        def collect(self) -> list:
            return own

    return page.encode() + generate_latest(_Own())  # type: ignore[arg-type]


def _tf_counter(spec: TfMetric, samples: list, lines: list[str]) -> None:
    lines.append(f"# TYPE {spec.name} counter")
    points: dict[tuple, float] = {}
    for s in samples:
        if s.name.endswith("_created"):
            continue
        key = tuple(s.labels.get(n, "") for n in spec.labels)
        points[key] = points.get(key, 0.0) + s.value
    for key, value in sorted(points.items()):
        if not spec.labels and value == 0:
            continue  # TF's label-less metrics have no cell until the first update
        labels = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(spec.labels, key, strict=True))
        lines.append(f"{spec.name}{{{labels}}} {int(value)}")


def _tf_histogram(spec: TfMetric, samples: list, lines: list[str]) -> None:
    lines.append(f"# TYPE {spec.name} histogram")
    points: dict[tuple, dict] = {}
    for s in samples:
        key = tuple(s.labels.get(n, "") for n in spec.labels)
        point = points.setdefault(key, {"buckets": {}, "sum": 0.0, "count": 0.0})
        if s.name.endswith("_bucket"):
            le = s.labels["le"]
            bound = math.inf if le == "+Inf" else math.nextafter(float(le), math.inf)
            point["buckets"][bound] = point["buckets"].get(bound, 0.0) + s.value
        elif s.name.endswith("_sum"):
            point["sum"] += s.value
        elif s.name.endswith("_count"):
            point["count"] += s.value
    for key, point in sorted(points.items()):
        count = int(point["count"])
        if not spec.labels and count == 0:
            continue
        labels = [f'{n}="{_escape(v)}"' for n, v in zip(spec.labels, key, strict=True)]
        prefix = f"{spec.name}_bucket{{{','.join(labels)}{',' if labels else ''}"
        for bound in sorted(point["buckets"]):
            le = "+Inf" if math.isinf(bound) else _tf_double(bound)
            lines.append(f'{prefix}le="{le}"}} {int(point["buckets"][bound])}')
        lines.append(f"{spec.name}_sum{{{','.join(labels)}}} {_tf_double(point['sum'])}")
        lines.append(f"{spec.name}_count{{{','.join(labels)}}} {count}")
