"""Tiny real SavedModels for tests and benchmarks, written the way an exporter would (temp dir, then rename).

The toy model has three signatures so every API has something real to call:

- ``serving_default`` (predict): input ``x`` float32 ``[None, 4]`` -> ``y = x * scale`` float32 ``[None, 4]``.
- ``classify`` (``tensorflow/serving/classify``): input ``inputs`` serialized ``tf.Example`` strings ``[None]`` with a
  float feature ``x`` of length 4 -> ``classes`` string ``[None, 2]`` (``b"class0"``, ``b"class1"``) and ``scores``
  float32 ``[None, 2]`` = ``x[:, :2] * scale``.
- ``regress`` (``tensorflow/serving/regress``): input ``inputs`` -> ``outputs`` float32 ``[None]`` =
  ``sum(x, axis=1) * scale``.

``scale`` is a variable, so each version has a ``variables/`` directory (tests corrupt it on purpose).
Saving a SavedModel takes about a second, so each distinct ``scale`` is saved once per process into a template and
later calls copy that template: tests that write many versions stay fast.
"""

from __future__ import annotations

import atexit
import http.client
import json
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from tfsctl.savedmodel import (
    CLASSIFY_METHOD,
    DEFAULT_SIGNATURE,
    PREDICT_METHOD,
    REGRESS_METHOD,
    WARMUP_DIR,
    WARMUP_FILE,
)

TOY_CLASSES = (b"class0", b"class1")

_templates: dict[float, Path] = {}
_templates_lock = threading.Lock()
_template_root: Path | None = None


def _template_dir() -> Path:
    global _template_root
    if _template_root is None:
        _template_root = Path(tempfile.mkdtemp(prefix="tfsctl-toy-"))
        atexit.register(shutil.rmtree, _template_root, True)
    return _template_root


