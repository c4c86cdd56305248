"""The compiled network of a served model: its config, and a runner built once per process.

uint8 images go in, calibrated probabilities, reduced embeddings and (when the model has its
statistics) the out-of-distribution score come out, through one ``tf.function`` traced at
load time (Keras ``Model.predict`` adds a large fixed cost per
call). Knows nothing of MLflow; :mod:`eye_model.pyfunc` wraps it.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eye_model.config import CLASS_NAMES, EMBEDDING_DIMS
from eye_model.ood import OodStatistics, score_ood
from eye_model.settings import Settings, env_name

logger = logging.getLogger(__name__)

#: Byte alignment of arrays handed to TensorFlow without a copy (Eigen's largest, AVX-512).
TENSOR_ALIGNMENT = 64
#: Outputs of TensorFlow Lite and of TensorFlow on the load-time probe must agree this
#: closely (``numpy.allclose`` rtol and atol), else the network is served by TensorFlow.
LITE_TOLERANCE = 1e-4
#: Most images one TensorFlow Lite call runs; a larger batch runs in chunks (:class:`LiteNetwork`).
LITE_CHUNK = 4


@dataclass
class ModelConfig:
    """What the pyfunc needs besides the network weights (stored as ``config.json``).

    Attributes:
        image_size: side of the square network input, in pixels.
        class_names: output classes, in logit order.
        temperature: calibration temperature; probabilities are softmax(logits / temperature).
        backbone: name of the network builder used.
        embedding_mean: mean of the penultimate-layer embedding on the validation split.
        embedding_projection: (embedding size x EMBEDDING_DIMS) PCA projection; empty = the
            first EMBEDDING_DIMS components are kept.
        ood: the out-of-distribution statistics (:class:`eye_model.ood.OodStatistics` as a
            dict); empty (models trained before them) = ``ood_score`` is null.
        extra: anything else worth keeping with the model (data description, metrics).
    """

    image_size: int
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    temperature: float = 1.0
    backbone: str = "small_cnn"
    embedding_mean: list[float] = field(default_factory=list)
    embedding_projection: list[list[float]] = field(default_factory=list)
    ood: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise to JSON text."""
        return json.dumps(self.__dict__, indent=1)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        """Read back what :meth:`to_json` wrote, ignoring keys from newer versions."""
        raw = json.loads(text)
        known = {key: raw[key] for key in cls.__dataclass_fields__ if key in raw}
        return cls(**known)


class ModelFileError(ValueError):
    """A file of a saved model is missing, damaged or incomplete: one line naming it and the fix.

    A model server whose model cannot load would otherwise die on Keras's or json's own
    words ("File not found" for a file cut short), or be restarted in a loop.
    """


def _model_file_error(what: str, path: Path, reason: str) -> ModelFileError:
    return ModelFileError(
        f"cannot load the model's {what} {path}: {reason}. The model is damaged or was "
        "copied incompletely: download, register or log it again"
    )


def _reason(exc: BaseException) -> str:
    from eye_model.errors import first_line

    line = first_line(str(exc), limit=200)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def read_model_config(path: Path) -> ModelConfig:
    """The config file of a saved model, or :class:`ModelFileError` naming it."""
    try:
        return ModelConfig.from_json(path.read_text())
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise _model_file_error("config file", path, _reason(exc)) from exc


def load_network(path: Path) -> Any:
    """The Keras network file of a saved model, or :class:`ModelFileError` naming it."""
    import zipfile

    import keras

    try:
        complete = zipfile.is_zipfile(path)
    except OSError as exc:
        raise _model_file_error("network file", path, _reason(exc)) from exc
    if not complete:
        reason = (
            "it is not a complete .keras file (a zip archive)"
            if path.is_file()
            else "there is no such file"
        )
        raise _model_file_error("network file", path, reason)
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras says "File not found" for many kinds of damage
        raise _model_file_error("network file", path, _reason(exc)) from exc


