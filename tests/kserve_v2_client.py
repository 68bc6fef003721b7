"""Run by tests/test_v2_kserve.py in the KServe client venv (KServe pins protobuf 6; the project runs 7): KServe's
unchanged ``InferenceRESTClient`` and ``InferenceGRPCClient`` (v2) against a tfsctl server; prints one JSON report.

    python tests/kserve_v2_client.py REST_PORT GRPC_PORT
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def _request(binary: bool, request_id: str) -> InferRequest:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    tensor = InferInput("x", [2, 4], "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return InferRequest(model_name="toy", infer_inputs=[tensor], request_id=request_id)


async def main(rest_port: int, grpc_port: int) -> dict:
    report: dict = {}
    base = f"http://127.0.0.1:{rest_port}"
    rest = InferenceRESTClient(RESTConfig(protocol="v2", timeout=60))
    try:
        report["rest_live"] = await rest.is_server_live(base)
        report["rest_ready"] = await rest.is_server_ready(base)
        report["rest_model_ready"] = await rest.is_model_ready(base, "toy")
        for binary in (False, True):
            response = await rest.infer(base, _request(binary, f"rest-{binary}"), model_name="toy")
            report[f"rest_infer_{'binary' if binary else 'json'}"] = {
                "id": response.id, "model_version": response.model_version,
                "y": response.outputs[0].as_numpy().tolist(), "datatype": response.outputs[0].datatype}
        try:
            await rest.infer(base, _request(False, "x"), model_name="nope")
            report["rest_unknown_model"] = "no error"
        except Exception as e:  # noqa: BLE001 - the error's text is the report
            report["rest_unknown_model"] = str(e)
    finally:
        await rest.close()
    grpc_client = InferenceGRPCClient(f"127.0.0.1:{grpc_port}", timeout=60)
    try:
        report["grpc_live"] = await grpc_client.is_server_live()
        report["grpc_ready"] = await grpc_client.is_server_ready()
        report["grpc_model_ready"] = await grpc_client.is_model_ready("toy")
        for binary in (False, True):
            response = await grpc_client.infer(_request(binary, f"grpc-{binary}"))
            report[f"grpc_infer_{'raw' if binary else 'typed'}"] = {
                "id": response.id, "model_version": response.model_version,
                "y": response.outputs[0].as_numpy().tolist(), "datatype": response.outputs[0].datatype}
        try:
            await grpc_client.infer(InferRequest(model_name="nope", infer_inputs=_request(False, "x").inputs))
            report["grpc_unknown_model"] = "no error"
        except Exception as e:  # noqa: BLE001
            report["grpc_unknown_model"] = str(e)
    finally:
        await grpc_client.close()
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))))
