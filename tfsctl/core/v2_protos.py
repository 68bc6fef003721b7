"""The Open Inference Protocol's gRPC messages and service (package ``inference``), from one maintained package.

Server (``serving/v2_grpc.py``) and client (``client/v2.py``) take ``service_pb2`` / ``service_pb2_grpc`` from
here, never from a copy of the ``.proto`` in this repository. They are NVIDIA Triton's generated modules for
``grpc_service.proto``, shipped by ``tritonclient`` (``tritonclient.grpc.service_pb2``): the
``inference.GRPCInferenceService`` of KServe's v2 protocol plus Triton's extensions (model repository,
statistics, shared memory, ...), which is what Triton's and KServe's gRPC clients call.

Why this pin (pyproject: plain ``tritonclient>=2.67,<2.70``, no extras): ``tritonclient[grpc]`` pins
``protobuf<7`` (2.67 on), and plain ``tritonclient`` 2.70+ pins ``ml-dtypes<=0.5.4``, while TensorFlow 2.21's
environment runs protobuf 7 and ml_dtypes 0.7. The extras only add pins; the modules they enable import
``grpc`` and ``google.protobuf``, which the server already has. Plain ``tritonclient`` 2.67-2.69 declares
neither pin, and its generated modules (protobuf 6 gencode, without a runtime version check) import and run on
protobuf 7: ``tests/test_v2_grpc.py`` serves and calls every RPC used here through them. Nothing is
generated at install time and nothing in TensorFlow's environment changes.
"""

from __future__ import annotations

from tritonclient.grpc import service_pb2, service_pb2_grpc

SERVICE_NAME: str = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

__all__ = ["SERVICE_NAME", "service_pb2", "service_pb2_grpc"]