class NetworkRunner:
    """The network compiled once for serving: uint8 images in; probabilities, embeddings out.

    The out-of-distribution score is computed in the same graph, from the logits and the
    embedding the network computes anyway (see :mod:`eye_model.ood`).

    Thread-safe: the scoring server may call it from several threads at once.
    """

    def __init__(self, network: Any, config: ModelConfig) -> None:
        import tensorflow as tf

        from eye_model.network import build_embedding_model

        self.image_size = config.image_size
        self.network = network  # for explanations (eye_model.explain)
        dual = build_embedding_model(network)
        temperature = tf.constant(float(config.temperature), tf.float32)
        width = int(dual.outputs[1].shape[-1])
        if config.embedding_projection:
            projection = np.asarray(config.embedding_projection, np.float32)
            mean = np.asarray(config.embedding_mean, np.float32)
        else:
            dims = min(EMBEDDING_DIMS, width)
            projection = np.eye(width, dims, dtype=np.float32)
            mean = np.zeros(width, np.float32)
        #: Widths of the probabilities and the reduced embedding (for a batch of no rows).
        self._widths = (int(dual.outputs[0].shape[-1]), int(projection.shape[1]))
        projection_t = tf.constant(projection)
        mean_t = tf.constant(mean)
        spec = tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.uint8, name="images")
        ood = OodStatistics.from_dict(config.ood)
        #: Whether ``run`` gives an ``ood_score`` (the model was stored with its statistics).
        self.has_ood = ood is not None

        @tf.function(input_signature=[spec])
        def run(images: tf.Tensor) -> tuple[tf.Tensor, ...]:
            logits, embedding = dual(tf.cast(images, tf.float32), training=False)
            probabilities = tf.nn.softmax(logits / temperature, axis=-1)
            reduced = tf.matmul(embedding - mean_t, projection_t)
            if ood is None:
                return probabilities, reduced
            return probabilities, reduced, score_ood(logits, embedding, ood)

        self._run = run
        self._tf = tf
        #: What runs the network: ``tflite`` once :meth:`use_lite` succeeded, else ``tensorflow``.
        self.runtime = "tensorflow"
        self._lite: LiteNetwork | None = None

    def use_lite(self, threads: int = 0) -> bool:
        """Run the network on TensorFlow Lite (:class:`LiteNetwork`) when it agrees with TensorFlow.

        The compiled network is checked on a probe batch against this runner's TensorFlow
        function; if it cannot be compiled or its outputs differ (beyond
        :data:`LITE_TOLERANCE`), the runner keeps TensorFlow and a warning says why.

        Args:
            threads: TensorFlow Lite's threads within one call (0: one per core).

        Returns:
            Whether the network now runs on TensorFlow Lite.
        """
        size = self.image_size
        # A full chunk and a part one: the probe goes through the chunking too.
        shape = (LITE_CHUNK + 1, size, size, 3)
        probe = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        try:
            lite = LiteNetwork(compile_lite(self._run), threads or available_cpus())
            expected = [tensor.numpy() for tensor in self._run(self._tf.constant(probe))]
            problem = lite_mismatch(expected, lite(probe))
        except Exception as exc:  # any failure to compile leaves the network on TensorFlow
            problem = f"it could not be compiled ({type(exc).__name__}: {exc})"
        if problem:
            logger.warning(
                "the network runs on TensorFlow, not TensorFlow Lite, which would use about "
                "half the CPU: %s; %s=tensorflow chooses TensorFlow without this check",
                problem,
                env_name("network_runtime"),
            )
            return False
        self._lite, self.runtime = lite, "tflite"
        return True

    def warm_up(self) -> None:
        """Trace and run the function once, so the first request is not slow."""
        self.run(np.zeros((1, self.image_size, self.image_size, 3), np.uint8))

    def _as_tensor(self, images: np.ndarray) -> Any:
        """The images as a tensor, sharing their memory when TensorFlow can.

        ``convert_to_tensor`` copies; a C-contiguous array aligned as TensorFlow's kernels
        require (they abort the process on a misaligned tensor) is handed over through
        DLPack without a copy: 2 ms less per batch of 32 at 224 px.
        """
        flags = images.flags
        # NumPy exports only writeable arrays through DLPack.
        if flags.c_contiguous and flags.writeable and images.ctypes.data % TENSOR_ALIGNMENT == 0:
            return self._tf.experimental.dlpack.from_dlpack(images.__dlpack__())
        return self._tf.convert_to_tensor(images)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Score a batch.

        Args:
            images: uint8 array (n, size, size, 3).

        Returns:
            Probabilities (n, classes) as float64 summing to 1, reduced embeddings
            (n, EMBEDDING_DIMS) as float32, and ``ood_score`` (n,) as float64 (>= 1.0:
            beyond the validation split's 99th percentile), or None for a model stored
            without its out-of-distribution statistics.
        """
        if not len(images):
            # No network call: TensorFlow's fused kernels refuse an empty batch on some CPUs
            # ("Incompatible shapes: [24] vs. [0,64,64,3]" with AVX-512).
            classes, dims = self._widths
            outputs: list[np.ndarray] = [
                np.zeros((0, classes), np.float32),
                np.zeros((0, dims), np.float32),
                np.zeros(0, np.float32),
            ]
        elif self._lite is not None:
            outputs = self._lite(images)
        else:
            outputs = [tensor.numpy() for tensor in self._run(self._as_tensor(images))]
        probabilities = outputs[0].astype(np.float64)
        # Renormalise in float64 so a client's sum check holds to 1e-9.
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        ood = outputs[2].astype(np.float64) if self.has_ood else None
        return probabilities, outputs[1], ood


class LiteNetwork:
    """A runner's ``tf.function`` compiled by TensorFlow Lite, run on its XNNPACK CPU kernels.

    The same weights and arithmetic (float32) with less work per call than TensorFlow's
    eager runtime. Measured on two cores (AVX2), CPU per image over batches of 1-5:
    small_cnn 4.8 against 10.0 ms, efficientnet_b0 21.6 against 42.8 ms, mobilenet_v3_small
    3.0 against 12.3 ms; outputs within 1e-7 of TensorFlow's (see the README's performance
    notes). ``invoke`` releases the interpreter lock, as TensorFlow does.

    A batch runs in chunks of at most ``chunk`` images (:data:`LITE_CHUNK`), each on an
    interpreter allocated for its size when the network is loaded: no call resizes an
    interpreter, and none keeps the memory of a large batch (after a batch of 32 at 224 px:
    small_cnn +79 against +124 MB in one interpreter, efficientnet_b0 +518 against +930 MB).
    Small chunks are also cheaper per image, their activations staying in the CPU's caches:
    measured on two cores (AVX-512), one thread, CPU per image of a batch of 32: small_cnn
    1.87 against 2.08 ms in one call, efficientnet_b0 7.72 against 9.85 ms. For the batches
    of 1-5 that concurrent one-image clients make: the same within 4 %.

    One call runs at a time (an interpreter is not thread-safe).
    """

    def __init__(self, flat: bytes, threads: int, chunk: int = 0) -> None:
        """Interpreters of ``flat`` (:func:`compile_lite`) with ``threads`` threads per call.

        Args:
            flat: the compiled model.
            threads: threads within one call.
            chunk: most images per interpreter call (0: :data:`LITE_CHUNK`).
        """
        #: Most images one interpreter call takes.
        self.chunk = chunk or LITE_CHUNK
        self._sized = {
            size: _SizedInterpreter(flat, threads, size) for size in range(1, self.chunk + 1)
        }
        self._lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        """The function's outputs for uint8 images (n >= 1, size, size, 3), as new arrays."""
        parts = []
        with self._lock:
            for start in range(0, len(images), self.chunk):
                part = images[start : start + self.chunk]
                parts.append(self._sized[len(part)](part))
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


