"""TF Serving's ProfilerService on the model server's gRPC port: a real trace through TF's profiler client."""

from __future__ import annotations

import os
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from tfsctl.serving.testing import served  # noqa: E402
from tfsctl.tensors import from_numpy  # noqa: E402
from tfsctl.testing import wait_until, write_toy_model  # noqa: E402


def _serve(tmp_path, **flags):  # noqa: ANN202 - served(): a context manager yielding a ModelServer
    write_toy_model(tmp_path / "toy", 1)
    return served(ready_timeout=None, grace=2, model_name="toy", model_base_path=str(tmp_path / "toy"), **flags)


def test_a_trace_through_the_model_servers_own_port(tmp_path):
    """profiler_client.trace against the gRPC port (as TF Serving's own test does) writes a trace of the
    Predict calls running meanwhile."""
    from tensorflow.python.profiler import profiler_client

    with _serve(tmp_path) as server:
        stop = threading.Event()

        def load() -> None:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "toy"
            request.inputs["x"].CopyFrom(from_numpy(np.ones((1, 4), np.float32)))
            with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
                stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
                for _ in range(2000):  # bounded; stops early once the trace is taken
                    if stop.is_set():
                        return
                    stub.Predict(request, timeout=10)

        traffic = threading.Thread(target=load)
        traffic.start()
        try:
            logdir = tmp_path / "logs"
            profiler_client.trace(f"127.0.0.1:{server.grpc_port}", str(logdir), 500, "", 5)
            traces = [p for p in logdir.rglob("*") if p.is_file() and p.stat().st_size > 0]
            assert traces, "the profiler wrote nothing"
        finally:
            stop.set()
            traffic.join(30)


def test_enable_profiler_false_leaves_the_service_out(tmp_path):
    with _serve(tmp_path, enable_profiler=False) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            call = channel.unary_unary("/tensorflow.ProfilerService/Profile")
            with pytest.raises(grpc.RpcError) as info:
                call(b"", timeout=10)
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def _messages():
    from tfsctl.serving.profiler import _message_classes

    return _message_classes()


