"""Shadow scoring: a second registered model scores the served images after the response.

``eye-model serve --shadow challenger`` (``EYE_MODEL_SHADOW_ALIAS``) loads a second version
of the served model beside it. Every request is answered by the served model only; at the
end of ``predict`` the request's image cells and scored rows are handed to
:meth:`ShadowScorer.submit`, which samples them (``EYE_MODEL_SHADOW_FRACTION``) and puts
them on a bounded queue (a full queue drops the request, counted): no decoding, no network
and no I/O in the request thread. The scorer's own thread decodes the images again at
the shadow's input size, runs the shadow's network, and writes one shadow record per
image, without pixels, bytes, names or ``image_id``:

``request_id``, ``row``, ``timestamp``, ``model_name``, ``served_version``,
``shadow_version``, ``served_class``, ``served_confidence`` (0-1), ``served_ood_score``,
``served_prob_<class>``, ``shadow_class``, ``shadow_confidence`` (0-1),
``shadow_ood_score`` (null: not computed for the shadow), ``shadow_prob_<class>``,
``shadow_error``, ``agree``.

Records go to a local file (``<telemetry dir>/shadow/<session>/part-NNNNN.jsonl``) and,
once the serving session's run exists, to that run as the artifacts
``shadow_log/part-NNNNN.jsonl``, with the metrics ``shadow_agreement`` (0-1, share of
images given the same class), ``shadow_mean_confidence_delta`` (shadow minus served,
in points 0-100, like ``session_avg_confidence``), ``shadow_agreement_<class>`` (agreement
among images the served model put in that class), ``shadow_scored_count``,
``shadow_error_count``, ``shadow_dropped_count``, and per image
``shadow_prediction_confidence`` (0-100). A shadow that fails to load or to score logs one
warning and never fails a request.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from eye_model.config import CLASS_NAMES, SHADOW_LOG_ARTIFACT_DIR
from eye_model.settings import Settings, env_name

if TYPE_CHECKING:
    from eye_model.inference import ModelConfig, NetworkRunner

logger = logging.getLogger(__name__)

#: Tags of a serving run that had a shadow (the comparison job searches by them).
SHADOW_TAGS = ("shadow.model_name", "shadow.model_version", "shadow.model_uri")
#: Most requests waiting for the shadow; more are dropped (and counted).
MAX_QUEUED_REQUESTS = 256
#: Records per local part; a part is also sealed when the scorer is idle or closing.
PART_RECORDS = 200
#: Seconds between two deliveries to the serving run.
SHIP_SECONDS = 2.0


def shadow_model_uri(name: str, alias_or_version: str) -> str:
    """``models:/<name>/<version>`` for a number, else ``models:/<name>@<alias>``."""
    text = alias_or_version.strip()
    return f"models:/{name}/{text}" if text.isdigit() else f"models:/{name}@{text}"


@dataclass
class ShadowAggregates:
    """Running agreement figures of a session (changed by the scorer thread only)."""

    scored: int = 0
    errors: int = 0
    dropped: int = 0
    agree: int = 0
    delta_sum: float = 0.0
    per_class: dict[str, list[int]] = field(
        default_factory=lambda: {name: [0, 0] for name in CLASS_NAMES}
    )

    def add(self, record: dict[str, Any]) -> None:
        """Count one shadow record (rows the served model could not score are skipped)."""
        if record["served_class"] is None:
            return
        if record["shadow_class"] is None:
            self.errors += 1
            return
        self.scored += 1
        self.agree += int(record["agree"])
        self.delta_sum += record["shadow_confidence"] - record["served_confidence"]
        counts = self.per_class.setdefault(record["served_class"], [0, 0])
        counts[0] += int(record["agree"])
        counts[1] += 1

    def metrics(self) -> dict[str, float]:
        """The session's shadow metrics (see the module docstring for units)."""
        metrics = {
            "shadow_scored_count": float(self.scored),
            "shadow_error_count": float(self.errors),
            "shadow_dropped_count": float(self.dropped),
        }
        if self.scored:
            metrics["shadow_agreement"] = self.agree / self.scored
            metrics["shadow_mean_confidence_delta"] = 100.0 * self.delta_sum / self.scored
            for name, (agreed, total) in self.per_class.items():
                if total:
                    metrics[f"shadow_agreement_{name}"] = agreed / total
        return metrics