class _SizedInterpreter:
    """One TensorFlow Lite interpreter allocated once for batches of exactly ``size`` images."""

    def __init__(self, flat: bytes, threads: int, size: int) -> None:
        import tensorflow as tf

        with warnings.catch_warnings():
            # TensorFlow 2.21 (pinned) still ships it; ai-edge-litert is its successor.
            warnings.filterwarnings("ignore", "(?s).*tf.lite.Interpreter is deprecated")
            interpreter = tf.lite.Interpreter(model_content=flat, num_threads=threads)
        detail = interpreter.get_input_details()[0]
        self._input = detail["index"]
        interpreter.resize_tensor_input(self._input, [size, *detail["shape"][1:]], strict=True)
        interpreter.allocate_tensors()
        outputs = interpreter.get_output_details()
        #: Output tensors in the function's order: "Identity", "Identity_1", ...
        self._outputs = [
            output["index"] for output in sorted(outputs, key=lambda d: _output_number(d["name"]))
        ]
        self._interpreter = interpreter

    def __call__(self, images: np.ndarray) -> list[np.ndarray]:
        """The outputs for exactly ``size`` images, as new arrays (the caller holds the lock)."""
        interpreter = self._interpreter
        interpreter.set_tensor(self._input, images)
        interpreter.invoke()
        return [interpreter.get_tensor(index) for index in self._outputs]