def _save_toy(export_dir: Path, scale: float) -> None:
    """Build and save the toy tf.Module into ``export_dir`` (which must not exist)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    from tfsctl.savedmodel import set_method_names

    class Toy(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = tf.Variable(float(scale), dtype=tf.float32, name="scale")

        def _parse(self, serialized: tf.Tensor) -> tf.Tensor:
            feats = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([4], tf.float32)})
            return feats["x"]

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def predict(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": x * self.scale}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            x = self._parse(inputs)
            n = tf.shape(x)[0]
            classes = tf.tile(tf.constant([list(TOY_CLASSES)]), tf.stack([n, 1]))
            return {"classes": classes, "scores": x[:, :2] * self.scale}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs: tf.Tensor) -> dict[str, tf.Tensor]:
            x = self._parse(inputs)
            return {"outputs": tf.reduce_sum(x, axis=1) * self.scale}

    module = Toy()
    tf.saved_model.save(
        module,
        str(export_dir),
        signatures={DEFAULT_SIGNATURE: module.predict, "classify": module.classify, "regress": module.regress},
    )
    set_method_names(export_dir, {"classify": CLASSIFY_METHOD, "regress": REGRESS_METHOD})


def _template(scale: float) -> Path:
    with _templates_lock:
        path = _templates.get(scale)
        if path is None or not path.is_dir():
            path = _template_dir() / f"scale-{uuid.uuid4().hex}"
            _save_toy(path, scale)
            _templates[scale] = path
        return path


def write_toy_model(
    base_path: str | Path, version: int, *, scale: float = 1.0, warmup: int = 0
) -> Path:
    """Write the toy SavedModel as ``base_path/version`` atomically and return that path.

    ``warmup`` > 0 also writes that many predict warmup records into ``assets.extra``. The version directory
    appears in one rename, so a polling Source never sees it half-written. Raises FileExistsError when the
    version already exists.
    """
    base = Path(base_path)
    base.mkdir(parents=True, exist_ok=True)
    target = base / str(int(version))
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    tmp = base / f".tmp-{int(version)}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(_template(float(scale)), tmp)
        if warmup:
            write_warmup_requests(tmp, [toy_predict_log(np.ones((1, 4), np.float32) * i) for i in range(warmup)])
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def toy_example(x: Sequence[float]) -> bytes:
    """A serialized tf.Example with float feature ``x`` (the toy classify/regress input)."""
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    ex.features.feature["x"].float_list.value.extend(float(v) for v in x)
    return ex.SerializeToString()


def toy_predict_log(x: np.ndarray, *, model_name: str = "toy", signature_name: str = DEFAULT_SIGNATURE):
    """A PredictionLog holding one PredictRequest for the toy model (a warmup record)."""
    from tensorflow_serving.apis import prediction_log_pb2

    from tfsctl.tensors import from_numpy

    log = prediction_log_pb2.PredictionLog()
    req = log.predict_log.request
    req.model_spec.name = model_name
    req.model_spec.signature_name = signature_name
    req.inputs["x"].CopyFrom(from_numpy(np.asarray(x, dtype=np.float32)))
    return log


def write_warmup_requests(model_dir: str | Path, logs: Iterable) -> Path:
    """Write PredictionLog records as TF Serving's warmup TFRecord file in ``model_dir/assets.extra``."""
    import tensorflow as tf

    out_dir = Path(model_dir) / WARMUP_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / WARMUP_FILE
    tmp = out_dir / f".{WARMUP_FILE}.tmp"
    with tf.io.TFRecordWriter(str(tmp)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    tmp.replace(path)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just handed out on ``host`` and released: nothing listens there (an unreachable server for
    client tests), and a server started a moment later can bind it (a REST port, where 0 means "off")."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 30.0, what: str = "condition",
               every: float = 0.02, explain: Callable[[], object] | None = None) -> T:
    """Call ``condition`` every ``every`` seconds until it returns something truthy and return that; raise
    AssertionError naming ``what`` (and, if given, what ``explain()`` returns then) once ``timeout`` seconds pass.
    Tests poll with a deadline, never sleep to synchronise: this is the one poller they share (a wait on a
    servable state waits on the Manager's state monitor instead, ``manager.wait_for_state``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f": {explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}{detail}")
        time.sleep(every)


def http_call(port: int, method: str, path: str, body: bytes | str | None = None, headers: dict | None = None,
              timeout: float = 60.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to 127.0.0.1:``port`` on a fresh connection; returns (status, headers, body bytes).
    Callers encode bodies (a ``str`` is sent as UTF-8) and decode answers themselves, so a test sees exactly the
    bytes on the wire."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body.encode() if isinstance(body, str) else body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def http_json(port: int, method: str, path: str, doc: object = None, *, raw: bytes | None = None,
              headers: dict | None = None, timeout: float = 60.0) -> tuple[int, Any]:
    """A JSON request through :func:`http_call`: ``doc`` sent as JSON (or ``raw`` bytes as they are) with
    ``Content-Type: application/json``; returns (status, the reply parsed as JSON when its Content-Type says JSON,
    else its text)."""
    body = raw if raw is not None else (json.dumps(doc).encode() if doc is not None else None)
    status, reply_headers, reply = http_call(port, method, path, body,
                                             {"Content-Type": "application/json", **(headers or {})}, timeout)
    if "json" in {k.lower(): v for k, v in reply_headers.items()}.get("content-type", ""):
        return status, json.loads(reply)
    return status, reply.decode()


def write_monitoring_config(directory: str | Path, path: str = "", *, enable: bool = True) -> Path:
    """Write a ``--monitoring_config_file`` into ``directory`` and return its path: as in TF Serving, the Prometheus
    page exists only under a MonitoringConfig that enables it (``path`` empty: TF Serving's default path)."""
    out = Path(directory) / "monitoring.config"
    fields = f"enable: {'true' if enable else 'false'}" + (f' path: "{path}"' if path else "")
    out.write_text(f"prometheus_config {{ {fields} }}\n", encoding="utf-8")
    return out


# --- models as TF Serving's testdata builds them (written by the tests, never copied) ------------------------------


def _atomic_version_dir(base_path: str | Path, version: int, write) -> Path:
    """Run ``write(tmp_dir)`` and rename the result to ``base_path/version`` (FileExistsError if it exists)."""
    base = Path(base_path)
    base.mkdir(parents=True, exist_ok=True)
    target = base / str(int(version))
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    tmp = base / f".tmp-{int(version)}-{uuid.uuid4().hex[:8]}"
    try:
        write(tmp)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def write_tf1_half_plus(
    base_path: str | Path, version: int, *, plus: float = 2.0, gpu_meta_graph: bool = False, main_op: bool = False,
    unknown_example_shape: bool = False,
) -> Path:
    """A TF1 export like TF Serving's ``saved_model_half_plus_two`` (``plus=3`` for half_plus_three).

    Built with ``tf.compat.v1`` graph APIs and ``SavedModelBuilder``: variables ``a``=0.5, ``b``=``plus``,
    ``c``=``plus``+1; a ``tf_example`` string placeholder parsed with ``tf.io.parse_example`` (features ``x`` [1]
    and ``x2`` [1], default 0); an asset file whose name a variable is assigned by the init op (``main_op=True``:
    through ``main_op`` with the standard table/variable initialisation, else as the legacy init op).
    Signatures: ``serving_default`` (predict, ``x`` float [-1, 1] -> ``y`` = 0.5 x + b), ``classify_x_to_y``
    (classify, ``inputs`` -> ``scores`` = y), ``regress_x_to_y`` / ``regress_x_to_y2`` (regress, ``inputs`` ->
    ``outputs`` = 0.5 x + b / + c), ``regress_x2_to_y3`` (regress over the float ``x2`` tensor).
    ``gpu_meta_graph`` adds a second MetaGraphDef tagged {serve, gpu} whose ``serving_default`` returns
    y2 = 0.5 x + c, so a test can tell which meta graph was loaded. ``unknown_example_shape`` leaves the
    ``tf_example`` placeholder without a shape, as older TF1 exports do.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    v1 = tf.compat.v1
    sm = v1.saved_model

    def write(export_dir: Path) -> None:
        from tensorflow.python.util import deprecation

        with deprecation.silence():
            _build(export_dir)

    def _build(export_dir: Path) -> None:
        builder = sm.builder.SavedModelBuilder(str(export_dir))
        with tf.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
            a = v1.Variable(0.5, name="a")
            b = v1.Variable(float(plus), name="b")
            c = v1.Variable(float(plus) + 1.0, name="c")
            serialized = v1.placeholder(tf.string, name="tf_example", shape=None if unknown_example_shape else [None])
            feats = tf.io.parse_example(serialized, {
                "x": tf.io.FixedLenFeature([1], tf.float32),
                "x2": tf.io.FixedLenFeature([1], tf.float32, default_value=[0.0]),
            })
            x = tf.identity(feats["x"], name="x")
            y = tf.identity(a * x + b, name="y")
            y2 = tf.identity(a * x + c, name="y2")
            x2 = tf.identity(feats["x2"], name="x2")
            y3 = tf.identity(v1.Variable(0.5, name="a2") * x2 + v1.Variable(float(plus) + 1.0, name="c2"), name="y3")
            # An asset whose file name an init op assigns to a variable (exercises assets + init op on load).
            assets_src = export_dir.parent / f".assets-{uuid.uuid4().hex[:8]}"
            assets_src.mkdir()
            (assets_src / "foo.txt").write_text("asset-file-contents")
            asset_path = tf.constant(str(assets_src / "foo.txt"))
            v1.add_to_collection(v1.GraphKeys.ASSET_FILEPATHS, asset_path)
            filename = v1.Variable("foo.txt", name="filename_tensor", trainable=False, collections=[])
            assign_filename = filename.assign("foo.txt")
            info = sm.utils.build_tensor_info

            def sig(inputs, outputs, method):
                return sm.signature_def_utils.build_signature_def(
                    {k: info(t) for k, t in inputs.items()}, {k: info(t) for k, t in outputs.items()}, method)

            signatures = {
                DEFAULT_SIGNATURE: sig({"x": x}, {"y": y}, sm.signature_constants.PREDICT_METHOD_NAME),
                "classify_x_to_y": sig({"inputs": serialized}, {"scores": y}, CLASSIFY_METHOD),
                "regress_x_to_y": sig({"inputs": serialized}, {"outputs": y}, REGRESS_METHOD),
                "regress_x_to_y2": sig({"inputs": serialized}, {"outputs": y2}, REGRESS_METHOD),
                "regress_x2_to_y3": sig({"inputs": x2}, {"outputs": y3}, REGRESS_METHOD),
            }
            sess.run(v1.global_variables_initializer())
            init = tf.group(sm.main_op.main_op(), assign_filename) if main_op else tf.group(assign_filename)
            builder.add_meta_graph_and_variables(
                sess, [sm.tag_constants.SERVING], signature_def_map=signatures,
                assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS), main_op=init)
            if gpu_meta_graph:
                gpu_sigs = dict(signatures)
                gpu_sigs[DEFAULT_SIGNATURE] = sig({"x": x}, {"y": y2}, sm.signature_constants.PREDICT_METHOD_NAME)
                # the graph's main-op collection (and assets) travel with this meta graph too
                builder.add_meta_graph([sm.tag_constants.SERVING, sm.tag_constants.GPU], signature_def_map=gpu_sigs)
        builder.save()
        shutil.rmtree(assets_src, ignore_errors=True)

    return _atomic_version_dir(base_path, version, write)


def write_tf2_half_plus_two(base_path: str | Path, version: int) -> Path:
    """A native TF2 ``tf.saved_model.save`` export like TF Serving's half_plus_two TF2 model.

    Every signature has the predict method name (TF2 writes no other); Classify/Regress must still serve
    ``classify_x_to_y`` (``inputs`` -> ``scores``) and ``regress_x_to_y`` (``inputs`` -> ``outputs``) when the
    method-name check is off. ``serving_default``: ``x`` float [1] -> ``y`` = 0.5 x + 2.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    spec = {"x": tf.io.FixedLenFeature([1], tf.float32)}

    class HalfPlusTwo(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = tf.Variable(0.5, name="a")
            self.b = tf.Variable(2.0, name="b")

        @tf.function(input_signature=[tf.TensorSpec([1], tf.float32, name="x")])
        def predict(self, x):
            return {"y": self.a * x + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, serialized):
            return {"outputs": self.a * tf.io.parse_example(serialized, spec)["x"] + self.b}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, serialized):
            return {"scores": self.a * tf.io.parse_example(serialized, spec)["x"] + self.b}

    def write(export_dir: Path) -> None:
        m = HalfPlusTwo()
        tf.saved_model.save(m, str(export_dir), signatures={
            DEFAULT_SIGNATURE: m.predict, "regress_x_to_y": m.regress, "classify_x_to_y": m.classify})

    return _atomic_version_dir(base_path, version, write)


def write_keras_model(base_path: str | Path, version: int) -> Path:
    """A Keras export (Sequential: input ``x`` float [None, 1] -> Dense(1) with weight 2, bias 0)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    def write(export_dir: Path) -> None:
        model = tf.keras.Sequential([
            tf.keras.Input(shape=(1,), dtype="float32", name="x"),
            tf.keras.layers.Dense(1, kernel_initializer="ones", bias_initializer="zeros", name="y"),
        ])
        model.layers[-1].kernel.assign([[2.0]])
        if hasattr(model, "export"):  # Keras 3: SavedModel export with a serving_default signature
            model.export(str(export_dir), format="tf_saved_model", verbose=False)
        else:  # pragma: no cover - Keras 2
            tf.saved_model.save(model, str(export_dir))

    return _atomic_version_dir(base_path, version, write)


def half_plus_example(x: float, x2: float | None = None) -> bytes:
    """A serialized tf.Example with float feature ``x`` (and ``x2``) for the half_plus models."""
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    ex.features.feature["x"].float_list.value.append(float(x))
    if x2 is not None:
        ex.features.feature["x2"].float_list.value.append(float(x2))
    return ex.SerializeToString()


def write_matmul_model(base_path: str | Path, version: int, size: int, depth: int) -> Path:
    """A TF1 SavedModel ``base_path/version`` whose step is ``depth`` matmuls [n, size] x [size, size] (weights
    1/size, so ones in give ones out): a model whose steps take milliseconds or more, for tests of slow models.
    Signature ``serving_default``: ``x`` float [-1, size] -> ``y``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from tensorflow.python.util import deprecation

    v1 = tf.compat.v1
    base = Path(base_path)
    base.mkdir(parents=True, exist_ok=True)
    target = base / str(int(version))
    tmp = base / f".tmp-{int(version)}-{uuid.uuid4().hex[:8]}"
    with deprecation.silence(), tf.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
        x = v1.placeholder(tf.float32, [None, size], name="x")
        w = v1.Variable(np.full((size, size), 1.0 / size, np.float32), name="w")
        y = x
        for _ in range(depth):
            y = tf.matmul(y, w)
        sess.run(v1.global_variables_initializer())
        info = v1.saved_model.utils.build_tensor_info
        builder = v1.saved_model.builder.SavedModelBuilder(str(tmp))
        builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={
            DEFAULT_SIGNATURE: v1.saved_model.signature_def_utils.build_signature_def(
                {"x": info(x)}, {"y": info(tf.identity(y, name="y"))}, PREDICT_METHOD)})
        builder.save()
    tmp.rename(target)
    return target


