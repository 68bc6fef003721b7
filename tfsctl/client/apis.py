"""The official TF Serving API modules (``tensorflow_serving.apis`` pb2 / grpc), imported without TensorFlow.

The generated modules import ``tensorflow.core.framework.*_pb2``, and importing any ``tensorflow.*`` module runs
``tensorflow/__init__.py`` first: about 2 s of loading the TF runtime for what are plain protobuf descriptors. When
TensorFlow is not imported yet, :func:`_import_without_tf_runtime` puts a bare package object for ``tensorflow``
(``__path__`` = the installed package directory, no ``__init__`` run) into ``sys.modules`` while the pb2 modules
import, under the global import lock, and removes it afterwards. The ``tensorflow.core...`` pb2 modules stay
registered, so a later real ``import tensorflow`` (tests, in-process use) reuses the very same message classes; a
one-shot import hook re-attaches them as attributes of the real package when it loads. When TensorFlow is already
imported, nothing special happens.

Everything else in ``tfsctl.client`` takes these modules from here.
"""

from __future__ import annotations

import _imp
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

_MODULES = (
    "tensorflow.core.framework.tensor_pb2",
    "tensorflow.core.framework.tensor_shape_pb2",
    "tensorflow.core.framework.types_pb2",
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.prediction_service_pb2_grpc",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.model_management_pb2",
    "tensorflow_serving.apis.model_service_pb2_grpc",
    "tensorflow_serving.apis.prediction_log_pb2",
    "tensorflow_serving.config.model_server_config_pb2",
)


class _ReattachChildren(importlib.abc.MetaPathFinder):
    """On the real ``import tensorflow``: make the pb2 packages imported earlier attributes of the package again.

    A module already in ``sys.modules`` is not set as an attribute of a parent that loads later, so without this
    ``tensorflow.core`` would be missing as an attribute (``from tensorflow.core...`` imports work either way).
    """

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201 - importlib protocol
        if name != "tensorflow":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module: types.ModuleType) -> None:
            _attach_children(module)
            real_exec(module)
            _attach_children(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _attach_children(package: types.ModuleType) -> None:
    prefix = package.__name__ + "."
    for name, module in list(sys.modules.items()):
        if name.startswith(prefix) and "." not in name[len(prefix):] and not hasattr(package, name[len(prefix):]):
            setattr(package, name[len(prefix):], module)


def _import_without_tf_runtime(names: tuple[str, ...]) -> None:
    """Import ``names`` with ``tensorflow`` standing in as a bare package when the real one is not imported."""
    if "tensorflow" in sys.modules or all(n in sys.modules for n in names):
        for n in names:
            importlib.import_module(n)
        return
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        # No TensorFlow installed: the pb2 modules cannot import their tensorflow.core dependencies.
        for n in names:
            importlib.import_module(n)
        return
    _imp.acquire_lock()  # no other thread may import the stand-in as "tensorflow" meanwhile
    try:
        bare = types.ModuleType("tensorflow", "stand-in package: TF Serving protos without the TF runtime")
        bare.__path__ = list(spec.submodule_search_locations)
        bare.__spec__ = importlib.machinery.ModuleSpec("tensorflow", None, is_package=True)
        bare.__spec__.submodule_search_locations = bare.__path__
        sys.modules["tensorflow"] = bare
        try:
            for n in names:
                importlib.import_module(n)
        finally:
            if sys.modules.get("tensorflow") is bare:
                del sys.modules["tensorflow"]
            if not any(isinstance(f, _ReattachChildren) for f in sys.meta_path):
                sys.meta_path.insert(0, _ReattachChildren())
    finally:
        _imp.release_lock()


_import_without_tf_runtime(_MODULES)

from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2  # noqa: E402

__all__ = [
    "get_model_metadata_pb2",
    "get_model_status_pb2",
    "model_management_pb2",
    "model_server_config_pb2",
    "model_service_pb2_grpc",
    "predict_pb2",
    "prediction_log_pb2",
    "prediction_service_pb2_grpc",
    "tensor_pb2",
    "tensor_shape_pb2",
    "types_pb2",
]

# The TensorProto <-> numpy codec (typed ``*_val`` fields and ``tensor_content``), imported once the protos are in.
from tfsctl.tensors import dtype_name, from_numpy, shape_of, to_numpy  # noqa: E402

__all__ += ["dtype_name", "from_numpy", "shape_of", "to_numpy"]
