"""Before/after on ResNet50 at batch 1: two ``tfsctl serve`` processes from two source trees, measured at once.

On a shared machine whose speed moves from minute to minute, two runs of ``real_models.py`` one after the other
compare two moments as much as two versions. Here both servers run side by side (A from one source tree, B from
another: e.g. ``git archive main | tar -x -C /tmp/a``), each idle while the other is called, and every round
measures the in-process step (the SavedModel in a TF1 session, as ``real_models.py``), then gRPC, REST row and REST
columnar on A and on B, the order turning; each figure is the median over rounds of its ratio to the same round's
step. Bodies are ``real_models.py``'s (TF Serving's clients': ``json.dumps(x.tolist())``, 3.15 MB of float64 text).
The export is ``real_models.py``'s ``--workdir`` copy (``keras.applications.ResNet50(weights=None)``), made there
if missing.

    python benchmarks/ab_resnet.py --a /tmp/a --b $PWD --workdir /tmp/rm [--rounds 4] [--calls 7]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="source tree of server A (its tfsctl package is imported)")
    ap.add_argument("--b", required=True, help="source tree of server B")
    ap.add_argument("--workdir", required=True, help="real_models.py's --workdir: the ResNet50 export")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--calls", type=int, default=7, help="calls per measurement (median taken)")
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("real_models", Path(__file__).with_name("real_models.py"))
    rm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rm)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = rm.make_keras("resnet50", workdir)
    from tfsctl.core.loader import Loader

    servable = Loader(model.name, 1, model.base / "1").load()
    servers = {}
    logs = Path(tempfile.mkdtemp(prefix="ab-resnet-"))
    env, cwd = os.environ.get("PYTHONPATH"), os.getcwd()
    os.chdir(logs)  # "python -m tfsctl" puts the working directory first on the path: none of the trees
    try:
        for name, tree in (("A", args.a), ("B", args.b)):
            os.environ["PYTHONPATH"] = str(Path(tree).resolve())
            servers[name] = rm.ServerProcess(model.base, model.name, [], logs / f"server_{name}.log")
    finally:
        os.chdir(cwd)
        if env is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env
    try:
        for server in servers.values():
            server.wait_ready()
        grpc_body, rest = rm.grpc_body(model, model.inputs), rm.rest_bodies(model)
        calls = {"step": lambda: servable.run(model.signature, model.inputs, model.output_filter)}
        for name, server in servers.items():
            grpc, http = rm.GrpcClient(server.grpc_port), rm.RestClient(server.rest_port, rm.v1_path(model))
            calls[f"grpc {name}"] = lambda c=grpc: c(grpc_body)
            calls[f"rest_row {name}"] = lambda c=http: c(rest["rest_row"])
            calls[f"rest_columnar {name}"] = lambda c=http: c(rest["rest_columnar"])
        names = list(calls)
        ratios: dict[str, list[float]] = {n: [] for n in names if n != "step"}
        for r in range(args.rounds):
            medians = {}
            for name in names if r % 2 == 0 else names[::-1]:
                medians[name] = 1e3 * statistics.median(rm.timed(calls[name], args.calls))
            for name in ratios:
                ratios[name].append(medians[name] / medians["step"])
            print(f"round {r + 1}/{args.rounds}: " + "  ".join(f"{n} {medians[n]:.1f}" for n in names)
                  + f" ms  (load {rm.load_average()})", flush=True)
        print(f"median over rounds of the ratio to the round's step (A = {args.a}, B = {args.b}):")
        for name, values in ratios.items():
            print(f"  {name:16} {statistics.median(values):5.2f}x   (rounds {min(values):.2f}-{max(values):.2f}x)")
    finally:
        for server in servers.values():
            server.stop()
        servable.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