def write_counting_loop_model(base: str | Path, version: int = 1) -> Path:
    """A TF1 model whose step takes as long as asked: ``y`` runs a while loop of ``max(x)`` iterations (a step of
    seconds for millions, for deadline and scheduling tests), and signature ``count`` reports how many steps ran."""
    import tensorflow as tf

    v1 = tf.compat.v1
    sm = v1.saved_model

    def write(export_dir: Path) -> None:
        builder = sm.builder.SavedModelBuilder(str(export_dir))
        with tf.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
            x = v1.placeholder(tf.float32, [None], name="x")
            steps = v1.Variable(0, dtype=tf.int64, name="steps", use_resource=True)
            counted = steps.assign_add(1)
            with tf.control_dependencies([counted]):
                n = tf.cast(tf.reduce_max(x), tf.int64)
            _, acc = tf.while_loop(lambda i, a: i < n, lambda i, a: (i + 1, a * 0.5 + 1.0),
                                   [tf.constant(0, tf.int64), tf.constant(0.0)])
            y = tf.identity(x * 0.0 + acc, name="y")
            count = tf.identity(tf.zeros_like(x, tf.int64) + steps.read_value(), name="count")  # batchable
            info = sm.utils.build_tensor_info
            predict = sm.signature_constants.PREDICT_METHOD_NAME
            sigs = {
                "serving_default": sm.signature_def_utils.build_signature_def({"x": info(x)}, {"y": info(y)},
                                                                              predict),
                "count": sm.signature_def_utils.build_signature_def({"x": info(x)}, {"steps": info(count)}, predict),
            }
            sess.run(v1.global_variables_initializer())
            builder.add_meta_graph_and_variables(sess, [sm.tag_constants.SERVING], signature_def_map=sigs)
        builder.save()

    return _atomic_version_dir(base, version, write)