def build_shadow_records(
    rows: Sequence[Any],
    probabilities: dict[int, np.ndarray],
    errors: dict[int, str],
    *,
    request_id: str,
    identity: dict[str, str],
    timestamp: float,
) -> list[dict[str, Any]]:
    """One shadow record per served row (``eye_model.scored.ScoredImage``).

    Args:
        rows: the request's rows as the served model scored them.
        probabilities: the shadow's class probabilities by row index.
        errors: why the shadow could not score a row, by row index.
        request_id: the request's id (as in the inference log).
        identity: ``model_name``, ``served_version`` and ``shadow_version``.
        timestamp: when the request was answered (epoch s).
    """
    records = []
    for row in rows:
        served = row.output_fields(CLASS_NAMES)
        record: dict[str, Any] = {
            "request_id": request_id,
            "row": row.index,
            "timestamp": timestamp,
            **identity,
            "served_class": served["predicted_class"],
            "served_confidence": served["confidence"],
            "served_ood_score": served.get("ood_score"),
        }
        for name in CLASS_NAMES:
            record[f"served_prob_{name}"] = served[f"prob_{name}"]
        shadow = probabilities.get(row.index)
        if shadow is None:
            record.update(shadow_class=None, shadow_confidence=None)
            record["shadow_error"] = errors.get(row.index, "not scored by the shadow")
        else:
            top = int(np.argmax(shadow))
            record.update(shadow_class=CLASS_NAMES[top], shadow_confidence=float(shadow[top]))
            record["shadow_error"] = None
        record["shadow_ood_score"] = None
        for k, name in enumerate(CLASS_NAMES):
            record[f"shadow_prob_{name}"] = None if shadow is None else float(shadow[k])
        record["agree"] = (
            None
            if shadow is None or served["predicted_class"] is None
            else record["shadow_class"] == served["predicted_class"]
        )
        records.append(record)
    return records


