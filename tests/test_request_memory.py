"""Issue 11: a burst of rejected oversize requests leaves the server's RSS within 100 MiB of where it was.

The server runs in its own process (so the client's buffers do not count) with the toy model; each request carries
millions of small strings, either on an input the signature lacks (refused by the key check before decoding) or on
the signature's input (refused by the decode bound). RSS is read from /proc/PID/statm.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2

from tfsctl.core.memory import rss_bytes
from tfsctl.serving.tensors import from_numpy
from tfsctl.testing import wait_until, write_toy_model

MIB = 1024 * 1024
SERVER = textwrap.dedent("""
    import sys
    from tfsctl.serving.server import ModelServer, ServerOptions
    s = ModelServer(ServerOptions(port=0, rest_api_port=0, host="127.0.0.1", model_name="toy",
                                  model_base_path=sys.argv[1]))
    s.start()
    print(s.grpc_port, flush=True)
    sys.stdin.read()  # until the test closes stdin
    s.stop(1)
""")
PREDICT = "/tensorflow.serving.PredictionService/Predict"


def _oversize(key: str, count: int) -> bytes:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = "toy"
    req.inputs["x"].CopyFrom(from_numpy(np.ones((1, 4), np.float32)))
    t = req.inputs[key]
    t.dtype = types_pb2.DT_STRING
    t.tensor_shape.dim.add().size = count
    t.string_val.extend([b"ab"] * count)
    return req.SerializeToString()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_rejected_oversize_requests_give_memory_back(tmp_path):
    write_toy_model(tmp_path / "toy", 1)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p),
               TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(tmp_path / "toy")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        port = int(proc.stdout.readline())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", -1)])
        call = channel.unary_unary(PREDICT)  # raw bytes both ways: the client builds each message once
        good = predict_pb2.PredictRequest()
        good.model_spec.name = "toy"
        good.inputs["x"].CopyFrom(from_numpy(np.ones((1, 4), np.float32)))
        good_bytes = good.SerializeToString()
        def answered() -> bool:
            try:
                call(good_bytes, timeout=5)
                return True
            except grpc.RpcError:
                return False

        wait_until(answered, 60, "the server to serve the toy model", every=0.1)
        for _ in range(20):
            call(good_bytes, timeout=5)
        start = rss_bytes(proc.pid)
        bodies = [_oversize("z", 3_000_000), _oversize("x", 3_000_000)]  # ~12 MB each, ~3M strings

        def send(i: int) -> grpc.StatusCode:
            try:
                call(bodies[i % 2], timeout=60)
            except grpc.RpcError as e:
                return e.code()
            return grpc.StatusCode.OK

        with ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(send, range(8)))
        assert set(codes) == {grpc.StatusCode.INVALID_ARGUMENT}, codes
        call(good_bytes, timeout=5)  # still serving
        wait_until(lambda: rss_bytes(proc.pid) - start <= 100 * MIB, 20,  # the trimmer runs shortly after the burst
                   f"RSS back under start {start / MIB:.0f} MiB + 100 MiB", every=0.2,
                   explain=lambda: f"RSS {rss_bytes(proc.pid) / MIB:.0f} MiB")
        channel.close()
    finally:
        proc.stdin.close()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
