"""Models with tf.text ops load as on tensorflow_model_server, whose binary links those ops in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
