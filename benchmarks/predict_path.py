"""Where a quick gRPC Predict's time goes inside tfsctl, layer by layer, and why a server pays several times that.

1. **Layers.** The toy model (``x`` float [1, 4] -> ``y``) in an in-process ModelServer, no network: the event
   loop's Predict coroutine driven to completion (with the request's parse and the reply's serialization, as gRPC
   does them), then each layer under it down to the session callable. Beside them, the handler of
   ``overhead_bench.py``'s ``bare-aio-tf`` floor: parse, decode, ``Servable.run``, encode and nothing else.
   Microseconds per call, cumulative (each layer includes the ones under it); the minimum over interleaved rounds,
   since this machine's speed drifts.
2. **Between other work.** The same pieces timed alone, once back to back and once with other work run between
   calls (about 100 µs that walks 10,000 objects, standing in for gRPC's machinery and other requests, which a
   server runs between two Predicts). The ratio is what cold CPU caches cost the same code in a server.

Usage: ``python benchmarks/predict_path.py [--rounds 40] [--out FILE]``. Prints a table; writes
``results/predict_path.json``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _drive(coro) -> object:
    """Run a coroutine that never suspends (a quick Predict) to its result without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the Predict suspended: it was not run as a quick request")


def _floor_handler() -> Callable[[object, bytes], bytes]:
    """``overhead_bench.step_only_reply``: the handler its ``bare-aio-tf`` floor serves with, loaded from the file
    beside this one (the benchmarks are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location("overhead_bench", Path(__file__).with_name("overhead_bench.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.step_only_reply


def layers(server, servicer, raw: bytes) -> dict[str, Callable[[], object]]:
    """Each layer of a quick Predict as a zero-argument call, outermost first, plus the bare floor's handler."""
    from tensorflow_serving.apis import predict_pb2

    from tfsctl.core import inference
    from tfsctl.tensors import to_numpy

    core = server.core
    request = predict_pb2.PredictRequest.FromString(raw)
    servable = server.manager.peek("toy")
    spec = servable.signature("")
    x = to_numpy(request.inputs["x"], "x")
    callable_ = servable._runner(spec, ()).fn

    class _Context:  # a call without a deadline: what the servicer asks of grpc's context on the quick route
        @staticmethod
        def time_remaining() -> None:
            return None

    context = _Context()

    def predict_rpc() -> bytes:
        reply = _drive(servicer.Predict(predict_pb2.PredictRequest.FromString(raw), context))
        return reply.SerializeToString()

    def held_run_predict() -> object:
        with core._handle(request.model_spec) as held:
            return inference.run_predict(held, request)

    step_only_reply = _floor_handler()

    return {
        "Predict RPC body (parse, coroutine, serialize)": predict_rpc,
        "  _outcome: drain gate, metrics, errors": lambda: servicer._outcome(
            "Predict", "toy", functools.partial(servicer._predict, request, only_if_quick=True)),
        "  _predict: core call, reply encoding": lambda: servicer._predict(request, only_if_quick=True),
        "  RequestCore.predict_request": lambda: core.predict_request(request, only_if_quick=True),
        "  handle + inference.run_predict": held_run_predict,
        "  Servable.run (checks, runner)": lambda: servable.run("", {"x": x}),
        "  session callable (TF step)": lambda: callable_(x),
        "bare-aio-tf handler (parse, decode, run, encode)": lambda: step_only_reply(servable, raw),
    }


def best_per_call_us(calls: dict[str, Callable[[], object]], rounds: int, per_round: int = 300) -> dict[str, float]:
    """Minimum over ``rounds`` interleaved rounds of ``per_round`` calls each, in µs per call."""
    for fn in calls.values():
        for _ in range(per_round):
            fn()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(rounds):
        for name, fn in calls.items():
            start = time.perf_counter()
            for _ in range(per_round):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / per_round * 1e6)
    return best


_OTHER = {f"k{i}": list(range(50)) for i in range(200)}


