"""KServe 0.21's Python model server on a SavedModel: the anchor tfsctl's REST and v2 figures are divided by.

One home for the anchor, used by ``overhead_bench.py`` (toy model and DeepLab, v1 REST) and ``real_models.py``
(ResNet50 and DeepLab 513x513: v1 REST, v2 REST JSON and binary, v2 gRPC). The server is a custom ``kserve.Model``
on one signature of the SavedModel (``serving_default`` unless told), as KServe's docs describe one: v1
(``{"instances": ...}``) and v2 (Open Inference Protocol: REST, and gRPC when a gRPC port is given) requests call
the same signature. KServe's defaults otherwise (one uvicorn worker, a latency log line per request).

It runs in an interpreter of its own, because kserve pins a protobuf older than the project's: ``make
bench-kserve-env`` creates ``benchmarks/.kserve-venv`` (gitignored; kserve==0.21.0 and TensorFlow from PyPI, about
2.5 GB), found by default. The server half imports kserve, TensorFlow and NumPy only (never tfsctl); the launcher
half only the standard library, so the benchmarks import it from the project's venv.

    <kserve python> benchmarks/kserve_anchor.py --http-port PORT [--grpc-port PORT] NAME SAVED_MODEL_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KSERVE_PYTHON = ROOT / "benchmarks" / ".kserve-venv" / "bin" / "python"  # made by `make bench-kserve-env`
_PROBE = ("import importlib.metadata as m, json, sys; import kserve, tensorflow as tf; "
          "print(json.dumps({'kserve': m.version('kserve'), 'tensorflow': tf.__version__, "
          "'protobuf': m.version('protobuf'), 'python': sys.version.split()[0]}))")


def child_env() -> dict[str, str]:
    """The anchor's environment: nothing of the project's venv or tree on its path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def find_interpreter(explicit: str | None) -> tuple[str | None, dict, str]:
    """(interpreter, versions, note) for the anchor: ``explicit``, else benchmarks/.kserve-venv, else this
    interpreter; the first that imports kserve and TensorFlow. An explicit one that cannot is an error; none found
    gives (None, {}, why) so the caller reports the anchor as skipped."""
    candidates = [explicit] if explicit else [str(KSERVE_PYTHON), sys.executable]
    tried = []
    for python in candidates:
        if not Path(python).exists():
            tried.append(f"{python}: missing")
            continue
        env = dict(child_env(), TF_CPP_MIN_LOG_LEVEL="3")
        probe = subprocess.run([python, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=300)
        if probe.returncode == 0:
            versions = json.loads(probe.stdout.strip().splitlines()[-1])
            return python, {"python_path": python, **versions}, ""
        tried.append(f"{python}: {probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'failed'}")
    if explicit:
        raise SystemExit(f"--kserve-python {explicit} cannot run the KServe anchor: {tried[0]}")
    return None, {}, ("KServe not found (make bench-kserve-env, or --kserve-python PATH): the KServe anchors are "
                      "skipped; tried " + "; ".join(tried))


def command(python: str, name: str, model_dir: Path, http_port: int, grpc_port: int | None = None,
            signature: str = "serving_default") -> list[str]:
    """The command line that starts the anchor for SavedModel ``model_dir``'s ``signature`` as model ``name``."""
    cmd = [python, str(Path(__file__).resolve()), "--http-port", str(http_port), "--signature", signature, name,
           str(model_dir)]
    return cmd + (["--grpc-port", str(grpc_port)] if grpc_port else [])


def serve(name: str, model_dir: str, http_port: int, grpc_port: int | None = None,
          signature: str = "serving_default") -> None:
    """KServe's ModelServer with one custom model on one signature of the SavedModel."""
    import kserve
    import numpy as np
    import tensorflow as tf
    from kserve import InferOutput, InferRequest, InferResponse
    from kserve.utils.numpy_codec import from_np_dtype

    class SavedModel(kserve.Model):
        def __init__(self) -> None:
            super().__init__(name)
            self.fn = None
            self.load()

        def load(self) -> bool:
            self.fn = tf.saved_model.load(model_dir).signatures[signature]
            self.ready = True
            return True

        def predict(self, payload, headers: dict | None = None):  # noqa: ANN001, ANN201 - dict or InferRequest
            spec = self.fn.structured_input_signature[1]
            if isinstance(payload, InferRequest):  # v2, REST or gRPC: KServe decoded the tensors
                feed = {i.name: tf.constant(i.as_numpy(), dtype=spec[i.name].dtype) for i in payload.inputs}
                out = {k: v.numpy() for k, v in self.fn(**feed).items()}
                wanted = [o.name for o in payload.request_outputs or []] or list(out)
                outputs = []
                for k in wanted:  # raw bytes for gRPC and binary REST, a list for JSON, as KServe's examples do
                    outputs.append(InferOutput(name=k, shape=list(out[k].shape), datatype=from_np_dtype(out[k].dtype)))
                    outputs[-1].set_data_from_numpy(out[k], binary_data=payload.from_grpc or payload.use_binary_outputs)
                return InferResponse(response_id=payload.id or "", model_name=name, infer_outputs=outputs,
                                     use_binary_outputs=payload.use_binary_outputs,
                                     requested_outputs=payload.request_outputs)
            rows = payload["instances"]
            if isinstance(rows[0], dict):
                feed = {k: tf.constant(np.array([r[k] for r in rows]), dtype=spec[k].dtype) for k in rows[0]}
            else:
                (key,) = spec
                feed = {key: tf.constant(np.array(rows), dtype=spec[key].dtype)}
            out = {k: v.numpy() for k, v in self.fn(**feed).items()}
            if len(out) == 1:
                return {"predictions": next(iter(out.values())).tolist()}
            return {"predictions": [{k: v[i].tolist() for k, v in out.items()} for i in range(len(rows))]}

    kwargs = {"grpc_port": grpc_port} if grpc_port else {}
    kserve.ModelServer(http_port=http_port, enable_grpc=grpc_port is not None, workers=1, **kwargs).start(
        [SavedModel()])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, default=None)
    ap.add_argument("--signature", default="serving_default")
    ap.add_argument("name")
    ap.add_argument("model_dir")
    args = ap.parse_args(argv)
    sys.argv = sys.argv[:1]  # kserve parses the process's argv for its own flags when imported
    serve(args.name, args.model_dir, args.http_port, args.grpc_port, args.signature)
    return 0


if __name__ == "__main__":
    sys.exit(main())
