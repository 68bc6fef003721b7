"""``tfsctl run``: one signature of a SavedModel on given inputs, as ``saved_model_cli run`` does.

The model is loaded as TF Serving loads it (``tf.compat.v1.saved_model.loader.load`` into a session, the meta graph
chosen by its tag-set) and the signature's output tensors are fetched with the inputs fed by tensor name. An input
VALUE is

* ``file.npy``; ``file.npz[key]`` (one array of an .npz; ``file.npz`` alone when it holds exactly one),
* ``@image.png`` (or any image PIL reads): uint8 [1, H, W, 3] for a numeric input, the encoded bytes [1] for a
  DT_STRING input,
* otherwise a JSON literal (``[[1, 2, 3, 4]]``, ``"text"``, ``3.5``), cast to the input's dtype.

``--input-examples KEY=[{"x": [1.0, 2.0]}, ...]`` feeds serialized tf.Examples built from JSON objects of feature
lists (ints -> int64_list, floats -> float_list, strings -> bytes_list), as ``saved_model_cli run --input_examples``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tfsctl.errors import RunError
from tfsctl.savedmodel import DEFAULT_SIGNATURE, INIT_OP_SIGNATURE, SERVE_TAG, find_meta_graph, read_saved_model
from tfsctl.tf_messages import tf_error_line

_NPZ_RE = re.compile(r"^(?P<file>.+\.npz)\[(?P<key>[^\]]+)\]$")


@dataclass
class RunResult:
    """The outputs of one signature call, by output key."""

    path: str
    signature: str
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "signature": self.signature, "written": list(self.written),
                "outputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape), "value": _jsonable(v)}
                            for k, v in self.outputs.items()}}


def _jsonable(value: np.ndarray) -> Any:
    if value.dtype == object:
        return [_jsonable(np.asarray(v)) for v in value] if value.ndim else \
            (value.item().decode("utf-8", "replace") if isinstance(value.item(), bytes) else value.item())
    return value.tolist()


def parse_inputs(items: list[str], flag: str = "--input") -> dict[str, str]:
    """``["KEY=VALUE", ...]`` -> {KEY: VALUE}; RunError naming the flag for a malformed or repeated item."""
    result: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RunError(f"{flag} {item!r} is not KEY=VALUE")
        if key.strip() in result:
            raise RunError(f"{flag} {key.strip()!r} is given twice")
        result[key.strip()] = value
    return result


def examples_value(key: str, text: str) -> np.ndarray:
    """``[{"feature": [values]}, ...]`` -> serialized tf.Examples, a DT_STRING [N] array."""
    from tensorflow.core.example import example_pb2

    where = f"--input-examples {key}"
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RunError(f"{where}: not JSON: {exc}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise RunError(f"{where}: expected a JSON list of objects (feature name: list of values)")
    serialized = []
    for row in rows:
        example = example_pb2.Example()
        for name, raw in row.items():
            values = raw if isinstance(raw, list) else [raw]
            feature = example.features.feature[name]
            if all(isinstance(v, str) for v in values):
                feature.bytes_list.value.extend(v.encode() for v in values)
            elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                feature.int64_list.value.extend(values)
            elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                feature.float_list.value.extend(float(v) for v in values)
            else:
                raise RunError(f"{where}: feature {name!r} must be a list of numbers or of strings")
        serialized.append(example.SerializeToString())
    return np.array(serialized, dtype=object)


def load_value(key: str, text: str, dtype: Any) -> np.ndarray:
    """One input VALUE (file, @image or JSON literal) as an array of ``dtype`` (a tf.DType)."""
    where = f"--input {key}"
    if text.startswith("@"):
        return _image(Path(text[1:]), dtype, where)
    match = _NPZ_RE.match(text)
    if match or text.endswith(".npz"):
        path = Path(match.group("file") if match else text)
        try:
            with np.load(path, allow_pickle=False) as npz:
                if match:
                    if match.group("key") not in npz.files:
                        raise RunError(f"{where}: {path} has no array {match.group('key')!r} (arrays: "
                                       f"{', '.join(npz.files)})")
                    array = npz[match.group("key")]
                elif len(npz.files) == 1:
                    array = npz[npz.files[0]]
                else:
                    raise RunError(f"{where}: {path} holds {len(npz.files)} arrays; name one as "
                                   f"{path}[{npz.files[0]}]")
        except (OSError, ValueError) as exc:
            raise RunError(f"{where}: cannot read {path}: {exc}") from None
        return _cast(array, dtype, where)
    if text.endswith(".npy"):
        try:
            return _cast(np.load(text, allow_pickle=False), dtype, where)
        except (OSError, ValueError) as exc:
            raise RunError(f"{where}: cannot read {text}: {exc}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        if Path(text).exists():
            raise RunError(f"{where}: {text} is neither .npy nor .npz (use @{text} for an image)") from None
        raise RunError(f"{where}: {text!r} is not a .npy/.npz file, @image or JSON literal") from None
    return _cast(value, dtype, where)


def _cast(value: Any, dtype: Any, where: str) -> np.ndarray:
    try:
        if dtype.name == "string":
            array = np.asarray(value, dtype=object)
            return np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(array) \
                if array.size else array
        array = np.asarray(value)
        if array.dtype.kind in "fc" and np.dtype(dtype.as_numpy_dtype).kind in "iub" and \
                not np.all(np.equal(np.mod(array, 1), 0)):
            raise RunError(f"{where}: non-integer values for a {dtype.name} input")
        return array.astype(dtype.as_numpy_dtype, casting="unsafe")
    except (ValueError, TypeError) as exc:
        raise RunError(f"{where}: not a {dtype.name} tensor: {exc}") from None


def _image(path: Path, dtype: Any, where: str) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RunError(f"{where}: cannot read image {path}: {exc.strerror or exc}") from None
    if dtype.name == "string":
        return np.array([data], dtype=object)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise RunError(f"{where}: {path} is not an image: {exc}") from None
    return _cast(array[None], dtype, where)


def run_signature(path: str | Path, signature: str = DEFAULT_SIGNATURE, inputs: dict[str, str] | None = None,
                  *, tags: set[str] | frozenset[str] = frozenset({SERVE_TAG}),
                  output_dir: str | Path | None = None, overwrite: bool = False,
                  examples: dict[str, str] | None = None) -> RunResult:
    """Load ``path`` (tag-set ``tags``), run ``signature`` on ``inputs`` ({key: VALUE}) and ``examples``
    ({key: JSON list of feature objects}); RunError on any failure."""
    import tensorflow as tf

    p = Path(path)
    try:
        proto = read_saved_model(p)
    except Exception as exc:  # noqa: BLE001 - missing dir, bad proto
        raise RunError(f"{p}: not a readable SavedModel: {str(exc).strip().splitlines()[0]}") from None
    mg = find_meta_graph(proto, set(tags))
    if mg is None:
        have = "; ".join(",".join(m.meta_info_def.tags) for m in proto.meta_graphs)
        raise RunError(f"{p}: no meta graph tagged {','.join(sorted(tags))} (tag-sets: {have}); --tag-set picks one")
    names = sorted(n for n in mg.signature_def if n != INIT_OP_SIGNATURE)
    if signature not in mg.signature_def or signature == INIT_OP_SIGNATURE:
        raise RunError(f"{p}: no signature {signature!r} (signatures: {', '.join(names)})")
    sig = mg.signature_def[signature]
    given = dict(inputs or {})
    for key in examples or {}:
        if key in given:
            raise RunError(f"input {key!r} is given by both --input and --input-examples")
        given[key] = ""
    missing = sorted(set(sig.inputs) - set(given))
    extra = sorted(set(given) - set(sig.inputs))
    if missing:
        raise RunError(f"signature {signature!r} needs input(s) {', '.join(missing)}: pass --input KEY=VALUE")
    if extra:
        raise RunError(f"signature {signature!r} has no input(s) {', '.join(extra)} (inputs: "
                       f"{', '.join(sorted(sig.inputs))})")
    feeds = {k: examples_value(k, examples[k]) if examples and k in examples else
             load_value(k, v, tf.as_dtype(sig.inputs[k].dtype)) for k, v in given.items()}
    out_dir = Path(output_dir) if output_dir is not None else None
    if out_dir is not None and not overwrite:
        clash = [k for k in sig.outputs if (out_dir / f"{k}.npy").exists()]
        if clash:
            raise RunError(f"--output-dir: {out_dir / (clash[0] + '.npy')} exists; pass --overwrite")
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        try:
            tf.compat.v1.saved_model.loader.load(sess, sorted(tags), str(p))
            fetched = sess.run({k: v.name for k, v in sig.outputs.items()},
                               feed_dict={sig.inputs[k].name: v for k, v in feeds.items()})
        except Exception as exc:  # noqa: BLE001 - TF runtime errors of every kind
            raise RunError(f"signature {signature!r} failed: {tf_error_line(exc)}") from None
    result = RunResult(path=str(p), signature=signature, outputs={k: np.asarray(v) for k, v in fetched.items()})
    if out_dir is not None:
        result.written = _write_outputs(out_dir, result.outputs)
    return result


def _write_outputs(out_dir: Path, outputs: dict[str, np.ndarray]) -> list[str]:
    """One ``KEY.npy`` per output, each written to a temp file and renamed (never half-written)."""
    import os
    import tempfile

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for key, value in outputs.items():
            target = out_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.npy"
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=out_dir)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, value, allow_pickle=value.dtype == object)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                with __import__("contextlib").suppress(OSError):
                    os.unlink(tmp)
                raise
            written.append(str(target))
        return written
    except OSError as exc:
        raise RunError(f"--output-dir {out_dir}: cannot write: {exc.strerror or exc}") from None
