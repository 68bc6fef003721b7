"""`tfsctl export` on bad input and bad luck: one-line errors naming the tensor, variable or flag; a full disk
leaves nothing behind; stale staging dirs of killed exports are cleaned; files and directories are fsynced before the
version is renamed into place. Also classify signatures over a TF1 ParseExample graph, ``--signatures`` and
``--warmup-request`` files, and inspect's filters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import prediction_log_pb2  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tfsctl.cli import app  # noqa: E402
from tfsctl.errors import ExportError, InspectError  # noqa: E402
from tfsctl.export import export_model  # noqa: E402
from tfsctl.export import target as target_mod  # noqa: E402
from tfsctl.inspection import inspect_path  # noqa: E402
from tfsctl.savedmodel import warmup_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(result) -> str:
    """The CLI's stderr/stdout for a failed command: exactly one `error: ...` line, no traceback."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture(scope="module")
def tf1_model(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A TF1 graph with a ParseExample classifier and a regressor, saved with a Saver; plus a checkpoint whose .meta
    names a variable its data lacks."""
    root = tmp_path_factory.mktemp("tf1")
    graph = tf.Graph()
    with graph.as_default():
        serialized = tf.compat.v1.placeholder(tf.string, [None], name="tf_example")
        feats = tf.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([2], tf.float32)})
        w = tf.compat.v1.get_variable("w", initializer=tf.constant([[1.0, -1.0], [0.5, 2.0]]))
        logits = tf.matmul(feats["x"], w)
        tf.identity(tf.nn.softmax(logits), name="scores")
        tf.tile(tf.constant([["neg", "pos"]]), [tf.shape(serialized)[0], 1], name="classes")
        tf.reduce_sum(logits, axis=1, name="value")
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(sess, str(root / "good" / "model.ckpt"))
    # A checkpoint of a graph with w only, under a .meta that also names `extra`: restore must name `extra`.
    bigger = tf.Graph()
    with bigger.as_default():
        tf.compat.v1.get_variable("w", [2, 2])
        tf.compat.v1.get_variable("extra", [3])
        with tf.compat.v1.Session(graph=bigger) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            big_prefix = tf.compat.v1.train.Saver().save(sess, str(root / "big" / "m.ckpt"))
    smaller = tf.Graph()
    with smaller.as_default():
        tf.compat.v1.get_variable("w", [2, 2])
        with tf.compat.v1.Session(graph=smaller) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            small_prefix = tf.compat.v1.train.Saver().save(sess, str(root / "small" / "m.ckpt"))
    Path(f"{small_prefix}.meta").write_bytes(Path(f"{big_prefix}.meta").read_bytes())
    return {"root": root, "prefix": Path(prefix), "broken": Path(small_prefix)}


@pytest.fixture(scope="module")
def small_keras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    inp = keras.Input(shape=(4,), name="features")
    model = keras.Model(inp, keras.layers.Dense(2, name="score")(inp))
    path = tmp_path_factory.mktemp("keras") / "small.keras"
    model.save(path)
    return path


def test_classify_and_regress_signatures_from_a_file_are_warmed_with_real_examples(tf1_model, tmp_path) -> None:
    spec = tmp_path / "signatures.json"
    spec.write_text(json.dumps({"signatures": {
        "classify": {"method": "classify", "inputs": {"inputs": "tf_example"},
                     "outputs": {"classes": "classes:0", "scores": "scores:0"}},
        "regress": {"method": "regress", "inputs": {"inputs": "tf_example:0"}, "outputs": {"outputs": "value"}},
    }}))
    result = export_model(tf1_model["prefix"], tmp_path / "m", signatures_file=spec)
    assert result.signatures == ["classify", "regress"] and not result.warnings
    mg = inspect_path(result.path).meta_graph()
    assert mg.signature("classify").method_name == "tensorflow/serving/classify"
    assert mg.signature("regress").method_name == "tensorflow/serving/regress"
    kinds = {}
    for record in tf.data.TFRecordDataset(str(warmup_path(result.path))):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        kind = log.WhichOneof("log_type")
        req = getattr(log, kind).request
        example = req.input.example_list.examples[0]
        assert list(example.features.feature["x"].float_list.value) == [0.0, 0.0]  # read off ParseExample
        kinds[req.model_spec.signature_name] = kind
    assert kinds == {"classify": "classify_log", "regress": "regress_log"}


def test_warmup_request_file_of_rest_bodies(tf1_model, tmp_path) -> None:
    bodies = tmp_path / "warmup.json"
    bodies.write_text(json.dumps([
        {"signature_name": "classify", "examples": [{"x": [1.0, 2.0]}, {"x": [0.5, 0.5]}]},
        {"signature_name": "scores", "instances": [{"x": "ignored"}]},
    ]))
    common = {"signatures_file": None, "inputs": ["inputs=tf_example"], "outputs": ["classes=classes", "scores=scores"],
              "signature": "classify", "method": "classify"}
    with pytest.raises(ExportError, match="request 2: no signature 'scores'"):
        export_model(tf1_model["prefix"], tmp_path / "m", warmup_request=bodies, **common)
    bodies.write_text(json.dumps({"signature_name": "classify", "examples": [{"x": [1.0, 2.0]}, {"x": [0.5, 0.5]}]}))
    result = export_model(tf1_model["prefix"], tmp_path / "m", warmup_request=bodies, **common)
    assert result.warmup_records == 1 and not (tmp_path / "m" / ".tmp").exists()
    bodies.write_text(json.dumps({"signature_name": "classify", "examples": [{"x": [1.0]}]}))  # wrong length
    with pytest.raises(ExportError, match="warmup request for signature 'classify' fails: .*x"):
        export_model(tf1_model["prefix"], tmp_path / "m", warmup_request=bodies, **common)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["1"]


@pytest.mark.parametrize(("args", "needle"), [
    (["--input", "x=tf_example", "--output", "y=nope:0"], "output 'y': no tensor 'nope:0'"),
    (["--input", "x=tf_exampel", "--output", "y=value"], "did you mean 'tf_example:0'"),
    (["--input", "x=tf_example"], "--output"),
    (["--input", "inputs=tf_example", "--output", "classes=value", "--method", "classify"],
     "output 'classes' must be string, the tensor is float32"),
    (["--input", "x=tf_example", "--output", "classes=classes", "--method", "classify"],
     "needs exactly one input 'inputs'"),
    (["--input", "x=tf_example", "--output", "y=value", "--method", "predictt"], "--method must be"),
    (["--input", "x=tf_example", "--output", "y=value", "--warmup-shape", "zz=1x2"], "--warmup-shape 'zz'"),
    (["--method", "classify"], "--method applies to the signature --input/--output describe"),
    (["--input", "x=tf_example", "--output", "y=value", "--input", "x=value"], "--input 'x' is given twice"),
])
def test_graph_signature_errors_are_one_line(tf1_model, tmp_path, args, needle) -> None:
    res = CliRunner().invoke(app, ["export", str(tf1_model["prefix"]), str(tmp_path / "m"), *args])
    assert needle in one_line_error(res)
    assert not (tmp_path / "m").exists()


def test_missing_variable_and_missing_flag_are_named(tf1_model, tmp_path, small_keras) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["export", str(tf1_model["broken"]), str(tmp_path / "m"), "--input", "a=w",
                              "--output", "b=w"])
    assert "variable(s) of the graph not found in checkpoint: extra" in one_line_error(res)
    prefix = tf1_model["root"] / "tf2" / "ckpt"
    tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(prefix))
    res = runner.invoke(app, ["export", str(prefix), str(tmp_path / "m")])
    assert "--model-factory" in one_line_error(res)
    res = runner.invoke(app, ["export", str(prefix), str(tmp_path / "m"), "--model-factory", "nomodule_xyz:make"])
    assert "cannot import module 'nomodule_xyz'" in one_line_error(res)
    res = runner.invoke(app, ["export", str(tf1_model["prefix"]), str(tmp_path / "m")])
    assert "--input KEY=TENSOR" in one_line_error(res)
    res = runner.invoke(app, ["export", str(small_keras), str(tmp_path / "m"), "--input", "a=b", "--output", "c=d"])
    assert "own call signature" in one_line_error(res)
    res = runner.invoke(app, ["export", str(small_keras), str(tmp_path / "m"), "--source-kind", "bogus"])
    assert "--source-kind must be one of" in one_line_error(res)
    assert not (tmp_path / "m").exists()


def test_stale_staging_dirs_of_killed_exports_are_cleaned(small_keras, tmp_path) -> None:
    base = tmp_path / "m"
    base.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = base / f".tmp-4-{dead.pid}-abc"  # its export process is gone
    live = base / f".tmp-5-{os.getpid()}-def"  # an export running in this very process
    old_unnamed = base / ".tmp-6-ghi"  # pre-pid name, 2 h old
    new_unnamed = base / ".tmp-7-jkl"  # pre-pid name, fresh: may be in use
    for d in (stale, live, old_unnamed, new_unnamed):
        (d / "variables").mkdir(parents=True)
    two_hours_ago = time.time() - 7200
    os.utime(old_unnamed, (two_hours_ago, two_hours_ago))
    result = export_model(small_keras, base)
    assert sorted(result.removed_stale) == sorted([str(stale), str(old_unnamed)])
    assert sorted(p.name for p in base.iterdir()) == sorted(["1", live.name, new_unnamed.name])
    long_ago = time.time() - target_mod.STALE_AFTER_SECONDS - 60  # a live pid cannot keep a day-old dir
    os.utime(live, (long_ago, long_ago))
    assert target_mod.clean_stale_staging(base) == [live]


def test_files_and_directories_are_fsynced_before_the_rename(small_keras, tmp_path, monkeypatch) -> None:
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def rename(a, b) -> None:
        events.append(("rename", str(b)))
        real_rename(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    base = tmp_path / "m"
    result = export_model(small_keras, base)
    at = events.index(("rename", str(result.path)))
    before = [path for kind, path in events[:at] if kind == "fsync"]
    assert any(p.endswith("/v/saved_model.pb") for p in before)
    assert any(p.endswith("/v/variables/variables.index") for p in before)
    assert any(p.endswith("/v") for p in before)  # the version directory itself
    assert ("fsync", str(base)) in events[at:]  # the parent, after the rename


@pytest.mark.skipif(not hasattr(os, "setrlimit") and sys.platform != "linux", reason="needs RLIMIT_FSIZE")
def test_full_disk_is_one_line_and_leaves_nothing(small_keras, tmp_path) -> None:
    """RLIMIT_FSIZE makes every write past 2 KB fail (EFBIG) as a full disk would; the export says so in one line."""
    base = tmp_path / "m"
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))\n"
        "from tfsctl.cli import app\n"
        "sys.argv = ['tfsctl', 'export', sys.argv[1], sys.argv[2]]\n"
        "app()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", code, str(small_keras), str(base)], capture_output=True, text=True,
                          env=env, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "too large" in lines[0].lower() or "no space" in lines[0].lower(), lines[0]
    assert not base.exists(), list(base.rglob("*"))


def test_version_dirs_follow_the_servers_rule(small_keras, tmp_path) -> None:
    base = tmp_path / "m"
    (base / "٣").mkdir(parents=True)  # Arabic-Indic three: not a version for TF Serving
    (base / "99999999999999999999").mkdir()  # beyond int64: not a version either
    (base / "2").mkdir()
    assert export_model(small_keras, base).version == 3
    info = inspect_path(base)
    assert [v.version for v in info.versions] == [2, 3]


def test_inspect_filters_and_sizes(tf1_model, tmp_path) -> None:
    result = export_model(tf1_model["prefix"], tmp_path / "m", signature="classify", method="classify",
                          inputs=["inputs=tf_example"], outputs=["classes=classes", "scores=scores"])
    (result.path / "assets").mkdir(exist_ok=True)  # an asset file is listed with its size
    (result.path / "assets" / "vocab.txt").write_text("neg\npos\n")
    info = inspect_path(result.path, tag_set={"serve"}, signature="classify")
    assert [s.name for s in info.meta_graph().signatures] == ["classify"]
    assert [(v.name, v.size) for v in info.variables] == [("w", 16)]
    assert [(a.path, a.size) for a in info.assets] == [("assets/vocab.txt", 8)]
    with pytest.raises(InspectError, match="no meta graph tagged gpu,serve"):
        inspect_path(result.path, tag_set={"serve", "gpu"})
    with pytest.raises(InspectError, match="no signature 'nope'"):
        inspect_path(result.path, signature="nope")
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "m"), "--signature", "classify", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["latest"]["variables"] == [{"name": "w", "dtype": "DT_FLOAT", "shape": [2, 2], "size": 16}]
    res = CliRunner().invoke(app, ["inspect", str(tf1_model["prefix"])])
    assert res.exit_code == 0 and "w" in res.stdout and "(2, 2)" in res.stdout
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "m"), "--tag-set", "train"])
    assert "no meta graph tagged train" in one_line_error(res)


def test_run_errors_name_the_input(tf1_model, tmp_path) -> None:
    result = export_model(tf1_model["prefix"], tmp_path / "m", inputs=["inputs=tf_example"],
                          outputs=["value=value"])
    runner = CliRunner()
    assert "needs input(s) inputs" in one_line_error(runner.invoke(app, ["run", str(result.path)]))
    res = runner.invoke(app, ["run", str(result.path), "--input", "inputs=[1]", "--input", "zz=2"])
    assert "no input(s) zz" in one_line_error(res)
    res = runner.invoke(app, ["run", str(result.path), "--signature", "nope", "--input", "inputs=[1]"])
    assert "no signature 'nope'" in one_line_error(res)
    res = runner.invoke(app, ["run", str(result.path), "--input", "inputs=missing.npy"])
    assert "--input inputs: cannot read missing.npy" in one_line_error(res)
    res = runner.invoke(app, ["run", str(result.path), "--input", 'inputs=["garbage"]'])
    assert "signature 'serving_default' failed" in one_line_error(res)
    # serialized tf.Examples from JSON, as saved_model_cli's --input_examples: sum(x @ w) = [5.0, 0.0]
    res = runner.invoke(app, ["run", str(result.path), "--input-examples",
                              'inputs=[{"x": [1.0, 2.0]}, {"x": [0.5, 0.0]}]', "--json"])
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(json.loads(res.stdout)["outputs"]["value"]["value"], [5.0, 0.0])
    res = runner.invoke(app, ["run", str(result.path), "--input-examples", 'inputs=[{"x": [1, 2]}]'])  # int64s
    assert "Key: x, Index: 0.  Data types don't match" in one_line_error(res)
    res = runner.invoke(app, ["run", str(result.path), "--input-examples", 'inputs=[{"x": [true]}]'])
    assert "feature 'x' must be a list of numbers or of strings" in one_line_error(res)


MODULE_FACTORY = '''
import tensorflow as tf


class Scaler(tf.Module):
    def __init__(self):
        super().__init__()
        self.w = tf.Variable([1.0, 2.0, 3.0])

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="values")])
    def __call__(self, values):
        return {"scaled": values * self.w}


def make():
    return Scaler()
'''


def test_tf2_checkpoint_of_a_tf_module_uses_its_call_signature(tmp_path) -> None:
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "scaler_factory.py").write_text(MODULE_FACTORY)
    ckpt = tf.train.Checkpoint(w=tf.Variable([2.0, -1.0, 0.5]))  # the module itself as the checkpoint's root
    prefix = ckpt.write(str(tmp_path / "ckpt" / "scaler"))
    result = export_model(prefix, tmp_path / "m", model_factory="scaler_factory:make",
                          model_factory_path=tmp_path / "mods")
    sig = inspect_path(result.path).meta_graph().signature("serving_default")
    assert [t.key for t in sig.inputs] == ["values"] and [t.key for t in sig.outputs] == ["scaled"]
    res = CliRunner().invoke(app, ["run", str(result.path), "--input", "values=[[1, 1, 2]]", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["outputs"]["scaled"]["value"] == [[2.0, -1.0, 1.0]]
    with pytest.raises(ExportError, match=r"1 variable\(s\) with another shape: w model \[3\] vs checkpoint \[2\]"):
        bad = tf.train.Checkpoint(w=tf.Variable([2.0, -1.0])).write(str(tmp_path / "ckpt2" / "scaler"))
        export_model(bad, tmp_path / "m2", model_factory="scaler_factory:make", model_factory_path=tmp_path / "mods")
    assert not (tmp_path / "m2").exists()


def test_cli_inspect_renders_graphs(tf1_model, tmp_path) -> None:
    (tmp_path / "empty.pb").write_bytes(b"")  # parses as an empty GraphDef: no nodes
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "empty.pb")])
    assert "is not a GraphDef" in one_line_error(res)
    res = CliRunner().invoke(app, ["inspect", f"{tf1_model['prefix']}.meta"])
    assert res.exit_code == 0, res.output
    assert "tf_example:0" in res.stdout and "DT_STRING" in res.stdout and "scores:0" in res.stdout


@pytest.mark.parametrize("form", ["prefix", "meta", "dir"])
def test_tf1_checkpoint_given_as_prefix_meta_or_directory(tf1_model, tmp_path, form) -> None:
    prefix = tf1_model["prefix"]
    source = {"prefix": prefix, "meta": Path(f"{prefix}.meta"), "dir": prefix.parent}[form]
    result = export_model(source, tmp_path / "m", inputs=["inputs=tf_example"], outputs=["value=value"])
    assert result.kind == "tf1-checkpoint" and result.signatures == ["serving_default"]
    assert [v.name for v in inspect_path(result.path).variables] == ["w"]


def test_tf2_saved_model_reexported_with_warmup_keeps_its_signature(small_keras, tmp_path) -> None:
    first = export_model(small_keras, tmp_path / "a", warmup=False)
    assert not warmup_path(first.path).exists()
    again = export_model(first.path, tmp_path / "b", warmup_shapes=["features=3x4"])
    assert again.kind == "saved-model" and again.signatures == ["serving_default"] and again.warmup_records == 1
    log = prediction_log_pb2.PredictionLog.FromString(
        next(iter(tf.data.TFRecordDataset(str(warmup_path(again.path))))).numpy())
    assert tf.make_ndarray(log.predict_log.request.inputs["features"]).shape == (3, 4)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    want = keras.saving.load_model(small_keras)(x)
    got = tf.saved_model.load(str(again.path)).signatures["serving_default"](features=tf.constant(x))["score"]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_frozen_pbtxt_without_flags_gets_its_placeholders_and_unconsumed_ops(tmp_path) -> None:
    from google.protobuf import text_format

    graph = tf.Graph()
    with graph.as_default():
        a = tf.compat.v1.placeholder(tf.float32, [None, 2], name="a")
        tf.multiply(a, 3.0, name="tripled")
    path = tmp_path / "graph.pbtxt"
    path.write_text(text_format.MessageToString(graph.as_graph_def()))
    result = export_model(path, tmp_path / "m")
    sig = inspect_path(result.path).meta_graph().signature("serving_default")
    assert [(t.key, t.name) for t in sig.inputs] == [("a", "a:0")]
    assert [(t.key, t.name) for t in sig.outputs] == [("tripled", "tripled:0")]
    res = CliRunner().invoke(app, ["run", str(result.path), "--input", "a=[[1, 2]]", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["outputs"]["tripled"]["value"] == [[3.0, 6.0]]
    res = CliRunner().invoke(app, ["export", "--help"])
    assert res.exit_code == 0 and "--model-factory" in res.stdout and "--warmup-request" in res.stdout
