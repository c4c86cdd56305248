"""The MLflow pyfunc model: ``EyeDiseaseClassifier``, its signature, and saving/logging it.

The network runs through one compiled ``tf.function`` with a fixed input
signature, called directly (``Model.predict`` adds a large fixed cost per call),
built once per process for each model (:func:`shared_runner`). Images are decoded
by :func:`eye_model.preprocess.decode_image` in a thread pool that keeps up to two
batches of 32 ahead of the network; a one-image request is decoded in the calling
thread; each batch is checked by :mod:`eye_model.fundus`. The decoded images of
concurrent requests share network calls through the model's
:class:`~eye_model.batching.NetworkBatcher`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import importlib.metadata
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.pyfunc.model import PythonModel, PythonModelContext
from mlflow.types.schema import ColSpec, Schema

from eye_model.batching import NetworkBatcher, network_error
from eye_model.config import PROB_COLUMNS
from eye_model.decode_budget import MemoryBudget, RequestGate
from eye_model.explain import PARAMS_SCHEMA, add_heatmaps, explain_options
from eye_model.fundus import apply_fundus_check, check_fundus
from eye_model.inference import (
    ModelConfig,
    aligned_stack,
    configure_network_threads,
    read_model_config,
    shared_runner,
)
from eye_model.input_frame import (
    IMAGE_COLUMN,
    IMAGE_ID_COLUMN,
    as_input_frame,
    image_cells,
    input_image_ids,
)
from eye_model.metrics import observe_batch, observe_request
from eye_model.ood import OOD_THRESHOLD, OOD_WARNING
from eye_model.preprocess import ImageError, decode_image
from eye_model.scored import ScoredImage, build_output_frame, build_output_records
from eye_model.settings import Settings, env_name, load_settings

logger = logging.getLogger(__name__)

#: Most images one decode task takes (fewer when that leaves a decoding thread idle).
DECODE_CHUNK = 8

_NETWORK_ARTIFACT = "network"
_CONFIG_ARTIFACT = "config"
_REFERENCE_ARTIFACT = "reference_profile"


def _pixels_of(row: ScoredImage) -> np.ndarray:
    """The decoded pixels of a row that is about to be scored."""
    if row.image is None:
        raise ValueError(f"row {row.index} was not decoded")
    return row.image.require_pixels()


def _fail_rows(rows: Sequence[ScoredImage], message: str) -> None:
    """Give rows that were not scored an error (the network failed, or the server stops)."""
    for row in rows:
        row.error = message


def _decode_row(
    index: int,
    value: object,
    image_size: int,
    max_pixels: int,
    max_bytes: int,
    with_stats: bool = False,
    gate: RequestGate | None = None,
) -> ScoredImage:
    start = time.perf_counter()
    try:
        image = decode_image(
            value,
            image_size,
            max_pixels=max_pixels,
            max_bytes=max_bytes,
            with_stats=with_stats,
            gate=gate,
        )
        scored = ScoredImage(index=index, image=image)
    except ImageError as exc:
        scored = ScoredImage(index=index, error=str(exc))
    except Exception as exc:  # a decoder bug must cost one row, never the batch
        logger.exception("unexpected error while decoding row %d", index)
        scored = ScoredImage(
            index=index, error=f"image could not be decoded ({type(exc).__name__})"
        )
    scored.decode_ms = (time.perf_counter() - start) * 1000.0
    return scored


class EyeDiseaseClassifier(PythonModel):
    """Classifies fundus photographs into cataract, diabetic_retinopathy, glaucoma, normal.

    Input: a DataFrame with a column ``image`` holding each image file as base64
    text (a ``data:`` URI prefix is accepted) or as bytes, and optionally a column
    ``image_id`` that is echoed back.

    Output: one row per input row, in the same order, with ``image_id`` (when
    given), ``predicted_class``, ``confidence`` (0-1, the probability of the
    predicted class), ``prob_cataract``, ``prob_diabetic_retinopathy``,
    ``prob_glaucoma``, ``prob_normal`` (0-1, summing to 1), ``fundus_check``
    (``pass`` or why the image is not a gradable fundus photograph), ``ood_score``
    (>= 1.0: unlike the training data), ``warning`` (null or cautions) and ``error``
    (null, or a message naming the problem and the fix; the class and probabilities
    are then null). A bad row never fails the other rows.
    """

    def load_context(self, context: PythonModelContext) -> None:
        """Load the network and its config, compile and warm it up, start the decode pool."""
        config_path = Path(context.artifacts[_CONFIG_ARTIFACT])
        self.config = read_model_config(config_path)
        settings = load_settings()
        threads = configure_network_threads(settings)  # before the network first runs
        self.runner = shared_runner(
            Path(context.artifacts[_NETWORK_ARTIFACT]),
            self.config,
            runtime=settings.network_runtime,
            threads=threads,
        )
        self.max_pixels = settings.max_pixels
        self.max_bytes = settings.max_bytes
        self.max_request_pixels = settings.max_request_pixels
        self.scoring_timeout_s = settings.scoring_timeout_s
        # Large decodes of every request of this worker take turns within this budget.
        self._memory = MemoryBudget(settings.decode_memory_mb * 1024 * 1024)
        self.fundus_check = settings.fundus_check
        self.batch_size = settings.max_batch
        # Concurrent requests of this worker share network calls (eye_model.batching).
        self._batcher = NetworkBatcher(
            self._score_batch,
            _fail_rows,
            max_batch=settings.max_batch,
            max_wait_s=settings.max_wait_ms / 1000.0,
        )
        threads = settings.decode_threads
        self._decode_threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="eye-model-decode")
        # The fundus check and the image statistics run here while the network runs.
        self._aside_pool = ThreadPoolExecutor(1, thread_name_prefix="eye-model-aside")
        if settings.in_scoring_server:
            from eye_model.server_socket import (
                balance_connections,
                keep_tcp_nodelay,
                scoring_server_workers,
            )

            keep_tcp_nodelay()  # uvicorn --workers N leaves Nagle on (eye_model.server_socket)
            if scoring_server_workers() > 1:
                balance_connections()  # clients that connect at once go to different workers
        model_dir = Path(context.artifacts[_CONFIG_ARTIFACT]).parent.parent
        self._start_telemetry(model_dir, settings)
        if settings.metrics_port and settings.in_scoring_server:
            from eye_model import metrics
            from eye_model.telemetry import read_model_identity

            telemetry = self._telemetry
            identity = (
                telemetry.identity
                if telemetry is not None
                else read_model_identity(model_dir, settings)
            )
            metrics.start(
                settings.metrics_port,
                host=settings.metrics_host,
                folder=settings.metrics_dir,
                model_name=identity.name,
                model_version=identity.version,
            )
        from eye_model.shadow import start_shadow  # a second model scoring after the response

        self._shadow = start_shadow(settings, self._telemetry)

    def _start_telemetry(self, model_dir: Path, settings: Settings) -> None:
        """Track predictions when serving (never in in-process evaluation, never when disabled)."""
        from eye_model.telemetry import (
            Telemetry,
            TelemetryConfig,
            complete_model_identity,
            install_shutdown_handler,
            limit_http_retries,
            read_model_identity,
        )

        config = TelemetryConfig.from_settings(settings)
        # In MLflow's scoring server: log each request, answer with JSON-ready records.
        self._serving = settings.in_scoring_server
        self._telemetry = None
        if config.active_here():
            if settings.in_scoring_server:
                # The scoring server's process is ours: MLflow calls time out in seconds
                # (telemetry is its only client), and SIGTERM delivers the last records.
                limit_http_retries()
                install_shutdown_handler()
            identity = read_model_identity(model_dir, settings)
            if settings.in_scoring_server:
                identity = complete_model_identity(identity, settings)
            identity = dataclasses.replace(identity, network_runtime=self.runner.runtime)
            self._telemetry = Telemetry(config, identity)
        # Telemetry's image statistics are computed beside the network call (_start_aside);
        # telemetry then releases the pixels.
        self._keep_pixels = self._telemetry is not None

    # -- scoring --------------------------------------------------------------------------

    def _timeout_ms(self) -> float:
        return float(getattr(self, "scoring_timeout_s", 60)) * 1000.0

    def request_gate(self, start: float) -> RequestGate:
        """The limits of one request that started at ``start`` (``time.monotonic()``).

        In MLflow's scoring server: the request's pixel budget, and no decode starting
        after half of the server's timeout (the rest leaves time for the network, the
        JSON and a request that waited for a thread). Elsewhere (evaluation, batch
        scoring) only the worker's memory budget.
        """
        memory = getattr(self, "_memory", None)
        if not getattr(self, "_serving", False):
            return RequestGate(memory=memory)
        timeout = getattr(self, "scoring_timeout_s", 60)
        return RequestGate(
            max_pixels=getattr(self, "max_request_pixels", None),
            deadline=start + timeout / 2,
            memory=memory,
            pixels_setting=env_name("max_request_pixels"),
            timeout_text=(
                f"{timeout / 2:g} s, half of the model server's {timeout} s timeout, "
                f"{env_name('scoring_timeout_s')}"
            ),
        )

    def _decode_ahead(
        self, values: list[object], with_stats: bool, gate: RequestGate | None = None
    ) -> Iterator[ScoredImage]:
        """Yield decoded rows in order while the pool decodes up to two batches ahead.

        Each pool task decodes a run of up to ``DECODE_CHUNK`` consecutive rows: one
        hand-off per image cost about a fifth of decoding 32 small JPEGs.
        """
        decode = functools.partial(
            _decode_row,
            image_size=self.config.image_size,
            max_pixels=self.max_pixels,
            max_bytes=self.max_bytes,
            with_stats=with_stats,
            gate=gate,
        )
        if len(values) == 1:  # one image (the usual REST request): no hand-off to the pool
            yield decode(0, values[0])
            return

        def decode_run(start: int, stop: int) -> list[ScoredImage]:
            return [decode(index, values[index]) for index in range(start, stop)]

        threads = max(1, self._decode_threads)
        chunk = max(1, min(DECODE_CHUNK, -(-len(values) // threads)))
        limit = 2 * max(1, self.batch_size)
        pending: collections.deque[Future[list[ScoredImage]]] = collections.deque()
        for start in range(0, len(values), chunk):
            pending.append(self._pool.submit(decode_run, start, min(start + chunk, len(values))))
            if len(pending) * chunk >= limit:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()

    def _score_batch(self, batch: list[ScoredImage]) -> None:
        start = time.perf_counter()
        try:
            pixels = aligned_stack([_pixels_of(row) for row in batch])
        except Exception as exc:  # a row without pixels costs this batch, never the request
            logger.exception("could not stack a batch of %d images", len(batch))
            _fail_rows(batch, network_error(exc))
            return
        aside = self._start_aside(batch, pixels)
        try:
            probabilities, embedding, ood = self.runner.run(pixels)
        except Exception as exc:  # a network failure costs this batch, never the request
            logger.exception("network failed on a batch of %d images", len(batch))
            for row in batch:
                row.error = network_error(exc)
            return
        finally:
            verdicts = self._aside_result(aside)  # the helper is done with the rows
        observe_batch(len(batch))
        share = (time.perf_counter() - start) * 1000.0 / len(batch)
        scores = [None] * len(batch) if ood is None else ood.tolist()
        for row, prob, emb, score in zip(batch, probabilities, embedding, scores, strict=True):
            row.probabilities = prob
            row.embedding = emb
            row.ood_score = score
            if score is not None and score >= OOD_THRESHOLD:
                row.warnings.append(OOD_WARNING)
            row.network_ms = share
            row.batch_size = len(batch)
            if row.image is not None and not (row.keep_pixels or self._keeps_pixels()):
                row.image.pixels = None  # nothing of the image is kept past this point
        # Without the helper's verdicts, the check runs here, on the pixels.
        apply_fundus_check(batch, pixels if verdicts is None else verdicts, self._fundus_mode())

    def _fundus_mode(self) -> str:
        return str(getattr(self, "fundus_check", "refuse"))

    def _keeps_pixels(self) -> bool:
        """Whether scored rows keep their pixels (telemetry computes statistics of them)."""
        return bool(getattr(self, "_keep_pixels", False))

    def _aside_work(self, batch: list[ScoredImage], pixels: np.ndarray) -> list[str] | None:
        """What a batch needs besides the network: the fundus check, telemetry's statistics."""
        if self._keeps_pixels():
            from eye_model.telemetry.records import add_image_stats

            add_image_stats(batch)
        return None if self._fundus_mode() == "off" else check_fundus(pixels)

    def _start_aside(self, batch: list[ScoredImage], pixels: np.ndarray) -> Future[Any] | None:
        """Start :meth:`_aside_work` in the helper thread, beside the network call.

        The network releases the interpreter lock, and in a server with one network thread
        per worker it leaves a core free for a lone request: the fundus check (0.4 ms for one
        image, 2 ms for 32) and the image statistics then cost no time on the request's path.
        """
        pool = getattr(self, "_aside_pool", None)
        return None if pool is None else pool.submit(self._aside_work, batch, pixels)

    @staticmethod
    def _aside_result(aside: Future[Any] | None) -> list[str] | None:
        """Wait for :meth:`_aside_work`: its fundus verdicts, or None if there are none."""
        if aside is None:
            return None
        try:
            result: list[str] | None = aside.result()
            return result
        except Exception:  # checked again in the request's thread; telemetry computes its own
            logger.exception("the fundus check beside the network failed; checking again")
            return None

    def score_images(
        self,
        values: Iterable[object],
        *,
        with_stats: bool = False,
        gate: RequestGate | None = None,
        keep_pixels: bool = False,
    ) -> list[ScoredImage]:
        """Decode and score images, one :class:`ScoredImage` per value, in order.

        Args:
            values: base64 text or bytes, one per image.
            with_stats: compute the image statistics while decoding (offline use; when
                serving, telemetry computes them off the request path).
            gate: the request's limits (:meth:`request_gate`); by default only the
                worker's memory budget.
            keep_pixels: keep each row's decoded pixels past scoring (for explanations).

        Returns:
            The scored rows; a bad image gets ``error`` and no probabilities.
        """
        rows: list[ScoredImage] = []
        batch: list[ScoredImage] = []
        if gate is None:
            gate = RequestGate(memory=getattr(self, "_memory", None))
        batcher = getattr(self, "_batcher", None)
        with batcher.request() if batcher else contextlib.nullcontext(self._score_batch) as score:
            for row in self._decode_ahead(list(values), with_stats, gate):
                row.keep_pixels = keep_pixels
                rows.append(row)
                if row.error is None:
                    batch.append(row)
                    if len(batch) >= self.batch_size:
                        score(batch)
                        batch = []
            if batch:
                score(batch)
        return rows

    def predict(
        self,
        context: PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame | list[dict[str, Any]]:
        """Score images (see the class docstring); param ``explain=true`` adds ``heatmap``."""
        start = time.perf_counter()
        gate = self.request_gate(time.monotonic())
        frame = as_input_frame(model_input)
        heatmap_size = explain_options(params, self.config.image_size)  # a bad param: no work
        cells = image_cells(frame[IMAGE_COLUMN])
        rows = self.score_images(cells, gate=gate, keep_pixels=heatmap_size is not None)
        image_ids = input_image_ids(frame)
        serving = getattr(self, "_serving", False)
        output: pd.DataFrame | list[dict[str, Any]]
        if serving:
            output = build_output_records(rows, self.config.class_names, image_ids)
        else:
            output = build_output_frame(rows, self.config.class_names)
            if image_ids is not None:
                output.insert(0, IMAGE_ID_COLUMN, pd.Series(image_ids, dtype=object, copy=False))
        if heatmap_size is not None:
            output = add_heatmaps(self, frame, rows, output, heatmap_size)
        telemetry = getattr(self, "_telemetry", None)
        if telemetry is not None or serving:
            from eye_model.telemetry import log_request

            request_id = uuid.uuid4().hex
            latency = (time.perf_counter() - start) * 1000.0
            given_up = serving and latency >= self._timeout_ms()
            if given_up:
                # The scoring server has answered 504 already: nothing here was delivered.
                logger.warning(
                    "request %s took %.0f ms, past the model server's %d s timeout: the client "
                    "got HTTP 504 and its %d predictions are not logged",
                    request_id,
                    latency,
                    getattr(self, "scoring_timeout_s", 60),
                    len(rows),
                )
            elif telemetry is not None:
                telemetry.record(rows, request_id=request_id, image_ids=image_ids)
            shadow = getattr(self, "_shadow", None)
            if shadow is not None and not given_up:
                shadow.submit(cells, rows, request_id)  # scored after the response
            errors = sum(row.error is not None for row in rows)
            log_request(request_id, latency_ms=latency, rows=len(rows), errors=errors)
        observe_request(rows, time.perf_counter() - start, self.config.class_names)
        return output


# -- signature, saving and logging ---------------------------------------------------------


def build_signature() -> ModelSignature:
    """The signature: ``image`` and optional ``image_id`` in; the output columns out; params."""
    inputs = Schema(
        [
            ColSpec("string", IMAGE_COLUMN),
            ColSpec("string", IMAGE_ID_COLUMN, required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", IMAGE_ID_COLUMN, required=False),
            ColSpec("string", "predicted_class", required=False),
            ColSpec("double", "confidence", required=False),
            *(ColSpec("double", column, required=False) for column in PROB_COLUMNS),
            ColSpec("string", "fundus_check", required=False),
            ColSpec("double", "ood_score", required=False),
            ColSpec("string", "warning", required=False),
            ColSpec("string", "error", required=False),
            ColSpec("string", "heatmap", required=False),  # only with the param explain=true
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=PARAMS_SCHEMA)


def build_input_example(image_size: int = 64) -> pd.DataFrame:
    """A one-row input example: a small synthetic fundus-like JPEG, base64-encoded."""
    import base64
    import io

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (image_size, image_size))
    draw = ImageDraw.Draw(image)
    draw.ellipse((2, 2, image_size - 3, image_size - 3), fill=(190, 80, 40))
    third = image_size // 3
    draw.ellipse((2 * third - 6, third, 2 * third + 2, third + 8), fill=(240, 220, 150))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return pd.DataFrame({IMAGE_COLUMN: [encoded], IMAGE_ID_COLUMN: ["example-1"]})


def pip_requirements() -> list[str]:
    """Pinned requirements of the serving environment (``--env-manager virtualenv``)."""
    import keras
    import PIL
    import pybase64
    import scipy
    import simplejpeg
    import tensorflow as tf

    return [
        f"mlflow=={mlflow.__version__}",
        f"tensorflow=={tf.__version__}",
        f"keras=={keras.__version__}",
        f"pillow=={PIL.__version__}",
        f"prometheus-client=={importlib.metadata.version('prometheus-client')}",
        f"pybase64=={pybase64.__version__}",
        f"simplejpeg=={simplejpeg.__version__}",
        f"numpy=={np.__version__}",
        f"pandas=={pd.__version__}",
        f"scipy=={scipy.__version__}",  # the serving window's drift heuristics
    ]


def _write_artifacts(
    folder: Path,
    network: Any,
    config: ModelConfig,
    reference_profile: pd.DataFrame | None,
) -> dict[str, str]:
    network_path = folder / "network.keras"
    network.save(network_path)
    config_path = folder / "config.json"
    config_path.write_text(config.to_json())
    artifacts = {_NETWORK_ARTIFACT: str(network_path), _CONFIG_ARTIFACT: str(config_path)}
    if reference_profile is not None:
        reference_path = folder / "reference_profile.parquet"
        reference_profile.to_parquet(reference_path, index=False)
        artifacts[_REFERENCE_ARTIFACT] = str(reference_path)
    return artifacts


def _code_path() -> str:
    return str(Path(__file__).resolve().parent)


def log_model(
    network: Any,
    config: ModelConfig,
    *,
    name: str = "model",
    reference_profile: pd.DataFrame | None = None,
    registered_model_name: str | None = None,
) -> mlflow.models.model.ModelInfo:
    """Log the classifier to the active run (one is started if none is active).

    Args:
        network: the Keras network (input float32 0-255, output logits).
        config: the model config.
        name: the model's name in the run (``runs:/<run_id>/<name>``).
        reference_profile: per-image validation profile for the drift monitor.
        registered_model_name: also register it under this name.

    Returns:
        MLflow's ModelInfo of the logged model.
    """
    with tempfile.TemporaryDirectory(prefix="eye-model-") as tmp:
        artifacts = _write_artifacts(Path(tmp), network, config, reference_profile)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=EyeDiseaseClassifier(),
            artifacts=artifacts,
            code_paths=[_code_path()],
            signature=build_signature(),
            input_example=build_input_example(),
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
        )


def save_model(
    path: str | Path,
    network: Any,
    config: ModelConfig,
    *,
    reference_profile: pd.DataFrame | None = None,
) -> Path:
    """Save the classifier as an MLflow model folder (servable with ``mlflow models serve -m``).

    Args:
        path: the folder to create; it must not exist, or be empty.
        network: the Keras network.
        config: the model config.
        reference_profile: per-image validation profile for the drift monitor.

    Returns:
        The model folder.
    """
    path = Path(path)
    if path.exists() and not any(path.iterdir()):
        shutil.rmtree(path)
    with tempfile.TemporaryDirectory(prefix="eye-model-") as tmp:
        artifacts = _write_artifacts(Path(tmp), network, config, reference_profile)
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=EyeDiseaseClassifier(),
            artifacts=artifacts,
            code_paths=[_code_path()],
            signature=build_signature(),
            input_example=build_input_example(),
            pip_requirements=pip_requirements(),
        )
    return path