def _listening_sockets() -> set[str]:
    """Inodes of this process's listening TCP sockets (state 0A in /proc/net/tcp{,6})."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                cols = row.split()
                if cols[3] == "0A":
                    listening.add(cols[9])
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    return mine & listening


def test_the_trace_opens_no_port_of_its_own_and_terminate_ends_it(tmp_path):
    """Profile runs in the server (no relay to a profiler server on another port); Terminate with its session id
    ends a long Profile at once, and the XSpace lands where TensorBoard looks for it."""
    with _serve(tmp_path) as server:
        messages = _messages()
        before = _listening_sockets()
        request = messages["ProfileRequest"](duration_ms=600_000, repository_root=str(tmp_path / "repo"),
                                             session_id="run1", host_name="127.0.0.1:1234")
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            profile = channel.unary_unary("/tensorflow.ProfilerService/Profile")
            terminate = channel.unary_unary("/tensorflow.ProfilerService/Terminate")
            future = profile.future(request.SerializeToString(), timeout=120)
            # Terminate before the session starts also counts (TF's service keeps the signal): either way it ends.
            terminate(messages["TerminateRequest"](session_id="run1").SerializeToString(), timeout=10)
            reply = messages["ProfileResponse"].FromString(future.result(timeout=60))
        assert reply.empty_trace  # nothing ran meanwhile
        assert (tmp_path / "repo" / "run1" / "127.0.0.1_1234.xplane.pb").stat().st_size > 0
        assert [p.name for p in (tmp_path / "repo" / "run1").iterdir()] == ["127.0.0.1_1234.xplane.pb"]
        assert _listening_sockets() == before


def test_bad_profiler_requests_get_clear_codes(tmp_path):
    with _serve(tmp_path) as server:
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            for method, payload, code in (
                ("Profile", _messages()["ProfileRequest"](duration_ms=10).SerializeToString(),
                 grpc.StatusCode.INVALID_ARGUMENT),  # no repository_root / session_id: nowhere to write
                ("Profile", b"\xff\xff\xff", grpc.StatusCode.INVALID_ARGUMENT),
                ("Terminate", b"\x0a\xff", grpc.StatusCode.INVALID_ARGUMENT),
                ("Monitor", b"", grpc.StatusCode.UNIMPLEMENTED),  # as TensorFlow's profiler service
            ):
                with pytest.raises(grpc.RpcError) as info:
                    channel.unary_unary(f"/tensorflow.ProfilerService/{method}")(payload, timeout=30)
                assert info.value.code() == code, (method, info.value.details())


def test_a_profile_whose_client_gives_up_frees_the_profiler(tmp_path):
    """TensorFlow allows one profiling session per process: a Profile whose deadline passes ends its session at
    once (TF's service checks IsCancelled), so the next one can start instead of waiting out the first's duration."""
    with _serve(tmp_path) as server:
        messages = _messages()
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            profile = channel.unary_unary("/tensorflow.ProfilerService/Profile")
            long = messages["ProfileRequest"](duration_ms=600_000, repository_root=str(tmp_path / "repo"),
                                              session_id="long", host_name="h")
            with pytest.raises(grpc.RpcError) as info:
                profile(long.SerializeToString(), timeout=1)
            assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            short = messages["ProfileRequest"](duration_ms=100, repository_root=str(tmp_path / "repo"),
                                               session_id="short", host_name="h")
            def profiled() -> bool:
                try:
                    profile(short.SerializeToString(), timeout=30)
                    return True
                except grpc.RpcError as e:
                    assert e.code() == grpc.StatusCode.INTERNAL and "session" in (e.details() or ""), e
                    return False

            # the cancellation reaches the server's handler asynchronously
            wait_until(profiled, 30, "the abandoned session to free the profiler", every=0.1)
        assert (tmp_path / "repo" / "short" / "h.xplane.pb").is_file()
        assert not (tmp_path / "repo" / "long").exists() or not any((tmp_path / "repo" / "long").iterdir())


def _profile_options(asked_ns: int, duration_ms: int) -> bytes:
    """ProfileOptions as TensorFlow's profiler client sends them (version 1, the start time it asks for)."""
    from tensorflow.tsl.profiler.protobuf import profiler_options_pb2

    return profiler_options_pb2.ProfileOptions(version=1, host_tracer_level=2, device_tracer_level=1,
                                               start_timestamp_ns=asked_ns, duration_ms=duration_ms).SerializeToString()


def _profile(channel: grpc.Channel, root, session_id: str, *, asked_ns: int = 0, duration_ms: int = 100):  # noqa: ANN001, ANN202
    """One Profile call as TensorFlow's profiler client makes it (ProfileOptions version 1, its start time)."""
    messages = _messages()
    request = messages["ProfileRequest"](duration_ms=duration_ms, opts=_profile_options(asked_ns, duration_ms),
                                         repository_root=str(root), session_id=session_id, host_name="h")
    raw = channel.unary_unary("/tensorflow.ProfilerService/Profile")(request.SerializeToString(), timeout=60)
    return messages["ProfileResponse"].FromString(raw), (root / session_id / "h.xplane.pb").read_bytes()


def _request_lines(xspace: bytes):  # noqa: ANN202 - (the server's request lines, the host plane's metadata)
    """The host plane's "tfsctl ..." lines. The plane is read field by field (each field is an XPlane on its
    own), skipping those of TensorFlow's tracers that Python's protobuf cannot read (non-UTF-8 names)."""
    from google.protobuf.message import DecodeError
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from tfsctl.serving import xspace_wire
    from tfsctl.serving.profile_requests import LINE_PREFIX

    host = xplane_pb2.XPlane()
    planes = [p for p in xspace_wire.submessages(xspace, 1)
              if xspace_wire.plane_name(p) == xspace_wire.HOST_PLANE.encode()]
    assert len(planes) == 1, "one host plane"
    for *_, raw in xspace_wire.fields(planes[0]):
        try:
            host.MergeFrom(xplane_pb2.XPlane.FromString(raw))
        except DecodeError:
            continue
    return [line for line in host.lines if line.name.startswith(LINE_PREFIX)], host


def test_a_request_that_finished_before_the_session_started_but_inside_the_asked_window_is_traced(tmp_path):
    """TF Serving's test_profiler_service_with_valid_trace_request where /bin/sh is dash: one REST request is sent
    together with the Profile call, and a warm server finishes it before its session starts. The client stamps the
    window it asks for (start_timestamp_ns): the request ran inside it, so the trace holds it and is not empty.
    Here the request deterministically finishes before the Profile call is even sent."""
    import json
    import urllib.request

    with _serve(tmp_path, rest=True) as server:
        url = f"http://127.0.0.1:{server.rest_port}/v1/models/toy:predict"
        body = json.dumps({"instances": [[1.0, 2.0, 3.0, 4.0]]}).encode()

        def predict() -> None:
            with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=30) as reply:
                assert reply.status == 200

        predict()  # warm
        with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            asked_ns = time.time_ns()
            predict()  # over before the Profile call leaves
            reply, xspace = _profile(channel, tmp_path / "repo", "run1", asked_ns=asked_ns)
            assert not reply.empty_trace
            lines, host = _request_lines(xspace)
            assert [line.name for line in lines] == ["tfsctl REST requests"]
            events = [(host.event_metadata[e.metadata_id].name, lines[0].timestamp_ns * 1000 + e.offset_ps)
                      for e in lines[0].events]
            assert [name for name, _ in events] == ["REST predict", "model step"]
            assert all(ps < 0 for _, ps in events)  # before the session started: negative, as TF's origin
            stats = {host.stat_metadata[s.metadata_id].name: s.str_value or s.int64_value
                     for s in lines[0].events[0].stats}
            assert stats == {"model": "toy", "version": 1, "signature": "serving_default", "code": "OK"}

            # A window the client asked for after the request ran holds nothing: empty, as TF Serving's idle trace
            # (TensorFlow's own profiler service answers empty_trace for an idle process too).
            reply, xspace = _profile(channel, tmp_path / "repo", "run2", asked_ns=time.time_ns())
            assert reply.empty_trace
            assert _request_lines(xspace)[0] == []

            # One before the session and one while it runs (ended by Terminate once it answered): both are lines of
            # the host plane beside TensorFlow's own threads, and TensorFlow's trace viewer conversion shows them.
            from tensorflow.python.profiler.internal import _pywrap_profiler_plugin

            asked_ns = time.time_ns()
            predict()
            opts = _profile_options(asked_ns, 600_000)
            request = _messages()["ProfileRequest"](duration_ms=600_000, opts=opts, session_id="run3", host_name="h",
                                                    repository_root=str(tmp_path / "repo"))
            future = channel.unary_unary("/tensorflow.ProfilerService/Profile").future(request.SerializeToString(),
                                                                                       timeout=120)
            predict()
            channel.unary_unary("/tensorflow.ProfilerService/Terminate")(
                _messages()["TerminateRequest"](session_id="run3").SerializeToString(), timeout=10)
            assert not _messages()["ProfileResponse"].FromString(future.result(timeout=60)).empty_trace
            path = tmp_path / "repo" / "run3" / "h.xplane.pb"
            lines, host = _request_lines(path.read_bytes())
            names = [host.event_metadata[e.metadata_id].name for e in lines[0].events]
            assert names == ["REST predict", "model step"] * 2
            viewer, ok = _pywrap_profiler_plugin.xspace_to_tools_data([str(path)], "trace_viewer", {})
            assert ok and b"tfsctl REST requests" in viewer and b"REST predict" in viewer


