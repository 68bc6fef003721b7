"""Bring your own model (issue 9): every source kind `tfsctl export` takes, built here in tmp_path, goes
export -> inspect -> serve (ModelServer on 127.0.0.1, port 0) -> Predict over gRPC with the official stubs, and the
served outputs equal the source model run directly.

Sources: a TF1 graph with a Saver checkpoint; a frozen GraphDef with the official DeepLab tensor names
(``ImageTensor:0`` uint8 [1, ?, ?, 3] -> ``SemanticPredictions:0``); a TF2 ``tf.train.Checkpoint`` of a subclassed
Keras model with its factory module written into tmp_path; a Keras ``.h5`` file; a SavedModel re-exported with a new
signature.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tfsctl.cli import app  # noqa: E402
from tfsctl.export import export_model  # noqa: E402
from tfsctl.inspection import CheckpointInfo, GraphInfo, inspect_path  # noqa: E402
from tfsctl.savedmodel import warmup_path  # noqa: E402
from tfsctl.serving.testing import served as serve_model  # noqa: E402

X3 = np.array([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], np.float32)
IMAGE = np.random.default_rng(5).integers(0, 256, (1, 12, 17, 3)).astype(np.uint8)

FACTORY_SOURCE = textwrap.dedent('''
    import keras
    import numpy as np


    class Net(keras.Model):
        """A subclassed model: no .inputs, built by calling it."""

        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(8, activation="relu")
            self.head = keras.layers.Dense(2)

        def call(self, x):
            return self.head(self.hidden(x))


    def make():
        net = Net()
        net(np.zeros((1, 3), np.float32))
        return net
''')


def _session_run(graph: tf.Graph, fetch: str, feed: dict[str, np.ndarray], init=None) -> np.ndarray:
    with tf.compat.v1.Session(graph=graph) as sess:
        if init is not None:
            init(sess)
        return sess.run(fetch, feed_dict=feed)


def build_tf1_checkpoint(root: Path) -> tuple[Path, np.ndarray]:
    """A TF1 graph with variables, trained nothing, saved with a Saver: (prefix, its output on X3)."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        w = tf.compat.v1.get_variable("w", initializer=tf.constant([[0.5, -1.0], [2.0, 0.25], [1.5, 1.0]]))
        b = tf.compat.v1.get_variable("b", initializer=tf.constant([0.1, -0.2]))
        hidden = tf.nn.relu(tf.matmul(x, w) + b, name="hidden")
        tf.reduce_sum(hidden, axis=1, name="score")
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(tf.compat.v1.assign(w, w * 3.0))  # values differ from the initialisers: restore must work
            expected = sess.run("score:0", {"x:0": X3})
            prefix = saver.save(sess, str(root / "tf1" / "model.ckpt"))
    return Path(prefix), expected


def build_frozen_deeplab_graph(root: Path) -> tuple[Path, np.ndarray]:
    """A frozen graph named as the official DeepLab zoo export: ImageTensor:0 -> SemanticPredictions:0."""
    graph = tf.Graph()
    with graph.as_default():
        image = tf.compat.v1.placeholder(tf.uint8, [1, None, None, 3], name="ImageTensor")
        x = tf.cast(image, tf.float32)
        logits = tf.stack([x[..., 0], x[..., 1] * 0.8, x[..., 2] * 1.2, tf.fill(tf.shape(x[..., 0]), 100.0)], -1)
        tf.argmax(logits, axis=-1, name="SemanticPredictions")
    path = root / "frozen_inference_graph.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    imported = tf.Graph()
    with imported.as_default():
        graph_def = tf.compat.v1.GraphDef.FromString(path.read_bytes())
        tf.compat.v1.import_graph_def(graph_def, name="")
    return path, _session_run(imported, "SemanticPredictions:0", {"ImageTensor:0": IMAGE})