def compile_lite(function: Any) -> bytes:
    """A ``tf.function`` with one input signature, compiled to a TensorFlow Lite model."""
    import tensorflow as tf

    holder = tf.Module()
    holder.function = function  # the converter reads the variables from it
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], holder
    )
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        return bytes(converter.convert())
    finally:
        # The converter gives the root logger a handler of its own; that would take the
        # place of the scoring server's request log lines (eye_model.telemetry.log_request).
        root.handlers[:] = handlers
        root.setLevel(level)


def _output_number(name: str) -> int:
    """The position of a converted function's output from its name ("Identity_2": 2)."""
    _, _, number = name.rpartition("_")
    return int(number) if number.isdigit() else 0


def lite_mismatch(expected: list[np.ndarray], got: list[np.ndarray]) -> str | None:
    """Why TensorFlow Lite's outputs are not TensorFlow's (None when they agree)."""
    if len(got) != len(expected):
        return f"it gives {len(got)} outputs, not {len(expected)}"
    for position, (want, have) in enumerate(zip(expected, got, strict=True)):
        if want.shape != have.shape:
            return f"output {position} has shape {have.shape}, not {want.shape}"
        if not np.allclose(have, want, rtol=LITE_TOLERANCE, atol=LITE_TOLERANCE):
            worst = float(np.max(np.abs(have.astype(np.float64) - want)))
            return f"output {position} differs from TensorFlow's by up to {worst:.3g}"
    return None


def aligned_stack(arrays: list[np.ndarray]) -> np.ndarray:
    """``np.stack(arrays)`` in memory aligned to ``TENSOR_ALIGNMENT`` bytes."""
    shape = (len(arrays), *arrays[0].shape)
    size = int(np.prod(shape)) * arrays[0].itemsize
    raw = np.empty(size + TENSOR_ALIGNMENT, np.uint8)
    offset = -raw.ctypes.data % TENSOR_ALIGNMENT
    out = raw[offset : offset + size].view(arrays[0].dtype).reshape(shape)
    return np.stack(arrays, out=out)