def test_the_asked_window_reaches_back_at_most_a_second_and_the_merge_keeps_tensorflows_planes():
    """A start_timestamp_ns long past (a client's clock far off) reaches back 1 s, no more; none, or one after the
    session's start, is the session's start. The requests' lines join the host plane; every other plane and field
    of TensorFlow's XSpace stays byte for byte (the host plane is made when TensorFlow wrote none)."""
    from tfsctl.serving import xspace_wire
    from tfsctl.serving.profile_requests import MAX_LOOKBACK_NS, ModelRequest, add_requests, window_start

    session = 100 * MAX_LOOKBACK_NS
    assert window_start(session - 5_000_000, session) == session - 5_000_000
    assert window_start(session - 10 * MAX_LOOKBACK_NS, session) == session - MAX_LOOKBACK_NS
    assert window_start(0, session) == session
    assert window_start(session + 7, session) == session

    other = xspace_wire.length_delimited(1, xspace_wire.length_delimited(2, b"Task Environment") + b"\x30\x01")
    thread_lines = [b"\x08\x07" + xspace_wire.length_delimited(2, b"\xff\xfe thread"),  # named as C++ may name it
                    b"\x08" + xspace_wire.varint_bytes((1 << 64) - 5),  # an int64 id below 0: a 10-byte varint
                    b"\x08\x01"]
    non_utf8 = xspace_wire.length_delimited(2, b"/host:CPU") + b"".join(
        xspace_wire.length_delimited(3, line) for line in thread_lines)
    xspace = other + xspace_wire.length_delimited(1, non_utf8) + b"\x12\x02vm"  # hostnames: "vm"
    request = ModelRequest("GRPC", "Predict", "toy", 3, "serving_default", "OK", session - 900, session - 800,
                           session - 700, session - 600)
    merged = add_requests(xspace, [request], session)
    assert merged.startswith(other) and merged.endswith(b"\x12\x02vm")
    host = xspace_wire.submessages(merged, 1)[1]
    assert host.startswith(non_utf8)  # TensorFlow's bytes first, untouched
    assert xspace_wire.has_events(merged) and not xspace_wire.has_events(xspace)
    assert xspace_wire.host_plane_ids(merged)[0] == {7, -5, 1, 2}  # the new line's id is one TensorFlow left free

    no_host = add_requests(other, [request], session)
    assert [xspace_wire.plane_name(p) for p in xspace_wire.submessages(no_host, 1)] == [b"Task Environment",
                                                                                         b"/host:CPU"]
