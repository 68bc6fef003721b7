"""A real ModelServer for tests: built from keyword options, started, ready, and always stopped.

Lives in ``serving/`` because it builds the server (``tfsctl.testing``, on the model side, may not import it).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tfsctl.serving.server import ModelServer, ServerOptions


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def served(*, rest: bool = False, ready_timeout: float | None = 120.0, grace: float = 5.0,
           **options: Any) -> Iterator[ModelServer]:
    """``ModelServer(ServerOptions(**options))`` on 127.0.0.1 with OS-chosen ports, started and (unless
    ``ready_timeout`` is None) ready, stopped with ``grace`` on exit whatever happens.

    gRPC binds port 0 (``server.grpc_port``); ``rest=True`` also opens REST on a port the OS just handed out
    (``server.rest_port``), since a REST port of 0 means "off" as in TF Serving.
    """
    options.setdefault("host", "127.0.0.1")
    options.setdefault("port", 0)
    if rest:
        options.setdefault("rest_api_port", _free_port())
    server = ModelServer(ServerOptions(**options))
    try:
        server.start()
        if ready_timeout is not None:
            assert server.wait_until_ready(ready_timeout), f"models not AVAILABLE within {ready_timeout:g} s"
        yield server
    finally:
        server.stop(grace)
