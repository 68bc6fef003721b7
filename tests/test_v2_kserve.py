"""KServe's unchanged v2 clients (``InferenceRESTClient``, ``InferenceGRPCClient``) against ``tfsctl serve``.

KServe 0.21 pins protobuf 6 and the project's venv runs protobuf 7 (TensorFlow 2.21), so the clients run in a venv
of their own (``make kserve-client-env``, which ``make test`` builds: ``build/kserve-client-venv``, or the
interpreter in ``$KSERVE_CLIENT_PYTHON``), in a subprocess: ``tests/kserve_v2_client.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from tfsctl.serving.testing import served
from tfsctl.testing import write_toy_model

ROOT = Path(__file__).resolve().parent.parent
PYTHON = Path(os.environ.get("KSERVE_CLIENT_PYTHON", ROOT / "build" / "kserve-client-venv" / "bin" / "python"))
pytestmark = [pytest.mark.timeout(300),
              pytest.mark.skipif(not PYTHON.is_file(), reason=f"no KServe client venv at {PYTHON} (make "
                                 "kserve-client-env)")]


def test_kserve_rest_and_grpc_clients(tmp_path):
    write_toy_model(tmp_path / "toy", 1, scale=2.0)
    with served(rest=True, ready_timeout=60, grace=2, model_name="toy",
                model_base_path=str(tmp_path / "toy")) as server:
        run = subprocess.run([str(PYTHON), str(ROOT / "tests" / "kserve_v2_client.py"), str(server.rest_port),
                              str(server.grpc_port)], capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    y = (np.arange(8, dtype=float).reshape(2, 4) * 2).tolist()
    for key in ("rest_live", "rest_ready", "rest_model_ready", "grpc_live", "grpc_ready", "grpc_model_ready"):
        assert report[key] is True, (key, report)
    for key, request_id in (("rest_infer_json", "rest-False"), ("rest_infer_binary", "rest-True"),
                            ("grpc_infer_typed", "grpc-False"), ("grpc_infer_raw", "grpc-True")):
        assert report[key]["y"] == y and report[key]["id"] == request_id and report[key]["datatype"] == "FP32", key
    assert report["grpc_infer_raw"]["model_version"] == "1"
    assert "404" in report["rest_unknown_model"] and "nope" in report["rest_unknown_model"]
    assert "NOT_FOUND" in report["grpc_unknown_model"]
