"""Metrics: every observation shows up, with its labels, in valid Prometheus text exposition."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tfsctl.serving.metrics import Metrics


def _samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    """Parse render() output back (proves the text is valid exposition) into {(sample name, labels): value}."""
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_requests_counted_by_model_api_status_with_latency():
    m = Metrics()
    m.observe_request("toy", "rest_predict", "OK", 0.002)
    m.observe_request("toy", "rest_predict", "OK", 0.004)
    m.observe_request("toy", "grpc_predict", "INVALID_ARGUMENT", 0.001)
    s = _samples(m)
    ok = (("api", "rest_predict"), ("model_name", "toy"), ("status", "OK"))
    bad = (("api", "grpc_predict"), ("model_name", "toy"), ("status", "INVALID_ARGUMENT"))
    assert s[("tfserving_request_count_total", ok)] == 2
    assert s[("tfserving_request_count_total", bad)] == 1
    lat = (("api", "rest_predict"), ("model_name", "toy"))
    assert s[("tfserving_request_latency_seconds_count", lat)] == 2
    assert abs(s[("tfserving_request_latency_seconds_sum", lat)] - 0.006) < 1e-9
    # 2 ms and 4 ms fall in the 5 ms bucket, not in the 1 ms one.
    assert s[("tfserving_request_latency_seconds_bucket", (*lat[:1], ("le", "0.005"), *lat[1:]))] == 2
    assert s[("tfserving_request_latency_seconds_bucket", (*lat[:1], ("le", "0.001"), *lat[1:]))] == 0


def test_batches_queue_latency_and_model_events():
    m = Metrics()
    m.observe_batch("toy", 8, [0.001, 0.002, 0.0001])
    m.observe_batch("toy", 3, [0.01])
    m.observe_model_event("toy", "load", 1.5)
    m.observe_model_event("toy", "unload", 0.1)
    m.observe_model_event("toy", "load_error", 0.2)
    s = _samples(m)
    toy = (("model_name", "toy"),)
    assert s[("tfserving_batch_size_count", toy)] == 2 and s[("tfserving_batch_size_sum", toy)] == 11
    assert s[("tfserving_batch_queue_latency_seconds_count", toy)] == 4
    for event in ("load", "unload", "load_error"):
        labels = (("event", event), ("model_name", "toy"))
        assert s[("tfserving_model_events_total", labels)] == 1
        assert s[("tfserving_model_event_seconds_count", labels)] == 1
    assert s[("tfserving_model_event_seconds_sum", (("event", "load"), ("model_name", "toy")))] == 1.5


def test_instances_do_not_share_a_registry():
    a, b = Metrics(), Metrics()
    a.observe_request("m", "rest_predict", "OK", 0.001)
    assert ("tfserving_request_count_total", (("api", "rest_predict"), ("model_name", "m"), ("status", "OK"))) \
        not in _samples(b)
    assert a.content_type.startswith("text/plain")
