"""Models with tf.text ops load as on tensorflow_model_server, whose binary links those ops in; models with other
custom ops serve once their library is given with --op_library (tfsctl-only)."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from tfsctl.core.loader import register_op_libraries  # noqa: E402


def test_only_an_unregistered_op_error_imports_a_library():
    assert register_op_libraries("NotFoundError: file not found") is False
    assert register_op_libraries("Op type not registered 'MyCustomOp' in binary") is False


def test_a_tf_text_model_loads_in_a_fresh_process(tmp_path):
    """The model is written here (tensorflow_text imported); a fresh process that never imported it loads and
    runs it through the Loader, which registers the ops on the "Op type not registered" error."""
    import tensorflow as tf
    import tensorflow_text as text  # a runtime dependency of tfsctl, as the ops are part of TF Serving's binary

    class Tokens(tf.Module):
        def __init__(self) -> None:
            self.tok = text.WhitespaceTokenizer()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, s):
            return {"tokens": self.tok.tokenize(s).to_tensor(default_value="")}

    m = Tokens()
    tf.saved_model.save(m, str(tmp_path / "1"), signatures={"serving_default": m.serve})
    script = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from tfsctl.core.loader import Loader
        assert "tensorflow_text" not in sys.modules
        out = Loader("t", 1, {str(tmp_path / "1")!r}).load().run("", {{"text": np.array([b"hello big world"])}})
        print(json.dumps([t.decode() for t in out["tokens"][0]]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["hello", "big", "world"]


# --- custom ops from a shared library, without rebuilding the server (--op_library) ---------------------------

_OP_SOURCE = r"""
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

REGISTER_OP("TfsctlHalfPlusTwo")
    .Input("x: float")
    .Output("y: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

class TfsctlHalfPlusTwo : public tensorflow::OpKernel {
 public:
  explicit TfsctlHalfPlusTwo(tensorflow::OpKernelConstruction* ctx) : OpKernel(ctx) {}
  void Compute(tensorflow::OpKernelContext* ctx) override {
    const tensorflow::Tensor& in = ctx->input(0);
    tensorflow::Tensor* out = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, in.shape(), &out));
    const float* x = in.flat<float>().data();
    float* y = out->flat<float>().data();
    for (int64_t i = 0; i < in.NumElements(); ++i) y[i] = 0.5f * x[i] + 2.0f;
  }
};

REGISTER_KERNEL_BUILDER(Name("TfsctlHalfPlusTwo").Device(tensorflow::DEVICE_CPU), TfsctlHalfPlusTwo);
"""

# Writes a TF1 SavedModel (SavedModelBuilder) whose graph computes y with the library's op; run in a child
# process so the test process never registers the op.
_WRITE_MODEL = """
import sys
import tensorflow as tf
ops = tf.load_op_library(sys.argv[1])
tf1 = tf.compat.v1
with tf.Graph().as_default() as graph:
    x = tf1.placeholder(tf.float32, [None], name="x")
    y = tf.identity(ops.tfsctl_half_plus_two(x), name="y")
    with tf1.Session(graph=graph) as session:
        builder = tf1.saved_model.Builder(sys.argv[2])
        signature = tf1.saved_model.predict_signature_def({"x": x}, {"y": y})
        builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={"serving_default": signature})
        builder.save()
"""


def _compile(source: str, out: Path, tf_flags: bool) -> Path:
    """g++ -shared; with TensorFlow's compile and link flags (tf.sysconfig) when ``tf_flags``."""
    src = out.with_suffix(".cc")
    src.write_text(source)
    flags: list[str] = []
    if tf_flags:
        query = "import tensorflow as tf; print(repr(tf.sysconfig.get_compile_flags() + tf.sysconfig.get_link_flags()))"
        got = subprocess.run([sys.executable, "-c", query], capture_output=True, text=True, timeout=120, check=True)
        flags = ast.literal_eval(got.stdout.strip().splitlines()[-1])
    done = subprocess.run(["g++", "-std=c++17", "-shared", "-fPIC", "-O1", "-w", str(src), "-o", str(out), *flags],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def custom_op_model(tmp_path_factory) -> tuple[Path, Path]:
    """(the op library, a base path whose version 1 uses its op)."""
    tmp = tmp_path_factory.mktemp("custom_op")
    library = _compile(_OP_SOURCE, tmp / "half_plus_two_op.so", tf_flags=True)
    base = tmp / "model"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", _WRITE_MODEL, str(library), str(base / "1")], capture_output=True,
                          text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return library, base


def _serve(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "tfsctl", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, "-m", "tfsctl", "serve", *args], capture_output=True, text=True,
                          env=env, timeout=240)


def test_a_model_with_a_custom_op_serves_with_op_library(custom_op_model):
    import grpc
    import numpy as np
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from tfsctl.tensors import from_numpy, to_numpy
    from tfsctl.testing import free_port, wait_until

    library, base = custom_op_model
    port = free_port()
    proc = _serve([f"--port={port}", "--host=127.0.0.1", "--model_name=custom", f"--model_base_path={base}",
                   f"--op_library={library}", "--max_num_load_retries=0"])
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        def serving() -> bool:
            assert proc.poll() is None, "".join(lines)
            return any("serving gRPC on" in line for line in lines)

        wait_until(serving, 180, "a 'serving gRPC on' line", every=0.05, explain=lambda: "".join(lines))
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "custom"
        request.inputs["x"].CopyFrom(from_numpy(np.array([1.0, 2.0, 5.0], np.float32)))
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
        np.testing.assert_allclose(to_numpy(reply.outputs["y"]), [2.5, 3.0, 4.5])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_without_op_library_the_model_fails_with_op_type_not_registered(custom_op_model):
    _, base = custom_op_model
    done = _run(["--port=0", "--host=127.0.0.1", "--model_name=custom", f"--model_base_path={base}",
                 "--max_num_load_retries=0"])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Op type not registered 'TfsctlHalfPlusTwo'" in done.stderr, done.stderr[-3000:]


def test_a_missing_or_incompatible_op_library_stops_the_start_naming_the_file(custom_op_model, tmp_path):
    """Both before any model loads: exit 1 with `error: op library FILE: ...`."""
    _, base = custom_op_model
    missing = tmp_path / "absent_op.so"
    done = _run(["--port=0", "--model_name=custom", f"--model_base_path={base}", f"--op_library={missing}"])
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"error: op library {missing}: no such file" in " ".join(done.stderr.split()), done.stderr[-3000:]

    # A library that cannot be linked into this process (as one built against another TensorFlow): an unresolved
    # symbol. In-process: nothing gets registered when dlopen fails.
    from tfsctl.core.loader import load_op_library_files
    from tfsctl.errors import ConfigError

    broken = _compile("extern void tfsctl_not_defined_anywhere();\nvoid use() { tfsctl_not_defined_anywhere(); }\n",
                      tmp_path / "broken_op.so", tf_flags=False)
    with pytest.raises(ConfigError, match=r"op library .*broken_op\.so: TensorFlow .* could not load it: .*"
                                          r"undefined symbol"):
        load_op_library_files([str(broken)])
