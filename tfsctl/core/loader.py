"""Loads one SavedModel version as TF Serving's SavedModelBundle: the meta graph chosen by tags, in its own session.

The MetaGraphDef whose tag set equals ``LoadOptions.saved_model_tags`` (default {"serve"}) is imported into a fresh
``tf.Graph`` and run in a ``tf.compat.v1.Session`` configured from the options (ConfigProto, thread pools, GPU
memory fraction), with variables restored and the init op (``__saved_model_init_op``, legacy init op or main_op)
run — TF1 exports, Estimator graphs, TF2 ``tf.saved_model.save`` and Keras exports alike.
A version is only handed to the Manager once all of this and the warmup replay succeeded, so a corrupt or
half-copied directory, or a warmup request the model cannot answer, is a load error and never an AVAILABLE version
that fails requests. Warmup follows TF Serving: ``assets.extra/tf_serving_warmup_requests`` is a TFRecord file of
``PredictionLog`` records (at most :data:`MAX_WARMUP_RECORDS`), each replayed ``num_request_iterations_for_warmup``
times through the same request-core functions as live requests (:mod:`tfsctl.core.inference`).
With ``prefer_tflite_model`` a version directory holding ``model.tflite`` is loaded from that file instead
(:mod:`tfsctl.core.tflite_servable`, TF Serving's rule) and warmed the same way.
"""

from __future__ import annotations

import gc
import importlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tfsctl.core import deadlines, inference
from tfsctl.core.memory import rss_bytes
from tfsctl.core.servable import Resources, Servable
from tfsctl.errors import ConfigError, ServingError
from tfsctl.savedmodel import WARMUP_DIR, WARMUP_FILE, is_saved_model_dir, read_saved_model, warmup_path
from tfsctl.tflite_model import TfLiteModelError, read_model, tflite_file

MAX_WARMUP_RECORDS = 1000  # TF Serving's limit; a longer file is a load error.
# The deadline of each warmup record's last run (which builds the executor requests with a deadline use).
WARMUP_DEADLINE_S = 3600.0

__all__ = ["MAX_WARMUP_RECORDS", "WARMUP_DIR", "WARMUP_FILE", "LoadError", "LoadOptions", "Loader", "disk_bytes",
           "rss_bytes"]


class LoadError(Exception):
    """A version could not be loaded; the message says which version and why."""


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
    ``enable_signature_method_name_check`` applies to warmup replay as it does to live requests.
    """

    saved_model_tags: frozenset[str] = frozenset({"serve"})
    session_config: bytes = b""
    intra_op_parallelism: int = 0
    inter_op_parallelism: int = 0
    per_process_gpu_memory_fraction: float = 0.0
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    enable_signature_method_name_check: bool = False
    # --prefer_tflite_model: serve model.tflite when the version has one (tfsctl.core.tflite_servable), in a pool of
    # max(1, num_tflite_pools) interpreters; num_tflite_interpreters_per_pool > 1 merges waiting requests.
    prefer_tflite_model: bool = False
    num_tflite_pools: int = field(default_factory=lambda: os.cpu_count() or 1)  # TF Serving's flag default
    num_tflite_interpreters_per_pool: int = 1
    # --tflite_signature_runners (tfsctl's own): serve a model.tflite's LiteRT signatures by name instead of TF
    # Serving's generated serving_default (tfsctl.tflite_model).
    tflite_signature_runners: bool = False

    def inline_short_steps(self) -> bool:
        """Whether short steps may run in the caller's thread (see :mod:`tfsctl.core.servable`): only when the session
        config leaves the inter-op threads to TF (no explicit count, pools or per-session threads)."""
        config = self.config_proto()
        return (config.inter_op_parallelism_threads == 0 and not config.session_inter_op_thread_pool
                and not config.use_per_session_threads)

    def config_proto(self):
        """The session's ConfigProto: ``session_config`` with the parallelism and GPU overrides applied."""
        from tensorflow.core.protobuf import config_pb2

        config = config_pb2.ConfigProto()
        if self.session_config:
            config.ParseFromString(self.session_config)
        if self.intra_op_parallelism > 0 or self.inter_op_parallelism > 0:
            config.intra_op_parallelism_threads = max(0, self.intra_op_parallelism)
            config.inter_op_parallelism_threads = max(0, self.inter_op_parallelism)
        if self.per_process_gpu_memory_fraction > 0:
            config.gpu_options.per_process_gpu_memory_fraction = self.per_process_gpu_memory_fraction
        return config