def build_tf2_checkpoint(root: Path) -> tuple[Path, Path, np.ndarray]:
    """(checkpoint dir, factory dir, expected output): tf.train.Checkpoint(model=net) of a subclassed model."""
    factory_dir = root / "factory"
    factory_dir.mkdir()
    (factory_dir / "my_factory.py").write_text(FACTORY_SOURCE)
    import importlib.util

    spec = importlib.util.spec_from_file_location("my_factory_for_test", factory_dir / "my_factory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.make()
    for v in net.weights:  # distinctive values
        v.assign(np.random.default_rng(len(v.name)).normal(size=v.shape).astype(np.float32))
    ckpt_dir = root / "tf2"
    tf.train.CheckpointManager(tf.train.Checkpoint(model=net), str(ckpt_dir), max_to_keep=1).save()
    return ckpt_dir, factory_dir, np.asarray(net(X3))


def build_h5(root: Path) -> tuple[Path, np.ndarray]:
    inp = keras.Input(shape=(3,), name="features")
    out = keras.layers.Dense(4, activation="tanh", name="probs")(keras.layers.Dense(5, name="mid")(inp))
    model = keras.Model(inp, out)
    path = root / "model.h5"
    model.save(path)
    return path, np.asarray(model(X3))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("sources")
    tf1_prefix, tf1_expected = build_tf1_checkpoint(root)
    frozen, frozen_expected = build_frozen_deeplab_graph(root)
    tf2_dir, factory_dir, tf2_expected = build_tf2_checkpoint(root)
    h5, h5_expected = build_h5(root)
    return {"root": root, "tf1": (tf1_prefix, tf1_expected), "frozen": (frozen, frozen_expected),
            "tf2": (tf2_dir, factory_dir, tf2_expected), "h5": (h5, h5_expected)}


@pytest.fixture(scope="module")
def exported(sources: dict) -> dict:
    """Every source exported into its own base path (version 1)."""
    models = sources["root"] / "models"
    tf1_prefix, _ = sources["tf1"]
    results = {
        "tf1": export_model(tf1_prefix, models / "tf1", inputs=["x=x"], outputs=["score=score:0"]),
        "frozen": export_model(sources["frozen"][0], models / "frozen", inputs=["images=ImageTensor:0"],
                               outputs=["segmentation_map=SemanticPredictions:0"],
                               warmup_shapes=["images=1x8x8x3"]),
        "tf2": export_model(sources["tf2"][0], models / "tf2", model_factory="my_factory:make",
                            model_factory_path=sources["tf2"][1]),
        "h5": export_model(sources["h5"][0], models / "h5"),
    }
    # A SavedModel re-exported as a new version, with a new signature over a tensor of its graph, and warmup.
    results["resaved"] = export_model(results["tf1"].path, models / "resaved" / "3", signature="hidden",
                                      inputs=["x=x:0"], outputs=["hidden=hidden:0"])
    return results


@pytest.fixture(scope="module")
def server(exported: dict, sources: dict):
    config = sources["root"] / "models.config"
    config.write_text("model_config_list {\n" + "".join(
        f'  config {{ name: "{name}" base_path: "{r.path.parent}" model_platform: "tensorflow" }}\n'
        for name, r in exported.items()) + "}\n")
    with serve_model(ready_timeout=120, grace=5, model_config_file=str(config),
                     file_system_poll_wait_seconds=0.5) as srv:
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.grpc_port}")
        try:
            yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
        finally:
            channel.close()


def predict(stub, model: str, inputs: dict[str, np.ndarray], signature: str = "") -> dict[str, np.ndarray]:
    req = predict_pb2.PredictRequest()
    req.model_spec.name = model
    req.model_spec.signature_name = signature
    for key, value in inputs.items():
        req.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    resp = stub.Predict(req, timeout=60)
    return {k: tf.make_ndarray(v) for k, v in resp.outputs.items()}


def _warmup_signatures(path: Path) -> list[str]:
    names = []
    for record in tf.data.TFRecordDataset(str(warmup_path(path))):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        names.append(getattr(log, log.WhichOneof("log_type")).request.model_spec.signature_name)
    return sorted(names)


def test_tf1_saver_checkpoint(sources, exported, server) -> None:
    prefix, expected = sources["tf1"]
    info = inspect_path(prefix)
    assert isinstance(info, CheckpointInfo) and info.has_meta_graph
    assert {(v.name, v.dtype, tuple(v.shape), v.size) for v in info.variables} == {
        ("w", "DT_FLOAT", (3, 2), 24), ("b", "DT_FLOAT", (2,), 8)}
    meta = inspect_path(Path(f"{prefix}.meta"))
    assert isinstance(meta, GraphInfo) and [t.name for t in meta.inputs] == ["x:0"]
    assert "score:0" in [t.name for t in meta.outputs] and "save/Const:0" not in [t.name for t in meta.outputs]
    result = exported["tf1"]
    assert result.kind == "tf1-checkpoint" and result.signatures == ["serving_default"]
    sm = inspect_path(result.path)
    sig = sm.meta_graph().signature("serving_default")
    assert [(t.key, t.dtype, t.shape) for t in sig.inputs] == [("x", "DT_FLOAT", [-1, 3])]
    assert sig.method_name == "tensorflow/serving/predict"
    assert {v.name for v in sm.variables} == {"w", "b"} and sm.variables_bytes > 0
    assert _warmup_signatures(result.path) == ["serving_default"]
    out = predict(server, "tf1", {"x": X3})
    np.testing.assert_allclose(out["score"], expected, rtol=1e-6)