def network_threading(workers: int, cpus: int | None = None) -> tuple[int, bool]:
    """TensorFlow's threads within an operation (0: one per core) and whether idle ones spin.

    For a process that is one of ``workers`` workers of a model server on ``cpus`` cores.
    Alone, the network takes every core and its idle threads spin for work, which saves a
    wake-up. Each worker of a server started with ``--workers N`` is a process with a network
    of its own: there the workers share the cores (``cpus // workers`` threads each, at least
    one) and idle threads sleep, so that one worker's threads do not take the cores the
    others need. Measured with two workers on two cores, 8 one-image clients: the network
    then runs batches of about 3, where two threads cost 0.5-1.5 ms more CPU per image than
    one (6.4 against 5.4 ms at batch 1, 5.4 against 4.9 ms at batch 2); see the README's
    performance notes for the served figures.
    """
    if workers <= 1:
        return 0, True
    cpus = cpus or available_cpus()
    return max(1, cpus // workers), False


def available_cpus() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def use_network_threading(threads: int, *, spinning: bool) -> bool:
    """Set TensorFlow's threads within an operation (0: all cores) and their spinning.

    TensorFlow fixes its thread pools when it first runs an operation; a later change is
    not possible, and a warning says so. Spinning is off only through the configuration
    TensorFlow starts with (``ConfigProto.experimental.disable_thread_spinning``): TensorFlow
    has no public setter for it, so it is set on the eager context before it starts.

    Returns:
        Whether TensorFlow runs (or will run) with these settings.
    """
    import tensorflow as tf
    from tensorflow.python.eager import context

    eager = context.context()
    current = eager.config
    wanted_threads = threads or current.intra_op_parallelism_threads
    if (
        current.intra_op_parallelism_threads == wanted_threads
        and current.experimental.disable_thread_spinning == (not spinning)
    ):
        return True
    if getattr(eager, "_initialized", True):
        logger.warning(
            "the network keeps TensorFlow's threads as they are: %s=%d (spinning %s) came "
            "after TensorFlow started in this process; set it before the model is loaded",
            env_name("network_threads"),
            threads,
            "on" if spinning else "off",
        )
        return False
    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    if not spinning:
        base = tf.compat.v1.ConfigProto()
        if eager._config is not None:
            base.CopyFrom(eager._config)
        base.experimental.disable_thread_spinning = True
        eager._config = base
    return True


def configure_network_threads(settings: Settings) -> int:
    """Apply ``EYE_MODEL_NETWORK_THREADS``, else the threads of :func:`network_threading`.

    Returns:
        The network's threads within one call (0: one per core), for TensorFlow Lite too.
    """
    if not (settings.in_scoring_server or settings.network_threads):
        return 0
    from eye_model.server_socket import scoring_server_workers

    workers = scoring_server_workers() if settings.in_scoring_server else 1
    threads, spinning = network_threading(workers)
    threads = settings.network_threads or threads
    use_network_threading(threads, spinning=spinning)
    return threads


_RUNNERS: collections.OrderedDict[str, NetworkRunner] = collections.OrderedDict()
_RUNNERS_LOCK = threading.Lock()
#: Compiled networks kept per process (least recently loaded dropped first).
RUNNER_CACHE_SIZE = 4


def shared_runner(
    network_path: Path, config: ModelConfig, *, runtime: str = "tensorflow", threads: int = 0
) -> NetworkRunner:
    """The compiled, warmed-up network of a model, built once per process.

    ``spark_udf`` in local mode loads the model again in every task, and Spark reuses its
    Python workers across tasks and jobs: building the runner once per worker saves about
    0.35 s per task. The key is the network file's content and the config, so a copy of
    the same model (each ``spark_udf`` call copies it) shares the runner and a changed
    model never does. :class:`NetworkRunner` is thread-safe, so sharing it is too.

    ``runtime`` is ``EYE_MODEL_NETWORK_RUNTIME`` (``tflite``: :meth:`NetworkRunner.use_lite`
    with ``threads``, 0 for one per core).
    """
    try:
        digest = hashlib.sha256(network_path.read_bytes())
    except OSError as exc:
        raise _model_file_error("network file", network_path, _reason(exc)) from exc
    digest.update(config.to_json().encode())
    digest.update(f"{runtime}:{threads}".encode())
    key = digest.hexdigest()
    with _RUNNERS_LOCK:
        runner = _RUNNERS.get(key)
        if runner is None:
            network = load_network(network_path)
            runner = NetworkRunner(network, config)
            runner.warm_up()
            if runtime == "tflite":
                runner.use_lite(threads)
            _RUNNERS[key] = runner
            while len(_RUNNERS) > RUNNER_CACHE_SIZE:
                _RUNNERS.popitem(last=False)
        return runner
