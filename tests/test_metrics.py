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


def test_requests_counted_by_model_and_status_with_latency_by_api_and_entrypoint():
    m = Metrics()
    m.observe_request("toy", "predict", "REST", "OK", 2000)
    m.observe_request("toy", "predict", "REST", "OK", 4000)
    m.observe_request("toy", "Predict", "GRPC", "INVALID_ARGUMENT", None)  # failures: counted, no latency
    s = _samples(m)
    ok = (("model_name", "toy"), ("status", "OK"))
    bad = (("model_name", "toy"), ("status", "INVALID_ARGUMENT"))
    # (prometheus_client's parser names a counter's sample NAME_total; the page itself has no suffix)
    assert s[(":tensorflow:serving:request_count_total", ok)] == 2
    assert s[(":tensorflow:serving:request_count_total", bad)] == 1
    lat = (("API", "predict"), ("entrypoint", "REST"), ("model_name", "toy"))
    assert s[(":tensorflow:serving:request_latency_count", lat)] == 2
    assert s[(":tensorflow:serving:request_latency_sum", lat)] == 6000
    # 2 ms and 4 ms (in microseconds) fall under TF's 6426.84 bound, not under 1983.59
    assert s[(":tensorflow:serving:request_latency_bucket", (*lat[:2], ("le", "6426.84"), *lat[2:]))] == 2
    assert s[(":tensorflow:serving:request_latency_bucket", (*lat[:2], ("le", "1983.59"), *lat[2:]))] == 0
    assert not any(k[0] == ":tensorflow:serving:request_latency_count" and ("API", "Predict") in k[1] for k in s)


def test_batches_queue_latency_and_model_events():
    m = Metrics()
    m.observe_batch("toy", 8, [0.001, 0.002, 0.0001])
    m.observe_batch("toy", 3, [0.01])
    m.observe_model_event("toy", "load", 1.5)
    m.observe_model_event("toy", "unload", 0.1)
    m.observe_model_event("toy", "load_error", 0.2)
    s = _samples(m)
    toy = (("model_name", "toy"),)
    assert s[("tfsctl_batch_size_count", toy)] == 2 and s[("tfsctl_batch_size_sum", toy)] == 11
    assert s[("tfsctl_batch_queue_latency_seconds_count", toy)] == 4
    for event in ("load", "unload", "load_error"):
        labels = (("event", event), ("model_name", "toy"))
        assert s[("tfsctl_model_events_total", labels)] == 1
        assert s[("tfsctl_model_event_seconds_count", labels)] == 1
    assert s[("tfsctl_model_event_seconds_sum", (("event", "load"), ("model_name", "toy")))] == 1.5


def test_instances_do_not_share_a_registry():
    a, b = Metrics(), Metrics()
    a.observe_request("m", "predict", "REST", "OK", 1000)
    assert (":tensorflow:serving:request_count_total", (("model_name", "m"), ("status", "OK"))) \
        not in _samples(b)
    assert a.content_type.startswith("text/plain")