log = logging.getLogger(__name__)


# Op libraries tensorflow_model_server links in, by the prefix their op names carry in a graph.
_OP_LIBRARIES = {"TFText>": "tensorflow_text"}
_registered: set[str] = set()


def register_op_libraries(error: str) -> bool:
    """Import the op library an "Op type not registered" error names (tensorflow_text for ``TFText>`` ops, which
    TF Serving's binary includes); True when one was newly imported, so loading again can succeed."""
    if "Op type not registered" not in error:
        return False
    imported = False
    for prefix, module in _OP_LIBRARIES.items():
        if prefix in error and module not in _registered:
            _registered.add(module)
            try:
                importlib.import_module(module)
            except ImportError:
                log.warning("the model needs %s ops: pip install %s", module, module.replace("_", "-"))
                continue
            imported = True
    return imported


def load_op_library_files(paths: list[str]) -> None:
    """Register the ops of custom-op shared libraries (``tf.load_op_library``) before any model loads, so graphs
    that use them import; ConfigError naming the file when it is missing or TensorFlow cannot load it (built
    against another TensorFlow, a missing symbol, not a shared library). A model whose op is in no loaded library
    fails its load with TensorFlow's "Op type not registered", as on tensorflow_model_server."""
    import tensorflow as tf

    for raw in paths:
        path = Path(raw).expanduser().absolute()
        if not path.is_file():
            raise ConfigError(f"op library {raw}: no such file")
        try:
            tf.load_op_library(str(path))
        except Exception as e:  # noqa: BLE001 - TF raises NotFoundError for dlopen and registration failures alike
            raise ConfigError(
                f"op library {raw}: TensorFlow {tf.__version__} could not load it: {_short(e)} (build it against "
                "this TensorFlow with tf.sysconfig.get_compile_flags() and get_link_flags())"
            ) from None
        log.info("loaded op library %s", path)


