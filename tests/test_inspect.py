"""tfsctl inspect on SavedModels written by plain tf.saved_model.save, on base paths, and on things that are not."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from tfsctl.cli import app  # noqa: E402
from tfsctl.errors import InspectError  # noqa: E402
from tfsctl.inspection import BasePathInfo, SavedModelInfo, inspect_path  # noqa: E402


class _Plain(tf.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = tf.Variable(2.0)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def scale(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"y": x * self.w, "n": tf.shape(x, out_type=tf.int64)[0]}

    @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name="blob"),
                                  tf.TensorSpec([2, 5], tf.int32, name="ids")])
    def mixed(self, blob: tf.Tensor, ids: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"length": tf.strings.length(blob), "total": tf.reduce_sum(ids, axis=1)}


@pytest.fixture(scope="module")
def plain_saved_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("plain") / "sm"
    module = _Plain()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.scale, "mixed": module.mixed})
    return path


def test_inspect_plain_saved_model(plain_saved_model: Path) -> None:
    info = inspect_path(plain_saved_model)
    assert isinstance(info, SavedModelInfo)
    assert info.tag_sets == [["serve"]] and info.version is None and info.warmup_records is None
    mg = info.meta_graph()
    assert mg.tensorflow_version == tf.__version__
    default = mg.signature("serving_default")
    assert default.method_name == "tensorflow/serving/predict"
    assert [(t.key, t.dtype, t.shape, t.shape_str) for t in default.inputs] == [("x", "DT_FLOAT", [-1, 3],
                                                                                 "(-1, 3)")]
    assert {t.key: (t.dtype, t.shape_str) for t in default.outputs} == {"y": ("DT_FLOAT", "(-1, 3)"),
                                                                        "n": ("DT_INT64", "()")}
    mixed = mg.signature("mixed")
    ins = {t.key: t for t in mixed.inputs}
    assert ins["blob"].shape is None and ins["blob"].shape_str == "unknown_rank" and ins["blob"].dtype == "DT_STRING"
    assert ins["ids"].shape == [2, 5] and ins["ids"].name.endswith(":0")
    assert {t.key: t.shape_str for t in mixed.outputs} == {"length": "unknown_rank", "total": "(2,)"}
    json.dumps(info.to_dict())  # everything JSON-serialisable


def test_inspect_accepts_the_pb_file_itself(plain_saved_model: Path) -> None:
    info = inspect_path(plain_saved_model / "saved_model.pb")
    assert isinstance(info, SavedModelInfo) and info.path == str(plain_saved_model)


def test_inspect_base_path_lists_versions(plain_saved_model: Path, tmp_path: Path) -> None:
    import shutil

    base = tmp_path / "model"
    shutil.copytree(plain_saved_model, base / "3")
    shutil.copytree(plain_saved_model, base / "10")
    (base / "7").mkdir()  # not a SavedModel
    (base / "11").mkdir()
    (base / "11" / "saved_model.pb").write_bytes(b"\x00garbage\xff" * 10)  # corrupt
    (base / ".tmp-12-abc").mkdir()  # an export in progress: ignored
    (base / "notes").mkdir()
    info = inspect_path(base)
    assert isinstance(info, BasePathInfo)
    assert [(v.version, v.valid) for v in info.versions] == [(3, True), (7, False), (10, True), (11, False)]
    assert info.versions[0].signatures == ["mixed", "serving_default"]
    assert "not a SavedModel" in info.versions[1].error
    assert "cannot parse" in info.versions[3].error
    assert info.latest is not None and info.latest.version == 10
    data = info.to_dict()
    assert data["kind"] == "base_path" and data["latest"]["version"] == 10


@pytest.mark.parametrize("make", ["missing", "file", "empty_dir", "corrupt", "pbtxt_garbage"])
def test_inspect_rejects_non_saved_models(tmp_path: Path, make: str) -> None:
    target = tmp_path / "target"
    if make == "file":
        target.write_text("hello")
    elif make == "empty_dir":
        target.mkdir()
        (target / "variables").mkdir()
    elif make == "corrupt":
        target.mkdir()
        (target / "saved_model.pb").write_bytes(b"\xff\xff\xff\xff not a proto")
    elif make == "pbtxt_garbage":
        target.mkdir()
        (target / "saved_model.pbtxt").write_text("meta_graphs { this is not text proto")
    with pytest.raises(InspectError) as err:
        inspect_path(target)
    assert str(target) in str(err.value)


def test_cli_inspect_tables_and_json(plain_saved_model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", str(plain_saved_model)])
    assert res.exit_code == 0, res.output
    for text in ("serving_default", "mixed", "DT_STRING", "unknown_rank", "tensorflow/serving/predict"):
        assert text in res.output
    res = runner.invoke(app, ["inspect", str(plain_saved_model), "--json"])
    assert res.exit_code == 0
    assert json.loads(res.stdout)["tag_sets"] == [["serve"]]
    res = runner.invoke(app, ["inspect", str(tmp_path)])
    assert res.exit_code == 1
    output = " ".join(res.output.split())  # rich wraps long lines
    assert "is not a SavedModel" in output and "Traceback" not in output
