"""TF Serving's ProfilerService on the model server's own gRPC port (``--enable_profiler``, on by default).

TensorFlow's profiler server lives in C++ and only listens on a port of its own, so the three RPCs of
``tensorflow.ProfilerService`` are relayed, as opaque bytes, to one started in this process on the first profiling
request: servers nobody profiles never open that port, and clients (``profiler_client.trace``, TensorBoard's
capture) talk to the address they already use.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import grpc

SERVICE = "tensorflow.ProfilerService"
METHODS = ("Profile", "Terminate", "Monitor")


class _Relay:
    """Starts TensorFlow's profiler server once, on a free loopback-chosen port, and forwards calls to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channel: grpc.Channel | None = None

    def _target(self) -> grpc.Channel:
        with self._lock:
            if self._channel is None:
                from tensorflow.python.profiler import profiler_v2

                with socket.socket() as probe:  # a free port for the profiler's own listener
                    probe.bind(("127.0.0.1", 0))
                    port = probe.getsockname()[1]
                profiler_v2.start_server(port)
                self._channel = grpc.insecure_channel(f"127.0.0.1:{port}")
            return self._channel

    def handler(self, method: str) -> grpc.RpcMethodHandler:
        def call(request: bytes, context: grpc.ServicerContext) -> Any:
            stub = self._target().unary_unary(f"/{SERVICE}/{method}")  # bytes in, bytes out
            timeout = context.time_remaining()
            try:
                return stub(request, timeout=timeout)
            except grpc.RpcError as e:
                context.abort(e.code(), e.details() or "profiler call failed")

        return grpc.unary_unary_rpc_method_handler(call)


def add_profiler_service(server: grpc.Server) -> None:
    """Register ``tensorflow.ProfilerService`` (Profile, Terminate, Monitor) on ``server``."""
    relay = _Relay()
    handlers = {method: relay.handler(method) for method in METHODS}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