class Loader:
    """Loads ``path`` as version ``version`` of model ``name``; one Loader per version."""

    def __init__(
        self,
        name: str,
        version: int,
        path: str | Path,
        *,
        max_warmup_records: int = MAX_WARMUP_RECORDS,
        warmup_iterations: int | None = None,
        options: LoadOptions | None = None,
        observer: Any = None,
    ) -> None:
        """``observer`` (the server's metrics) gets TensorFlow's SavedModel load and TF Serving's warmup figures:
        ``observe_saved_model_load(path, ok, us, stages)`` and ``observe_warmup(path, status, us, records)``."""
        self.options = options or LoadOptions()
        self.observer = observer
        self.name = name
        self.version = int(version)
        self.path = Path(path)
        self.max_warmup_records = max_warmup_records
        iterations = self.options.num_request_iterations_for_warmup if warmup_iterations is None else warmup_iterations
        self.warmup_iterations = max(1, iterations)
        self._servable: Servable | None = None
        self._where = f"model '{name}' version {self.version} ({self.path})"

    def estimate_resources(self) -> Resources:
        """Before loading: bytes on disk (RAM use is measured by :meth:`load` and kept in ``servable.resources``)."""
        return Resources(disk_bytes=disk_bytes(self.path))

    def load(self) -> Servable:
        """Load the SavedModel bundle (or, with ``prefer_tflite_model``, its model.tflite) and run its warmup
        records; raises LoadError with a clear reason."""
        started = time.monotonic()
        rss_before = rss_bytes()
        if self.options.prefer_tflite_model and tflite_file(self.path).is_file():
            servable = self._load_tflite()  # TF Serving's rule: model.tflite wins when preferred and present
        else:
            servable = self._load_counted_saved_model(started)
        try:
            count = self._warmup(servable) if self.options.enable_model_warmup else 0
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

    def _count_load(self, started: float, ok: bool, stages: list[tuple[str, int]], status: str) -> None:
        """TensorFlow's LoadSavedModel log line and metrics (load_attempt_count, load_latency, by stage)."""
        us = int((time.monotonic() - started) * 1e6)
        tags = " ".join(sorted(self.options.saved_model_tags or {"serve"}))
        log.info("SavedModel load for tags { %s }; Status: %s: %s. Took %d microseconds.", tags,
                 "success" if ok else "fail", status, us)
        if self.observer is not None:
            self.observer.observe_saved_model_load(str(self.path), ok, us, stages)

    def _load_counted_saved_model(self, started: float) -> Servable:
        """The SavedModel bundle, counted and logged as TensorFlow's LoadSavedModel (attempts, latency, stages)."""
        stages: list[tuple[str, int]] = []
        try:
            session, meta_graph = self._load_saved_model(stages)
        except LoadError as e:
            self._count_load(started, False, stages, str(e))
            raise
        self._count_load(started, True, stages, "OK")
        servable = Servable(self.name, self.version, self.path, meta_graph.signature_def, session,
                            inline_short_steps=self.options.inline_short_steps())
        del meta_graph  # the graph lives in the session; keep only the SignatureDefs
        return servable

    def _load_saved_model(self, stages: list[tuple[str, int]]) -> tuple[Any, Any]:
        """TensorFlow's LoadSavedModel: the session (graph imported, variables restored, init op run) and the
        chosen MetaGraphDef; the restore_graph and init_graph stage times go to ``stages``."""
        if not self.path.is_dir():
            raise LoadError(f"{self._where}: directory does not exist")
        if not is_saved_model_dir(self.path):
            raise LoadError(f"{self._where}: no saved_model.pb or saved_model.pbtxt")
        try:
            proto = read_saved_model(self.path)
        except Exception as e:  # noqa: BLE001 - garbage on disk in any form is a load error
            raise LoadError(f"{self._where}: cannot parse the SavedModel proto: {type(e).__name__}: {_short(e)}"
                            ) from None
        tags = set(self.options.saved_model_tags) or {"serve"}
        meta_graph = next((mg for mg in proto.meta_graphs if set(mg.meta_info_def.tags) == tags), None)
        if meta_graph is None:
            available = [sorted(mg.meta_info_def.tags) for mg in proto.meta_graphs]
            raise LoadError(
                f"{self._where}: MetaGraphDef associated with tags {sorted(tags)} could not be found in SavedModel; "
                f"available tag-sets: {available} (choose one with --saved_model_tags, comma-separated)"
            )
        try:
            config = self.options.config_proto()
        except Exception as e:  # noqa: BLE001 - unparsable session_config bytes
            raise LoadError(f"{self._where}: invalid session config: {_short(e)}") from None
        del proto
        return self._open_session(sorted(tags), config, stages), meta_graph

    def _load_tflite(self) -> Servable:
        """``model.tflite`` in a pool of interpreters (tfsctl.core.tflite_servable)."""
        from tfsctl.core.tflite_servable import load_tflite

        try:
            content = read_model(self.path)
            return load_tflite(self.name, self.version, self.path, content,
                               num_pools=self.options.num_tflite_pools,
                               interpreters_per_pool=self.options.num_tflite_interpreters_per_pool,
                               signature_runners=self.options.tflite_signature_runners)
        except TfLiteModelError as e:
            raise LoadError(f"{self._where}: cannot load {tflite_file(self.path).name}: {_short(e)}") from None

    def _open_session(self, tags: list[str], config, stages: list[tuple[str, int]] | None = None):
        """A session over a fresh graph with the tagged meta graph imported, variables restored, init op run
        (TF1's loader, in its phases, so the restore and init times are known as TensorFlow's C++ loader's)."""
        import tensorflow as tf
        from tensorflow.python.saved_model import loader_impl
        from tensorflow.python.util import deprecation

        for attempt in (1, 2):
            graph = tf.Graph()
            session = tf.compat.v1.Session(graph=graph, config=config)
            try:
                with graph.as_default(), deprecation.silence():  # the v1 loader is the SavedModelBundle path
                    start = time.monotonic()
                    loader = loader_impl.SavedModelLoader(str(self.path))
                    saver, _ = loader.load_graph(graph, tags)
                    loader.restore_variables(session, saver)
                    restored = time.monotonic()
                    loader.run_init_ops(session, tags)
                    if stages is not None:
                        stages += [("restore_graph", int((restored - start) * 1e6)),
                                   ("init_graph", int((time.monotonic() - restored) * 1e6))]
                break
            except Exception as e:  # noqa: BLE001 - TF raises many types for broken exports
                session.close()
                if attempt == 1 and register_op_libraries(str(e)):
                    continue  # the ops the graph needs are registered now: load again
                raise LoadError(f"{self._where}: TensorFlow could not load it: {type(e).__name__}: {_short(e)}"
                                ) from None
        graph.finalize()  # the request path never adds ops; a finalized graph makes that a bug, not a leak
        return session

    def unload(self) -> None:
        """Release the loaded version (the Manager calls this once no handle holds it)."""
        if self._servable is not None:
            self._servable.close()
            self._servable = None
        gc.collect()

    # --- warmup ---

    def _warmup(self, servable: Servable) -> int:
        """Replay the warmup records, logging and counting as TF Serving's RunSavedModelWarmup does."""
        path = warmup_path(self.path)
        if not path.is_file():
            log.info("No warmup data file found at %s", path)
            return 0
        import tensorflow as tf
        from tensorflow_serving.apis import prediction_log_pb2

        iterations = f"num_request_iterations {{ value: {self.warmup_iterations} }}" \
            if self.options.num_request_iterations_for_warmup > 1 else ""
        log.info("Starting to read warmup data for model at %s with model-warmup-options %s", path, iterations)
        started = time.monotonic()
        try:
            records = list(tf.data.TFRecordDataset(str(path)).take(self.max_warmup_records + 1).as_numpy_iterator())
        except Exception as e:  # noqa: BLE001
            message = f"{self._where}: warmup file {path} is unreadable (not TFRecord?): {_short(e)}"
            self._count_warmup(started, f"DATA_LOSS: {message}", 0)
            raise LoadError(message) from None
        if len(records) > self.max_warmup_records:
            raise LoadError(
                f"{self._where}: warmup file has more than the maximum of {self.max_warmup_records} records"
            )
        check = self.options.enable_signature_method_name_check
        for index, raw in enumerate(records):
            entry = prediction_log_pb2.PredictionLog()
            try:
                entry.ParseFromString(raw)
            except Exception as e:  # noqa: BLE001
                raise LoadError(f"{self._where}: warmup record {index} is not a PredictionLog: {e}") from None
            kind = entry.WhichOneof("log_type")
            if kind in ("session_run_log", "predict_streamed_log"):
                raise LoadError(f"{self._where}: warmup record {index}: Unsupported log_type for warmup: {kind}")
            # One more run under a deadline: a client's deadline runs the step through session.run with a timeout
            # (Servable.run), whose executor is built on its first run; build it here, not in a client's request.
            for iteration in range(self.warmup_iterations + 1):
                last = iteration == self.warmup_iterations
                try:
                    with deadlines.scope(deadlines.Deadline.after(WARMUP_DEADLINE_S) if last else None):
                        # the extra run only builds the executor: TF Serving counts num_request_iterations runs
                        self._warmup_once(servable, kind, entry, check, counted=not last)
                except ServingError as e:
                    raise LoadError(f"{self._where}: warmup record {index} failed: {e.message}") from None
        us = self._count_warmup(started, "OK", len(records))
        log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d. "
                 "Elapsed time (microseconds): %d.", path, len(records), us)
        return len(records)

    def _warmup_once(self, servable: Servable, kind: str, entry: Any, check: bool, *, counted: bool) -> None:
        """One run of a warmup record through the live request functions (counted in runtime_latency if
        ``counted``)."""
        def run(request: Any, api: str) -> Any:
            return self._timed_run(request, api) if counted else inference.servable_run

        if kind == "predict_log":
            request = entry.predict_log.request
            inference.run_predict(servable, request, method_check=check, run=run(request, "Predict"))
        elif kind == "classify_log":
            request = entry.classify_log.request
            inference.run_classify(servable, request, method_check=check, run=run(request, "Classify"))
        elif kind == "regress_log":
            request = entry.regress_log.request
            inference.run_regress(servable, request, method_check=check, run=run(request, "Regress"))
        elif kind == "multi_inference_log":
            inference.run_multi_inference(servable, entry.multi_inference_log.request, method_check=check)

    def _timed_run(self, request: Any, api: str) -> Any:
        """The signature run of a warmup request, counted in runtime_latency as TF Serving's warmup requests are
        (they go through its Predict/Classify/Regress, labelled with the record's model name)."""
        observe = getattr(self.observer, "observe_runtime", None)
        if observe is None:
            return inference.servable_run

        def run(servable: Servable, signature_name: str, inputs: dict, output_filter: tuple) -> dict:
            start = time.perf_counter()
            outputs = servable.run(signature_name, inputs, output_filter)
            observe(request.model_spec.name, api, int((time.perf_counter() - start) * 1e6))
            return outputs

        return run

    def _count_warmup(self, started: float, status: str, records: int) -> int:
        us = int((time.monotonic() - started) * 1e6)
        if self.observer is not None:
            self.observer.observe_warmup(str(self.path), status, us, records)
        return us


def _short(e: BaseException, limit: int = 500) -> str:
    text = getattr(e, "message", None) or str(e)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
