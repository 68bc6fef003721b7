"""OpenTelemetry traces: a span per request with decode/queue/step/encode children, joined to the caller's W3C
traceparent, exported over OTLP/HTTP to a receiver on 127.0.0.1 (written here with the opentelemetry-proto
messages); and nothing at all when tracing is off."""

from __future__ import annotations

import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from tfsctl.serving.tensors import from_numpy
from tfsctl.serving.testing import served
from tfsctl.serving.tracing import traces_endpoint
from tfsctl.testing import write_toy_model

pytest.importorskip("opentelemetry.sdk", reason="tracing needs tfsctl[tracing] (opentelemetry-sdk)")
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class _Receiver:
    """A minimal OTLP/HTTP traces receiver: POST /v1/traces with an ExportTraceServiceRequest."""

    def __init__(self) -> None:
        self.spans: list = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
                with receiver.lock:
                    for rs in request.resource_spans:
                        service = {a.key: a.value.string_value for a in rs.resource.attributes}["service.name"]
                        for ss in rs.scope_spans:
                            receiver.spans.extend((service, s) for s in ss.spans)
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_endpoint_from_flag_or_standard_variables(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert traces_endpoint() == ""  # off by default
    assert traces_endpoint("http://c:4318/") == "http://c:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")
    assert traces_endpoint() == "http://c:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x")
    assert traces_endpoint() == "http://t:1/x"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert traces_endpoint("http://c:4318") == ""


def test_spans_reach_an_otlp_receiver_joined_to_the_incoming_trace(tmp_path, monkeypatch):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "tfsctl-under-test")
    receiver = _Receiver()
    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    params = tmp_path / "batching.config"
    params.write_text("max_batch_size { value: 8 }\nbatch_timeout_micros { value: 1000 }\n")
    try:
        # stopping shuts the tracer provider down: every buffered span is exported by then
        with served(rest=True, ready_timeout=None, grace=2, model_name="toy", model_base_path=str(tmp_path / "toy"),
                    trace_otlp_endpoint=receiver.url, enable_batching=True,
                    batching_parameters_file=str(params)) as server:
            channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "toy"
            request.inputs["x"].CopyFrom(from_numpy(np.ones((2, 4), np.float32)))
            traceparent = f"00-{TRACE_ID}-{PARENT_ID}-01"
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
                request, metadata=(("traceparent", traceparent),), timeout=20)
            channel.close()
            body = json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]]}).encode()
            rest_parent = "1111111111111111"
            req = urllib.request.Request(f"http://127.0.0.1:{server.rest_port}/v1/models/toy:predict", data=body,
                                         headers={"traceparent": f"00-{TRACE_ID}-{rest_parent}-01"})
            urllib.request.urlopen(req, timeout=20).read()
    finally:
        receiver.close()
    spans = [s for service, s in receiver.spans if service == "tfsctl-under-test"]
    assert all(s.trace_id.hex() == TRACE_ID for s in spans), spans
    roots = {s.name: s for s in spans if s.name in ("Predict", "predict")}
    assert set(roots) == {"Predict", "predict"}
    assert roots["Predict"].parent_span_id.hex() == PARENT_ID and roots["predict"].parent_span_id.hex() == rest_parent
    for root in roots.values():
        children = sorted((s for s in spans if s.parent_span_id == root.span_id), key=lambda s: s.start_time_unix_nano)
        assert [c.name for c in children] == ["decode", "queue", "step", "encode"]
        assert root.start_time_unix_nano <= children[0].start_time_unix_nano
        assert children[-1].end_time_unix_nano <= root.end_time_unix_nano
        attributes = {a.key: a.value for a in root.attributes}
        assert attributes["tfsctl.model"].string_value == "toy" and attributes["tfsctl.version"].int_value == 1
    grpc_root = {a.key: a.value for a in roots["Predict"].attributes}
    assert grpc_root["tfsctl.batch_size"].int_value >= 2 and grpc_root["rpc.system"].string_value == "grpc"


def test_an_unbatched_request_has_no_queue_span(tmp_path):
    receiver = _Receiver()
    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    try:
        with served(ready_timeout=None, grace=2, model_name="toy", model_base_path=str(tmp_path / "toy"),
                    trace_otlp_endpoint=receiver.url) as server:
            channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "toy"
            request.inputs["x"].CopyFrom(from_numpy(np.ones((1, 4), np.float32)))
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=20)
            channel.close()
    finally:
        receiver.close()
    spans = [s for _, s in receiver.spans]
    [root] = [s for s in spans if s.name == "Predict"]
    assert not root.parent_span_id  # no traceparent sent: a trace of its own
    assert sorted(s.name for s in spans if s.parent_span_id == root.span_id) == ["decode", "encode", "step"]


def test_off_by_default_no_tracer_and_no_request_tagging(tmp_path, monkeypatch):
    from tfsctl.serving.profile_requests import RecentRequests

    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    write_toy_model(tmp_path / "toy", 1)
    with served(ready_timeout=None, grace=2, model_name="toy", model_base_path=str(tmp_path / "toy")) as server:
        assert server.tracer is None and not server.core.tag_requests
        # The only observer is the profiler's record of recent model requests (--enable_profiler, on by default).
        assert [type(observer.__self__) for observer in server.core.observers] == [RecentRequests]
