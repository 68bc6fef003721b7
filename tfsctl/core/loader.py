"""Loads one SavedModel version: checks the directory, loads the ``serve`` graph, replays warmup requests.

A version is only handed to the Manager once all of this succeeded, so a corrupt or half-copied directory, or a
warmup request the model cannot answer, is a load error and never an AVAILABLE version that fails requests.
Warmup follows TF Serving: ``assets.extra/tf_serving_warmup_requests`` is a TFRecord file of ``PredictionLog``
(predict / classify / regress / multi_inference logs), at most :data:`MAX_WARMUP_RECORDS` records, each replayed
``num_request_iterations`` times.
"""

from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfsctl.core.servable import Resources, Servable, example_input_key, examples_from_input
from tfsctl.savedmodel import (
    CLASSIFY_METHOD,
    REGRESS_METHOD,
    SERVE_TAG,
    find_meta_graph,
    is_saved_model_dir,
    read_saved_model,
)

WARMUP_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit; a longer file is a load error.
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class LoadError(Exception):
    """A version could not be loaded; the message says which version and why."""


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def disk_bytes(path: str | Path) -> int:
    """Total size of the files under ``path``."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return total


@dataclass(frozen=True)
class LoadOptions:
    """How every version is loaded and warmed: tensorflow_model_server's session and warmup flags.

    ``session_config`` is a serialized ``tensorflow.ConfigProto`` (from ``--tensorflow_session_config_file`` or the
    platform config); the parallelism fields override its thread counts when non-zero, as in TF Serving.
    """

    saved_model_tags: frozenset[str] = frozenset({"serve"})
    session_config: bytes = b""
    intra_op_parallelism: int = 0
    inter_op_parallelism: int = 0
    per_process_gpu_memory_fraction: float = 0.0
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1


class Loader:
    """Loads ``path`` as version ``version`` of model ``name``; one Loader per version."""

    def __init__(
        self,
        name: str,
        version: int,
        path: str | Path,
        *,
        max_warmup_records: int = MAX_WARMUP_RECORDS,
        warmup_iterations: int = 1,
        options: LoadOptions | None = None,
    ) -> None:
        self.options = options or LoadOptions()
        self.name = name
        self.version = int(version)
        self.path = Path(path)
        self.max_warmup_records = max_warmup_records
        self.warmup_iterations = max(1, warmup_iterations)
        self._servable: Servable | None = None
        self._where = f"model '{name}' version {self.version} ({self.path})"

    def estimate_resources(self) -> Resources:
        """Before loading: bytes on disk (RAM use is measured by :meth:`load` and kept in ``servable.resources``)."""
        return Resources(disk_bytes=disk_bytes(self.path))

    def load(self) -> Servable:
        """Load the SavedModel and run its warmup records; raises LoadError with a clear reason."""
        started = time.monotonic()
        rss_before = rss_bytes()
        if not self.path.is_dir():
            raise LoadError(f"{self._where}: directory does not exist")
        if not is_saved_model_dir(self.path):
            raise LoadError(f"{self._where}: no saved_model.pb or saved_model.pbtxt")
        try:
            proto = read_saved_model(self.path)
        except Exception as e:  # noqa: BLE001 - garbage on disk in any form is a load error
            raise LoadError(f"{self._where}: cannot parse the SavedModel proto: {type(e).__name__}: {e}") from None
        meta_graph = find_meta_graph(proto, {SERVE_TAG})
        if meta_graph is None:
            tags = [sorted(mg.meta_info_def.tags) for mg in proto.meta_graphs]
            raise LoadError(f"{self._where}: no meta graph tagged ['serve'] (tag-sets: {tags})")

        import tensorflow as tf

        try:
            loaded = tf.saved_model.load(str(self.path), tags=[SERVE_TAG])
        except Exception as e:  # noqa: BLE001 - TF raises many types for broken exports
            raise LoadError(f"{self._where}: TensorFlow could not load it: {type(e).__name__}: {_short(e)}") from None
        servable = Servable(self.name, self.version, self.path, meta_graph.signature_def, loaded)
        try:
            count = self._warmup(servable)
        except LoadError:
            servable.close()
            raise
        except Exception as e:  # noqa: BLE001
            servable.close()
            raise LoadError(f"{self._where}: warmup failed: {type(e).__name__}: {_short(e)}") from None
        servable.resources = Resources(
            disk_bytes=disk_bytes(self.path),
            ram_bytes=max(0, rss_bytes() - rss_before),
            load_seconds=time.monotonic() - started,
        )
        servable.warmup_records = count
        self._servable = servable
        return servable

    def unload(self) -> None:
        """Release the loaded version (the Manager calls this once no handle holds it)."""
        if self._servable is not None:
            self._servable.close()
            self._servable = None
        gc.collect()

    # --- warmup ---

    def _warmup(self, servable: Servable) -> int:
        path = self.path / WARMUP_DIR / WARMUP_FILE
        if not path.is_file():
            return 0
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        from tfsctl.serving.tensors import to_numpy

        count = 0
        try:
            records = list(tf.data.TFRecordDataset(str(path)).take(self.max_warmup_records + 1).as_numpy_iterator())
        except Exception as e:  # noqa: BLE001
            raise LoadError(f"{self._where}: warmup file {path} is unreadable: {_short(e)}") from None
        if len(records) > self.max_warmup_records:
            raise LoadError(
                f"{self._where}: warmup file has more than the maximum of {self.max_warmup_records} records"
            )
        for index, raw in enumerate(records):
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(raw)
            except Exception as e:  # noqa: BLE001
                raise LoadError(f"{self._where}: warmup record {index} is not a PredictionLog: {e}") from None
            where = f"{self._where}: warmup record {index}"
            kind = log.WhichOneof("log_type")
            calls: list[tuple[str, dict[str, np.ndarray], list[str]]] = []
            if kind == "predict_log":
                req = log.predict_log.request
                inputs = {k: to_numpy(v, k) for k, v in req.inputs.items()}
                calls.append((req.model_spec.signature_name, inputs, list(req.output_filter)))
            elif kind in ("classify_log", "regress_log"):
                req = log.classify_log.request if kind == "classify_log" else log.regress_log.request
                method = CLASSIFY_METHOD if kind == "classify_log" else REGRESS_METHOD
                spec = servable.signature(req.model_spec.signature_name)
                key = example_input_key(spec, method, where)
                calls.append((spec.name, {key: examples_from_input(req.input, where)}, []))
            elif kind == "multi_inference_log":
                req = log.multi_inference_log.request
                examples = examples_from_input(req.input, where)
                for task in req.tasks:
                    spec = servable.signature(task.model_spec.signature_name)
                    key = example_input_key(spec, task.method_name or spec.method_name, where)
                    calls.append((spec.name, {key: examples}, []))
            else:
                raise LoadError(f"{where}: unsupported warmup log type {kind or 'empty'}")
            for _ in range(self.warmup_iterations):
                for signature_name, inputs, output_filter in calls:
                    try:
                        servable.run(signature_name, inputs, output_filter)
                    except Exception as e:  # noqa: BLE001
                        raise LoadError(f"{where} failed: {getattr(e, 'message', None) or e}") from None
            count += 1
        return count


def _short(e: BaseException, limit: int = 500) -> str:
    text = getattr(e, "message", None) or str(e)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