class ShadowScorer:
    """Scores served requests with a second model in a thread of its own.

    Attributes:
        model_uri: the shadow's registry URI (``models:/<name>@<alias>`` or ``/<version>``).
        aggregates: the session's agreement figures.
        failed: why the shadow is disabled ("" while it works).
    """

    def __init__(
        self,
        model_uri: str,
        *,
        settings: Settings,
        telemetry: Any = None,
        model_name: str = "",
        served_version: str = "",
        fraction: float = 1.0,
        log_dir: Path | None = None,
        seed: int | None = None,
    ) -> None:
        """Start the scorer thread, which loads the shadow model first (nothing blocks).

        Args:
            model_uri: the shadow model.
            settings: tracking URI and decoding limits.
            telemetry: the served model's :class:`~eye_model.telemetry.Telemetry` (its run
                receives the shadow records and metrics), or None: local records only.
            model_name: the served (and shadow) registered model's name.
            served_version: the served model's registered version.
            fraction: share of images scored (0-1), drawn per request.
            log_dir: folder of the local shadow records (default under the telemetry dir).
            seed: seed of the sampling (tests).
        """
        self.model_uri = model_uri
        self.settings = settings
        self.telemetry = telemetry
        self.fraction = fraction
        self.aggregates = ShadowAggregates()
        self.failed = ""
        self.identity = {
            "model_name": model_name,
            "served_version": served_version,
            "shadow_version": "",
        }
        session = getattr(telemetry, "session_id", None) or f"{time.time():.0f}"
        self.log_dir = log_dir or settings.telemetry_dir / "shadow" / session
        self._random = random.Random(seed)
        self._queue: queue.Queue[tuple[list[object], list[Any], str, float] | None] = queue.Queue(
            MAX_QUEUED_REQUESTS
        )
        self._pending: list[dict[str, Any]] = []
        self._parts: list[Path] = []
        self._part_number = 0
        self._confidences: list[tuple[int, float]] = []
        self._records_total = 0
        self._last_ship = time.monotonic()
        self._tagged = False
        self._model_dir: Path | None = None
        self._runner: NetworkRunner | None = None
        self._config: ModelConfig | None = None
        self._loaded = threading.Event()
        self._thread = threading.Thread(target=self._run, name="eye-model-shadow", daemon=True)
        self._thread.start()

    # -- request thread -----------------------------------------------------------------

    def submit(self, cells: list[object], rows: list[Any], request_id: str) -> None:
        """Hand one answered request to the shadow (request thread; never blocks, never raises).

        Args:
            cells: the request's image cells (base64 text or bytes), one per row.
            rows: the served model's scored rows.
            request_id: the request's id.
        """
        if self.failed or (self.fraction < 1.0 and self._random.random() >= self.fraction):
            return
        try:
            self._queue.put_nowait((cells, rows, request_id, time.time()))
        except queue.Full:
            self.aggregates.dropped += len(rows)

    # -- scorer thread ------------------------------------------------------------------

    def wait_loaded(self, timeout: float) -> bool:
        """Wait until the shadow model is loaded (or failed to); True when it is usable."""
        self._loaded.wait(timeout)
        return self._runner is not None

    def _load(self) -> None:
        import mlflow
        from mlflow import MlflowClient

        from eye_model.inference import read_model_config, shared_runner
        from eye_model.registry import find_registered_version

        client = MlflowClient(tracking_uri=self.settings.tracking_uri)
        found = find_registered_version(self.model_uri, client)
        if found is not None:
            self.identity["shadow_version"] = found.version
            self.model_uri = found.uri
        self._model_dir = Path(tempfile.mkdtemp(prefix="eye-model-shadow-"))
        local = Path(
            mlflow.artifacts.download_artifacts(
                self.model_uri, dst_path=str(self._model_dir), tracking_uri=client.tracking_uri
            )
        )
        self._config = read_model_config(local / "artifacts" / "config.json")
        self._runner = shared_runner(
            local / "artifacts" / "network.keras",
            self._config,
            runtime=self.settings.network_runtime,
            threads=1,  # the shadow scores in one low-priority thread; requests come first
        )

    def _run(self) -> None:
        # The lowest CPU priority for this thread (Linux threads have their own nice
        # value): when requests and the shadow compete for a core, requests win.
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            self._load()
            logger.info("shadow model %s loaded", self.model_uri)
        except Exception as exc:  # a shadow that cannot load must never fail serving
            self.failed = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            logger.warning(
                "shadow model %s could not be loaded (%s); serving goes on without shadow "
                "scoring: check %s",
                self.model_uri,
                self.failed,
                env_name("shadow_alias"),
            )
            self._loaded.set()
            return
        self._loaded.set()
        while True:
            try:
                item = self._queue.get(timeout=0.5)
            except queue.Empty:
                self._round(None)  # idle: seal and deliver what is waiting
                continue
            if item is None:
                break
            self._round(item)

    def _round(self, item: tuple[list[object], list[Any], str, float] | None) -> None:
        """Score one request (None: none waiting), write and deliver what is due."""
        try:
            if item is not None:
                self._score(*item)
            self._seal(force=item is None)
            if time.monotonic() - self._last_ship >= SHIP_SECONDS:
                self._ship()
        except Exception:  # one bad round costs its records, never the server
            logger.exception("shadow scoring failed on a request")

    def _score(self, cells: list[object], rows: list[Any], request_id: str, at: float) -> None:
        from eye_model.inference import aligned_stack
        from eye_model.preprocess import ImageError, decode_image

        assert self._runner is not None and self._config is not None
        pixels, indexes, errors = [], [], {}
        for row, cell in zip(rows, cells, strict=True):
            if row.output_error is not None:
                continue  # the served model did not score it: nothing to compare
            try:
                image = decode_image(
                    cell,
                    self._config.image_size,
                    max_pixels=self.settings.max_pixels,
                    max_bytes=self.settings.max_bytes,
                )
                pixels.append(image.require_pixels())
                indexes.append(row.index)
            except ImageError as exc:
                errors[row.index] = str(exc)
        probabilities: dict[int, np.ndarray] = {}
        if pixels:
            try:
                out = self._runner.run(aligned_stack(pixels))[0]
                probabilities = dict(zip(indexes, np.asarray(out), strict=True))
            except Exception as exc:
                logger.warning("the shadow model failed on a request (%s)", type(exc).__name__)
                errors.update(dict.fromkeys(indexes, f"shadow failed ({type(exc).__name__})"))
        records = build_shadow_records(
            rows,
            probabilities,
            errors,
            request_id=request_id,
            identity=dict(self.identity),
            timestamp=at,
        )
        for record in records:
            self.aggregates.add(record)
        self._pending.extend(records)

    def _seal(self, *, force: bool) -> None:
        """Write pending records as a part when there are enough, or when ``force``."""
        if not self._pending or (len(self._pending) < PART_RECORDS and not force):
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._part_number += 1
        path = self.log_dir / f"part-{self._part_number:05d}.jsonl"
        text = "".join(json.dumps(record) + "\n" for record in self._pending)
        path.write_text(text)
        self._parts.append(path)
        self._confidences.extend(
            (self._records_total + i, 100.0 * record["shadow_confidence"])
            for i, record in enumerate(self._pending)
            if record["shadow_confidence"] is not None
        )
        self._records_total += len(self._pending)
        self._pending = []

    def _ship(self) -> None:
        """Deliver sealed parts and the metrics to the serving run, once it exists."""
        self._last_ship = time.monotonic()
        run_id = getattr(self.telemetry, "run_id", None)
        if not run_id:
            return
        from mlflow import MlflowClient
        from mlflow.entities import Metric, RunTag

        client = MlflowClient(tracking_uri=self.settings.tracking_uri)
        now = int(time.time() * 1000)
        try:
            if not self._tagged:
                values = (
                    self.identity["model_name"],
                    self.identity["shadow_version"],
                    self.model_uri,
                )
                client.log_batch(
                    run_id, tags=[RunTag(k, v) for k, v in zip(SHADOW_TAGS, values, strict=True)]
                )
                self._tagged = True
            while self._parts:  # oldest first; a part leaves the list once delivered
                client.log_artifact(run_id, str(self._parts[0]), SHADOW_LOG_ARTIFACT_DIR)
                self._parts.pop(0)
            for start in range(0, len(self._confidences), 500):
                chunk = self._confidences[start : start + 500]
                client.log_batch(
                    run_id,
                    metrics=[Metric("shadow_prediction_confidence", v, now, s) for s, v in chunk],
                )
            self._confidences = []
            step = self.aggregates.scored + self.aggregates.errors
            metrics = [Metric(k, v, now, step) for k, v in self.aggregates.metrics().items()]
            client.log_batch(run_id, metrics=metrics)
        except Exception as exc:  # the tracking server away: parts wait on disk
            logger.warning("shadow records not delivered yet (%s)", type(exc).__name__)

    def close(self, timeout: float = 5.0) -> None:
        """Score what is queued (within ``timeout`` s), write and deliver it, stop the thread."""
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=max(0.0, timeout / 2))
        except queue.Full:
            pass
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if not self._thread.is_alive() and not self.failed:
            self._seal(force=True)
            self._ship()
        if self._model_dir is not None:
            shutil.rmtree(self._model_dir, ignore_errors=True)


def start_shadow(settings: Settings, telemetry: Any) -> ShadowScorer | None:
    """The shadow scorer this scoring server was asked for, or None.

    Only in MLflow's scoring server and only when ``shadow_alias`` is set; the shadow is a
    version of the served registered model (its name from ``eye-model serve``, else
    ``MLFLOW_MODEL_NAME``).
    """
    if not settings.shadow_alias or not settings.in_scoring_server:
        return None
    from eye_model.telemetry import shutdown

    identity = getattr(telemetry, "identity", None)
    name = getattr(identity, "name", "") or settings.served_name or settings.model_name
    served_version = getattr(identity, "version", "") or settings.served_version
    scorer = ShadowScorer(
        shadow_model_uri(name, settings.shadow_alias),
        settings=settings,
        telemetry=telemetry,
        model_name=name,
        served_version=served_version,
        fraction=settings.shadow_fraction,
    )
    shutdown.register(scorer)
    return scorer
