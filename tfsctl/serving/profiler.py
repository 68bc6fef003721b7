"""TF Serving's ProfilerService on the model server's own gRPC port (``--enable_profiler``, on by default).

The three RPCs of ``tensorflow.ProfilerService`` are served in this process, as TensorFlow's profiler service does
(``tsl/profiler/rpc/profiler_service_impl.cc``): Profile runs one TensorFlow ProfilerSession (the same C++ tracers)
for ``duration_ms`` or until Terminate names its session, writes the XSpace to
``<repository_root>/<session_id>/<host_name>.xplane.pb`` (where ``profiler_client.trace`` and TensorBoard's capture
read it) and answers ``empty_trace`` when no event was recorded; Monitor is UNIMPLEMENTED there and here. In its
host plane, beside TensorFlow's threads, the trace holds the server's own record of the model requests inside the
window the client asked for (:mod:`tfsctl.serving.profile_requests`, which says why): a request that ran between
the client's ``start_timestamp_ns`` and the session's start is in the trace too.

Why not relay to TensorFlow's own profiler server: that server listens on a port of its own (all interfaces), and
the hop to it delays the session's start by a millisecond or more, long enough to miss a request sent together with
the Profile call (TF Serving's ``test_profiler_service_with_valid_trace_request`` sends exactly one). Here the
handlers run on the gRPC server's event loop: the session starts as soon as the handler runs (grpc.aio reaches it
2-5 ms after a new connection's call arrives), and ends when its client goes away.

TensorFlow's Python package ships no classes for these messages, so the few fields used are declared here, with
the numbers of ``profiler_service.proto``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError

from tfsctl.serving import xspace_wire
from tfsctl.serving.profile_requests import RecentRequests, add_requests, window_start
from tfsctl.serving.request_record import RequestRecord

log = logging.getLogger(__name__)

SERVICE = "tensorflow.ProfilerService"
METHODS = ("Profile", "Terminate", "Monitor")
_MAX_DELAY_S = 60.0  # longest wait for a start_timestamp_ns in the future
_MAX_STOP_SIGNALS = 256


def _message_classes() -> dict[str, Any]:
    """ProfileRequest / ProfileResponse / TerminateRequest / TerminateResponse, wire-compatible subsets."""
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="tfsctl/profiler_service_subset.proto", package="tensorflow",
                                              syntax="proto3")
    fields = {
        "ProfileRequest": [("duration_ms", 1, f.TYPE_UINT64), ("opts", 4, f.TYPE_BYTES),  # ProfileOptions
                           ("repository_root", 5, f.TYPE_STRING), ("session_id", 6, f.TYPE_STRING),
                           ("host_name", 7, f.TYPE_STRING)],
        "ProfileResponse": [("empty_trace", 7, f.TYPE_BOOL)],
        "TerminateRequest": [("session_id", 1, f.TYPE_STRING)],
        "TerminateResponse": [],
    }
    for name, declared in fields.items():
        message = file.message_type.add(name=name)
        for field_name, number, kind in declared:
            message.field.add(name=field_name, number=number, type=kind, label=f.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()  # private: never clashes with a registration elsewhere
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.{name}"))
            for name in fields}


class ProfilerService:
    """Profile / Terminate / Monitor, one profiling session at a time (TensorFlow's profiler allows one).

    The handlers are coroutines on the gRPC server's event loop: a Profile starts its session without a hand-over
    to a thread, and a client that cancels (or whose deadline passes) ends the session at once, as TensorFlow's
    service does on ``IsCancelled``, instead of holding the profiler for the whole duration."""

    def __init__(self, recent: RecentRequests | None = None) -> None:
        self._messages = _message_classes()
        self._recent = recent  # the server's recent model requests (None: TensorFlow's events only)
        self._stops: dict[str, asyncio.Event] = {}  # Terminate may arrive before or during its Profile

    def _stop_event(self, session_id: str) -> asyncio.Event:
        return self._stops.setdefault(session_id, asyncio.Event())

    async def profile(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        from tensorflow.python.profiler.internal import _pywrap_profiler
        from tensorflow.tsl.profiler.protobuf import profiler_options_pb2

        try:
            request = self._messages["ProfileRequest"].FromString(raw)
            opts = profiler_options_pb2.ProfileOptions.FromString(request.opts)
        except DecodeError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot parse the ProfileRequest: {e}")
        if not request.repository_root or not request.session_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "ProfileRequest needs repository_root and "
                                                                  "session_id (the directory the trace is written to)")
        stop = self._stop_event(request.session_id)
        try:
            delay = opts.start_timestamp_ns / 1e9 - time.time() if opts.start_timestamp_ns else 0.0
            # Terminated before it started: an empty trace, as a session that recorded nothing.
            terminated = delay > 0 and await _wait(stop, min(delay, _MAX_DELAY_S))
            levels = {"host_tracer_level": 2, "device_tracer_level": 1, "python_tracer_level": 0}  # version 0
            if opts.version:
                levels = {name: getattr(opts, name) for name in levels}
            run_dir = Path(request.repository_root) / request.session_id
            scratch = run_dir / f".tfsctl-{uuid.uuid4().hex}"  # TensorFlow writes the XSpace here; same file system
            session = _pywrap_profiler.ProfilerSession()
            try:
                session.start(str(scratch), levels)
            except Exception as e:  # noqa: BLE001 - e.g. another session is running; TF's service: INTERNAL
                await context.abort(grpc.StatusCode.INTERNAL, str(e) or type(e).__name__)
            try:
                if not terminated:
                    await _wait(stop, request.duration_ms / 1000.0)  # a cancelled RPC raises CancelledError here
                exporting, session = session, None  # _export stops it
                xspace = await asyncio.get_running_loop().run_in_executor(
                    None, _export, exporting, scratch, run_dir / f"{request.host_name}.xplane.pb".replace(":", "_"),
                    lambda data: self._with_requests(data, opts.start_timestamp_ns))
            except OSError as e:
                await context.abort(grpc.StatusCode.INTERNAL, f"cannot write the trace under {run_dir}: {e}")
            finally:
                if session is not None:
                    session.stop()
                shutil.rmtree(scratch, ignore_errors=True)
        finally:
            self._stops.pop(request.session_id, None)
        return self._messages["ProfileResponse"](empty_trace=not xspace_wire.has_events(xspace)).SerializeToString()

    def _with_requests(self, xspace: bytes, requested_start_ns: int) -> bytes:
        """``xspace`` with the model requests inside the window as lines of its host plane (when there are any)."""
        if self._recent is None:
            return xspace
        times = xspace_wire.session_times(xspace)
        if times is None:  # not written by this TensorFlow: its planes' origin is unknown, leave them alone
            return xspace
        start_ns, stop_ns = times
        requests = self._recent.between(window_start(requested_start_ns, start_ns), stop_ns)
        if not requests:
            return xspace
        try:
            return add_requests(xspace, requests, start_ns)
        except Exception:  # noqa: BLE001 - TensorFlow's trace is still good: never lose it for the server's lines
            log.exception("cannot add the server's requests to the trace; TensorFlow's events only")
            return xspace

    async def terminate(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            request = self._messages["TerminateRequest"].FromString(raw)
        except DecodeError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot parse the TerminateRequest: {e}")
        # Stop signals for sessions not (yet) running are bounded: the oldest go first.
        while len(self._stops) >= _MAX_STOP_SIGNALS and request.session_id not in self._stops:
            self._stops.pop(next(iter(self._stops)))
        self._stop_event(request.session_id).set()
        return self._messages["TerminateResponse"]().SerializeToString()

    async def monitor(self, raw: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "unimplemented.")  # as TensorFlow's profiler service
        return b""


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """True if ``event`` is set within ``seconds``."""
    try:
        await asyncio.wait_for(event.wait(), max(0.0, seconds))
    except TimeoutError:
        return False
    return True


def _export(session: Any, scratch: Path, target: Path, complete: Callable[[bytes], bytes]) -> bytes:
    """Stop ``session``, write the XSpace TensorFlow wrote under ``scratch``, as ``complete`` returns it, to
    ``target``; its bytes. (TensorFlow writes ``scratch/plugins/profile/<time>/<host>.xplane.pb``.)"""
    try:
        session.export_to_tb()
    except Exception as e:  # noqa: BLE001 - TF's own error types
        raise OSError(str(e)) from None
    written = list(scratch.rglob("*.xplane.pb"))
    if len(written) != 1:
        raise OSError(f"TensorFlow wrote {len(written)} trace files")
    data = complete(written[0].read_bytes())
    written[0].write_bytes(data)  # still in the scratch directory: the target appears whole or not at all
    os.replace(written[0], target)
    return data


def add_profiler_service(server: grpc.Server, observers: list[Callable[[RequestRecord], None]] | None = None
                         ) -> None:
    """Register ``tensorflow.ProfilerService`` (Profile, Terminate, Monitor) on ``server``; with ``observers``
    (the request core's), the traces also hold the server's model requests."""
    recent = None
    if observers is not None:
        recent = RecentRequests()
        observers.append(recent.observe)
    service = ProfilerService(recent)
    calls = {"Profile": service.profile, "Terminate": service.terminate, "Monitor": service.monitor}
    handlers = {method: grpc.unary_unary_rpc_method_handler(calls[method]) for method in METHODS}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