def test_frozen_graph_with_deeplab_zoo_names(sources, exported, server) -> None:
    path, expected = sources["frozen"]
    info = inspect_path(path)
    assert [(t.name, t.dtype, t.shape) for t in info.inputs] == [("ImageTensor:0", "DT_UINT8", [1, -1, -1, 3])]
    assert [t.name for t in info.outputs] == ["SemanticPredictions:0"]
    result = exported["frozen"]
    assert result.kind == "frozen-graph" and result.warmup_records == 1
    out = predict(server, "frozen", {"images": IMAGE})
    assert out["segmentation_map"].dtype == np.int64
    np.testing.assert_array_equal(out["segmentation_map"], expected)


def test_tf2_checkpoint_with_model_factory(sources, exported, server) -> None:
    _, _, expected = sources["tf2"]
    info = inspect_path(sources["tf2"][0])
    assert isinstance(info, CheckpointInfo) and not info.has_meta_graph
    assert any(v.name.startswith("model/hidden/") for v in info.variables)
    result = exported["tf2"]
    assert result.kind == "tf2-checkpoint" and result.warmup_records == 1
    sig = inspect_path(result.path).meta_graph().signature("serving_default")
    assert [(t.key, t.shape) for t in sig.inputs] == [("x", [-1, 3])]
    out = predict(server, "tf2", {"x": X3})
    np.testing.assert_allclose(out["output_0"], expected, rtol=1e-5, atol=1e-6)


def test_h5_file(sources, exported, server) -> None:
    _, expected = sources["h5"]
    result = exported["h5"]
    assert result.kind == "keras"
    out = predict(server, "h5", {"features": X3})
    np.testing.assert_allclose(out["probs"], expected, rtol=1e-5, atol=1e-6)


def test_saved_model_reexport_adds_a_signature(sources, exported, server) -> None:
    result = exported["resaved"]
    assert result.kind == "saved-model" and result.version == 3
    assert result.signatures == ["hidden", "serving_default"]
    assert _warmup_signatures(result.path) == ["hidden", "serving_default"]
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:  # the source SavedModel run directly
        tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(exported["tf1"].path))
        expected_hidden = sess.run("hidden:0", {"x:0": X3})
    out = predict(server, "resaved", {"x": X3}, signature="hidden")
    np.testing.assert_allclose(out["hidden"], expected_hidden, rtol=1e-6)
    out = predict(server, "resaved", {"x": X3})
    np.testing.assert_allclose(out["score"], sources["tf1"][1], rtol=1e-6)


def test_run_matches_the_server(exported, tmp_path: Path) -> None:
    """tfsctl run on the export prints (and writes) what the server answered."""
    np.save(tmp_path / "x.npy", X3)
    np.savez(tmp_path / "xs.npz", a=X3, b=X3 * 2)
    runner = CliRunner()
    for value in (str(tmp_path / "x.npy"), f"{tmp_path / 'xs.npz'}[a]", json.dumps(X3.tolist())):
        res = runner.invoke(app, ["run", str(exported["tf1"].path), "--input", f"x={value}", "--json"])
        assert res.exit_code == 0, res.output
        got = json.loads(res.stdout)["outputs"]["score"]
        assert got["dtype"] == "float32" and got["shape"] == [2]
        np.testing.assert_allclose(got["value"], export_expected(exported), rtol=1e-6)
    res = runner.invoke(app, ["run", str(exported["frozen"].path), "--input", f"images=@{_png(tmp_path)}",
                              "--output-dir", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    seg = np.load(tmp_path / "out" / "segmentation_map.npy")
    assert seg.shape == (1, 12, 17) and "segmentation_map" in res.stdout
    res = runner.invoke(app, ["run", str(exported["frozen"].path), "--input", f"images=@{_png(tmp_path)}",
                              "--output-dir", str(tmp_path / "out")])
    assert res.exit_code == 1 and "--overwrite" in " ".join(res.output.split())


def export_expected(exported: dict) -> np.ndarray:
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(exported["tf1"].path))
        return sess.run("score:0", {"x:0": X3})


def _png(tmp_path: Path) -> Path:
    from PIL import Image

    path = tmp_path / "image.png"
    Image.fromarray(IMAGE[0]).save(path)
    return path
