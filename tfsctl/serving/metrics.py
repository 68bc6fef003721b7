"""Prometheus metrics for the server, in a registry of their own (exposed on the REST port).

Names follow TF Serving's ``:tensorflow:serving:*`` metrics in spirit, written in Prometheus' own style.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """All server metrics; the front ends and batcher report into one instance, the manager's events feed it."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.request_count = Counter(
            "tfserving_request_count", "Requests by model, API and status code.",
            ["model_name", "api", "status"], registry=self.registry,
        )
        self.request_latency = Histogram(
            "tfserving_request_latency_seconds", "End-to-end request latency by model and API.",
            ["model_name", "api"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "tfserving_batch_size", "Size of batches processed by the batcher (after padding).",
            ["model_name"], buckets=_BATCH_BUCKETS, registry=self.registry,
        )
        self.queue_latency = Histogram(
            "tfserving_batch_queue_latency_seconds", "Time a request waited in the batch queue.",
            ["model_name"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.model_events = Counter(
            "tfserving_model_events", "Servable load/unload events by outcome.",
            ["model_name", "event"], registry=self.registry,
        )
        self.model_event_latency = Histogram(
            "tfserving_model_event_seconds", "Time taken to load or unload a servable version.",
            ["model_name", "event"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, str], tuple] = {}
        self._batch_children: dict[str, tuple] = {}

    def observe_request(self, model_name: str, api: str, status: str, seconds: float) -> None:
        """One finished request; ``api`` e.g. "grpc_predict" / "rest_predict", ``status`` a gRPC code name.

        The labelled children are cached: prometheus_client's ``labels()`` lookup costs more than the update, on
        every request. The labels are bounded (configured model names or "<unknown>", APIs, status codes).
        """
        key = (model_name, api, status)
        children = self._request_children.get(key)
        if children is None:
            children = (self.request_count.labels(model_name, api, status),
                        self.request_latency.labels(model_name, api))
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, model_name: str, size: int, queue_seconds: list[float]) -> None:
        """One executed batch and the queue wait of each request in it (labelled children cached, as above)."""
        children = self._batch_children.get(model_name)
        if children is None:
            children = self._batch_children[model_name] = (self.batch_size.labels(model_name),
                                                           self.queue_latency.labels(model_name))
        children[0].observe(size)
        for s in queue_seconds:
            children[1].observe(s)

    def observe_model_event(self, model_name: str, event: str, seconds: float) -> None:
        """A load/unload: ``event`` one of load, load_error, unload."""
        self.model_events.labels(model_name, event).inc()
        self.model_event_latency.labels(model_name, event).observe(seconds)

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

    def render(self) -> bytes:
        """Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