def _other_work() -> int:
    """About 100 µs that walks some 10,000 objects and writes 40 KB: it evicts what the next call had in the CPU's
    caches, as gRPC's machinery and other requests do between two Predicts in a server."""
    return len(json.dumps(_OTHER))


def between_other_work(pieces: dict[str, Callable[[], object]], rounds: int, per_round: int = 200
                       ) -> dict[str, dict[str, float]]:
    """Median µs of each piece alone, called back to back and with :func:`_other_work` before each call."""
    times: dict[str, dict[str, list[float]]] = {name: {"tight": [], "between": []} for name in pieces}
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for name, fn in pieces.items():
            for mode in ("tight", "between"):
                spent = 0
                for _ in range(per_round):
                    if mode == "between":
                        _other_work()
                    start = clock()
                    fn()
                    spent += clock() - start
                times[name][mode].append(spent / per_round / 1e3)
    out = {}
    for name, modes in times.items():
        tight, between = float(np.median(modes["tight"])), float(np.median(modes["between"]))
        out[name] = {"tight_us": tight, "between_us": between, "ratio": between / tight}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS / "predict_path.json")
    args = parser.parse_args(argv)

    from tensorflow_serving.apis import predict_pb2

    from tfsctl.serving.grpc_api import LoopPredictionServicer, RequestGate
    from tfsctl.serving.server import ModelServer, ServerOptions
    from tfsctl.tensors import from_numpy, to_numpy
    from tfsctl.testing import write_toy_model

    with tempfile.TemporaryDirectory() as tmp:
        write_toy_model(Path(tmp) / "toy", 1)
        server = ModelServer(ServerOptions(port=0, host="127.0.0.1", model_name="toy",
                                           model_base_path=str(Path(tmp) / "toy")))
        server.start()
        try:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "toy"
            request.inputs["x"].CopyFrom(from_numpy(np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)))
            raw = request.SerializeToString()
            # The servicer the gRPC server registers, on the same core and metrics (a gate of its own).
            servicer = LoopPredictionServicer(server.core, server.metrics, executor=None, gate=RequestGate())
            for _ in range(500):  # until the signature's steps are measured short and run in the caller's thread
                server.core.predict_request(request)
                if server.core.predict_is_quick(request):
                    break
            else:
                raise SystemExit("the toy model's steps never counted as quick on this machine")

            calls = layers(server, servicer, raw)
            cumulative = best_per_call_us(calls, args.rounds)
            pieces = {
                "decode one input (to_numpy)": lambda: to_numpy(request.inputs["x"], "x"),
                "session callable (TF step)": calls["  session callable (TF step)"],
                "Predict RPC body": calls["Predict RPC body (parse, coroutine, serialize)"],
                "bare-aio-tf handler": calls["bare-aio-tf handler (parse, decode, run, encode)"],
            }
            between = between_other_work(pieces, max(1, args.rounds // 4))
        finally:
            server.stop(1)

    full = cumulative["Predict RPC body (parse, coroutine, serialize)"]
    bare = cumulative["bare-aio-tf handler (parse, decode, run, encode)"]
    print(f"{'layer (cumulative, min over rounds)':52s} {'µs/call':>8s}")
    for name, us in cumulative.items():
        print(f"{name:52s} {us:8.1f}")
    print(f"\ntfsctl's Predict body vs the bare-aio-tf handler: {full / bare:.2f}x ({full - bare:.1f} µs more)")
    print(f"\n{'piece (median)':32s} {'tight':>8s} {'between':>8s} {'ratio':>6s}")
    for name, row in between.items():
        print(f"{name:32s} {row['tight_us']:8.1f} {row['between_us']:8.1f} {row['ratio']:5.1f}x")
    cold = between["Predict RPC body"]["between_us"] - between["bare-aio-tf handler"]["between_us"]
    print(f"\nbetween other work, tfsctl's Predict body costs {cold:.1f} µs more than the bare-aio-tf handler")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cumulative_us": cumulative, "between_other_work": between,
        "predict_vs_bare_handler": full / bare,
    }, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
