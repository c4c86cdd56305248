"""Prediction telemetry: the brief's metrics, session and window metrics, a durable inference log.

How a record travels, and why it is never lost nor slows a request down:

1. ``predict`` hands the scored rows to :meth:`Telemetry.record`, which only builds
   small dicts and puts them on an in-memory queue (microseconds).
2. A writer thread appends them, one JSON line per image, to a local file of the
   session (``<telemetry dir>/<session>/current.jsonl``). This local log is the source
   of truth. Every few seconds (or every N records) the file is sealed as
   ``part-NNNNN.jsonl``.
3. A shipper thread delivers each sealed part to the session's MLflow run: the
   per-prediction metrics in batches (``MlflowClient.log_batch``, up to 1,000 per call),
   then the part itself as the artifact ``inference_log/part-NNNNN.jsonl``. Only then is
   it marked shipped. While the tracking server is down, parts wait on disk and are
   delivered when it is back; if more than ``max_backlog_records`` wait, the oldest are
   dropped with a warning that says how many.

MLflow's own asynchronous logging queue is not used for records because it does not
keep what it could not deliver; batching is MLflow's ``log_batch``.

No pixels, no image bytes, no file names and no ``image_id`` (it may identify a
patient) are written, unless ``EYE_MODEL_LOG_IMAGE_IDS=true``.

``ENABLE_MLFLOW_TRACKING=false`` means no run, no file and no thread.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eye_model.config import CLASS_NAMES, DEFAULT_EXPERIMENT_NAME, PROB_COLUMNS
from eye_model.settings import Settings, load_settings
from eye_model.uris import redact_uri

logger = logging.getLogger(__name__)
request_logger = logging.getLogger("eye_model.requests")

#: Name of the artifact folder holding the inference log parts of a session run.
INFERENCE_LOG_ARTIFACT_DIR = "inference_log"
#: Version of the record layout (``schema`` field of every record).
RECORD_SCHEMA = 1
#: The writer thread starts this long after a request is queued, so it never competes with
#: the response for the GIL (measured: about 0.7 ms of latency per request otherwise).
WRITE_DELAY_SECONDS = 0.02
#: MLflow accepts at most this many metrics in one log_batch call.
_BATCH_LIMIT = 1000


@dataclass(frozen=True)
class TelemetryConfig:
    """Telemetry settings, read from the environment by :meth:`from_env`.

    Attributes:
        enabled: ``ENABLE_MLFLOW_TRACKING`` (default true).
        mode: ``EYE_MODEL_TELEMETRY``: ``serving`` (default: only inside a scoring
            server), ``always`` (also in-process, e.g. batch scoring) or ``never``.
        tracking_uri: where runs go (``MLFLOW_TRACKING_URI``).
        experiment_name: ``MLFLOW_EXPERIMENT_NAME``.
        log_dir: local root of inference logs (``EYE_MODEL_TELEMETRY_DIR``).
        part_records: seal the local file after this many records.
        part_seconds: ... or after this many seconds.
        ship_interval: seconds between delivery attempts.
        session_every_n: log session/window metrics every N predictions ...
        session_every_s: ... or every T seconds.
        window_size: predictions in the recent window.
        max_backlog_records: most undelivered records kept on disk.
        log_image_ids: also keep the client's ``image_id`` in records (off: may identify a patient).
    """

    enabled: bool = True
    mode: str = "serving"
    tracking_uri: str = ""
    experiment_name: str = DEFAULT_EXPERIMENT_NAME
    log_dir: Path = field(
        default_factory=lambda: Path.home() / ".cache" / "eye-model" / "telemetry"
    )
    part_records: int = 500
    part_seconds: float = 5.0
    ship_interval: float = 2.0
    session_every_n: int = 100
    session_every_s: float = 30.0
    window_size: int = 100
    max_backlog_records: int = 200_000
    log_image_ids: bool = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> TelemetryConfig:
        """Read the settings from environment variables (through :func:`load_settings`)."""
        return cls.from_settings(load_settings(environ))

    @classmethod
    def from_settings(cls, settings: Settings) -> TelemetryConfig:
        """Telemetry's part of the settings."""
        return cls(
            enabled=settings.enable_tracking,
            mode=settings.telemetry_mode,
            tracking_uri=settings.tracking_uri,
            experiment_name=settings.experiment_name,
            log_dir=settings.telemetry_dir,
            part_records=settings.log_part_records,
            part_seconds=settings.log_part_seconds,
            ship_interval=settings.ship_interval,
            session_every_n=settings.session_every_n,
            session_every_s=settings.session_every_s,
            window_size=settings.window_size,
            max_backlog_records=settings.max_backlog,
            log_image_ids=settings.log_image_ids,
        )

    def active_here(self) -> bool:
        """Whether this process should track predictions at all."""
        if not self.enabled or self.mode == "never":
            return False
        if self.mode == "always":
            return True
        # Set by MLflow's scoring server; in-process evaluation is not serving.
        return in_scoring_server()


def in_scoring_server() -> bool:
    """Whether this process is MLflow's scoring server (``mlflow models serve``)."""
    # MLflow passes the model path to its uvicorn app in this variable, and marks the
    # process as serving once the app is built.
    return bool(os.environ.get("__pyfunc_model_path__")) or (  # noqa: SIM112 - MLflow's name
        os.environ.get("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "").lower() == "true"
    )


@dataclass(frozen=True)
class ModelIdentity:
    """Which model a session serves (tags of the session run and fields of each record)."""

    name: str = ""
    version: str = ""
    uri: str = ""
    source_run_id: str = ""
    logged_model_id: str = ""


def read_model_identity(model_dir: Path | None) -> ModelIdentity:
    """Identify the served model from ``eye-model serve``'s environment and the MLmodel file."""
    run_id = model_id = ""
    if model_dir is not None and (model_dir / "MLmodel").is_file():
        import yaml

        meta = yaml.safe_load((model_dir / "MLmodel").read_text()) or {}
        run_id = str(meta.get("run_id") or "")
        model_id = str(meta.get("model_id") or "")
    return ModelIdentity(
        name=os.environ.get("EYE_MODEL_SERVED_NAME", ""),
        version=os.environ.get("EYE_MODEL_SERVED_VERSION", ""),
        uri=os.environ.get("EYE_MODEL_SERVED_URI", str(model_dir or "")),
        source_run_id=run_id,
        logged_model_id=model_id,
    )


def _round(value: float, digits: int = 6) -> float:
    return float(round(float(value), digits))


def build_records(
    rows: Sequence[Any],
    *,
    request_id: str,
    identity: ModelIdentity,
    image_ids: Sequence[object] | None = None,
    timestamp: float | None = None,
) -> list[dict[str, Any]]:
    """One inference record per scored row (``eye_model.pyfunc.ScoredImage``), no pixels.

    Fields: ``schema``, ``request_id``, ``row``, ``timestamp`` (epoch s), ``model_name``,
    ``model_version``, ``source_run_id``, ``status`` (ok/error), ``error``,
    ``inference_ms``, ``predicted_class``, ``confidence`` (0-1), ``prob_<class>``,
    ``img_*`` (metadata and statistics) and ``emb_0`` … ``emb_7``.
    """
    now = time.time() if timestamp is None else timestamp
    records = []
    for i, row in enumerate(rows):
        record: dict[str, Any] = {
            "schema": RECORD_SCHEMA,
            "request_id": request_id,
            "row": i,
            "timestamp": now,
            "model_name": identity.name,
            "model_version": identity.version,
            "source_run_id": identity.source_run_id,
            "inference_ms": _round(row.inference_ms, 3),
        }
        if image_ids is not None:  # a missing id stays missing (None), not "None"
            record["image_id"] = None if image_ids[i] is None else str(image_ids[i])
        error = row.output_error
        if error is None:
            probs = row.probabilities
            top = int(np.argmax(probs))
            record.update(status="ok", error=None, predicted_class=CLASS_NAMES[top])
            record["confidence"] = _round(probs[top])
            record.update({c: _round(p) for c, p in zip(PROB_COLUMNS, probs, strict=True)})
        else:
            record.update(status="error", error=error, predicted_class=None, confidence=None)
        if row.image is not None:
            record.update(
                {
                    k: (_round(v, 4) if isinstance(v, float) else v)
                    for k, v in row.image.metadata().items()
                }
            )
        if row.embedding is not None:
            record.update({f"emb_{k}": _round(v) for k, v in enumerate(row.embedding)})
        records.append(record)
    return records


class InferenceLog:
    """The session's local, append-only inference log, sealed into numbered parts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._current = folder / "current.jsonl"
        self._records_in_current = 0
        self._opened_at = time.monotonic()
        existing = sorted(folder.glob("part-*.jsonl"))
        self._next_part = 1 + max((int(p.name[5:10]) for p in existing), default=-1)

    def append(self, records: Sequence[dict[str, Any]]) -> None:
        """Append records (one JSON line each) and flush them to the OS."""
        text = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        with self._lock:
            if self._records_in_current == 0:
                self._opened_at = time.monotonic()
            with open(self._current, "a", encoding="utf-8") as handle:
                handle.write(text)
            self._records_in_current += len(records)

    def seal_if_due(
        self, max_records: int, max_seconds: float, *, force: bool = False
    ) -> Path | None:
        """Seal the current file into the next part when it is full, old enough, or forced."""
        with self._lock:
            if self._records_in_current == 0:
                return None
            due = self._records_in_current >= max_records or (
                time.monotonic() - self._opened_at >= max_seconds
            )
            if not (due or force):
                return None
            part = self.folder / f"part-{self._next_part:05d}.jsonl"
            self._current.rename(part)
            self._next_part += 1
            self._records_in_current = 0
            return part

    def pending_parts(self) -> list[Path]:
        """Sealed parts not yet delivered, oldest first."""
        return sorted(
            p for p in self.folder.glob("part-*.jsonl") if not p.with_suffix(".shipped").exists()
        )


@dataclass
class _SessionState:
    """Running aggregates of the session (updated by the writer thread only)."""

    total: int = 0
    errors: int = 0
    sum_ms: float = 0.0
    sum_confidence: float = 0.0
    scored: int = 0
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(len(CLASS_NAMES), int))
    window: deque = field(default_factory=deque)  # (confidence or None, class code or -1, ms)
    last_logged_total: int = 0
    last_logged_at: float = field(default_factory=time.monotonic)


class Telemetry:
    """Tracks one serving session (one process); see the module docstring."""

    def __init__(self, config: TelemetryConfig, identity: ModelIdentity) -> None:
        self.config = config
        self.identity = identity
        self.session_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.log = InferenceLog(config.log_dir / self.session_id)
        self.started_at = time.time()
        self.run_id: str | None = None
        self.dropped_records = 0
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._state = _SessionState(window=deque(maxlen=config.window_size))
        self._state_lock = threading.Lock()
        self._pending_session_metrics: list[tuple[int, dict[str, float]]] = []
        self._stop = threading.Event()
        self._client: Any = None
        self._experiment_id: str | None = None
        self._writer = threading.Thread(
            target=self._write_loop, name="eye-model-telemetry-writer", daemon=True
        )
        self._shipper = threading.Thread(
            target=self._ship_loop, name="eye-model-telemetry-shipper", daemon=True
        )
        self._writer.start()
        self._shipper.start()
        atexit.register(self.close)
        self._chain_sigterm()

    def _chain_sigterm(self) -> None:
        """Deliver the last records when the server is stopped with SIGTERM.

        uvicorn shuts down gracefully on SIGTERM, then restores the handler it found and
        raises the signal again; with the default handler the process would die there
        without running ``atexit``. This handler closes the session first, then does what
        the previous handler did.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            self.close()
            if callable(previous):
                previous(signum, frame)
            else:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)

        signal.signal(signal.SIGTERM, on_sigterm)

    # -- the request path: cheap and never raising ------------------------------------------

    def record(
        self, rows: Sequence[Any], *, request_id: str, image_ids: Sequence[object] | None
    ) -> None:
        """Queue the rows of one request (called from ``predict``: a queue put, never raising).

        The rows still hold their pixels; the writer thread computes the image statistics,
        builds the records and drops the pixels, all off the request path.
        """
        try:
            ids = image_ids if self.config.log_image_ids else None
            self._queue.put((rows, request_id, ids, time.time()))
        except Exception:  # telemetry must never fail a prediction
            logger.exception("telemetry could not record a request")

    # -- writer thread ------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            items = [self._queue.get()]
            if items[0] is not None:
                # Start a moment after the request, so that this thread's work (and its
                # hold on the GIL) does not delay the response being sent; a busy server
                # gets its records written in batches.
                time.sleep(WRITE_DELAY_SECONDS)
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self._queue.get_nowait())
            for item in items:
                if item is None:
                    return
                self._write(*item)

    def _write(
        self, rows: Sequence[Any], request_id: str, image_ids: Sequence[object] | None, stamp: float
    ) -> None:
        """Compute the image statistics, build the records, number and append them."""
        try:
            for row in rows:
                image = row.image
                if image is not None and image.pixels is not None:
                    image.add_pixel_stats()
                    image.pixels = None
            batch = build_records(
                rows,
                request_id=request_id,
                identity=self.identity,
                image_ids=image_ids,
                timestamp=stamp,
            )
            self._update_state(batch)  # numbers each record: its "count" is the metric step
            self.log.append(batch)
        except Exception:
            # One bad item must not stop the thread: log it and go on with the next.
            logger.exception("telemetry could not write a request's records locally")

    def _update_state(self, records: list[dict[str, Any]]) -> None:
        with self._state_lock:
            state = self._state
            for record in records:
                state.total += 1
                record["count"] = state.total
                state.sum_ms += record["inference_ms"]
                if record["status"] == "ok":
                    state.scored += 1
                    state.sum_confidence += record["confidence"]
                    code = CLASS_NAMES.index(record["predicted_class"])
                    state.class_counts[code] += 1
                    state.window.append((record["confidence"], code, record["inference_ms"]))
                else:
                    state.errors += 1
                    state.window.append((None, -1, record["inference_ms"]))
            due = state.total - state.last_logged_total >= self.config.session_every_n
            if due:
                self._queue_session_metrics_locked()

    def _queue_session_metrics_locked(self) -> None:
        state = self._state
        if state.total == state.last_logged_total:
            return
        self._pending_session_metrics.append((state.total, self._session_metrics_locked()))
        state.last_logged_total = state.total
        state.last_logged_at = time.monotonic()

    def _session_metrics_locked(self) -> dict[str, float]:
        from eye_model.drift import DriftConfig, compute_heuristics

        state = self._state
        metrics = {
            "session_total_predictions": float(state.total),
            "session_avg_inference_time_ms": state.sum_ms / max(state.total, 1),
            "session_avg_confidence": 100.0 * state.sum_confidence / max(state.scored, 1),
            "session_error_count": float(state.errors),
            "session_error_rate": state.errors / max(state.total, 1),
        }
        for k, name in enumerate(CLASS_NAMES):
            metrics[f"class_dist_{name}"] = float(state.class_counts[k] / max(state.scored, 1))
        window = list(state.window)
        confidence = np.array([c for c, _, _ in window if c is not None], float)
        codes = np.array([k for _, k, _ in window if k >= 0], int)
        times = np.array([ms for _, _, ms in window], float)
        errors = sum(1 for _, k, _ in window if k < 0)
        heuristics = compute_heuristics(confidence, codes, times, DriftConfig())
        metrics.update(
            {
                "recent_avg_confidence": 100.0 * float(confidence.mean())
                if confidence.size
                else 0.0,
                "recent_low_confidence_ratio": float((confidence < 0.70).mean())
                if confidence.size
                else 0.0,
                "recent_avg_inference_time_ms": float(times.mean()) if times.size else 0.0,
                "drift_detected": float(any(h.flag for h in heuristics)),
                "error_count": float(errors),
                "error_rate": errors / max(len(window), 1),
            }
        )
        for heuristic in heuristics:
            metrics[f"recent_{heuristic.name}"] = float(heuristic.flag)
        return metrics

    # -- shipper thread -----------------------------------------------------------------------

    def _ship_loop(self) -> None:
        delay = self.config.ship_interval
        while not self._stop.wait(delay):
            try:
                self.flush(force_seal=False)
                delay = self.config.ship_interval
            except Exception as exc:  # the tracking server is down: back off, keep everything
                delay = min(max(delay * 2, self.config.ship_interval), 15.0)
                logger.warning(
                    "telemetry delivery failed (%s); retrying in %.0f s", _short(exc), delay
                )

    def flush(self, *, force_seal: bool = True) -> int:
        """Seal what is due, deliver every pending part and session metrics.

        Returns:
            The number of records delivered.

        Raises:
            Exception: whatever the tracking server raised; nothing is lost.
        """
        with self._state_lock:
            if time.monotonic() - self._state.last_logged_at >= self.config.session_every_s:
                self._queue_session_metrics_locked()
        self.log.seal_if_due(self.config.part_records, self.config.part_seconds, force=force_seal)
        self._enforce_backlog()
        parts = self.log.pending_parts()
        if not parts and not self._pending_session_metrics and self.run_id is not None:
            return 0
        client = self._ensure_run()
        delivered = 0
        for part in parts:
            delivered += self._ship_part(client, part)
        while self._pending_session_metrics:
            step, metrics = self._pending_session_metrics[0]
            self._log_metrics(client, metrics, step)
            self._pending_session_metrics.pop(0)
        return delivered

    def _ensure_run(self) -> Any:
        from mlflow import MlflowClient

        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.config.tracking_uri)
        if self.run_id is None:
            experiment = self._client.get_experiment_by_name(self.config.experiment_name)
            experiment_id = (
                experiment.experiment_id
                if experiment
                else self._client.create_experiment(self.config.experiment_name)
            )
            tags = {
                "role": "serving",
                "model_name": self.identity.name,
                "model_version": self.identity.version,
                "model_uri": redact_uri(self.identity.uri),
                "source_run_id": self.identity.source_run_id,
                "logged_model_id": self.identity.logged_model_id,
                "host": socket.gethostname(),
                "pid": str(os.getpid()),
                "session_id": self.session_id,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            }
            run = self._client.create_run(
                experiment_id,
                run_name=f"serving-{socket.gethostname()}-{os.getpid()}",
                tags={k: v for k, v in tags.items() if v},
            )
            self.run_id = run.info.run_id
            logger.info("telemetry session %s logs to run %s", self.session_id, self.run_id)
        return self._client

    def _ship_part(self, client: Any, part: Path) -> int:
        from mlflow.entities import Metric

        records = [
            json.loads(line) for line in part.read_text(encoding="utf-8").splitlines() if line
        ]
        marker = part.with_suffix(".metrics")
        if not marker.exists():
            metrics = []
            for record in records:
                if record.get("status") != "ok":
                    continue
                step = int(record["count"]) if "count" in record else 0
                stamp = int(record["timestamp"] * 1000)
                values = {
                    "prediction_inference_time_ms": record["inference_ms"],
                    "prediction_confidence": 100.0 * record["confidence"],
                    "prediction_count": float(step),
                    **{c: record[c] for c in PROB_COLUMNS},
                }
                metrics.extend(Metric(k, float(v), stamp, step) for k, v in values.items())
            for start in range(0, len(metrics), _BATCH_LIMIT):
                client.log_batch(self.run_id, metrics=metrics[start : start + _BATCH_LIMIT])
            marker.touch()
        client.log_artifact(self.run_id, str(part), artifact_path=INFERENCE_LOG_ARTIFACT_DIR)
        part.with_suffix(".shipped").touch()
        marker.unlink(missing_ok=True)
        return len(records)

    def _log_metrics(self, client: Any, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items() if np.isfinite(v)]
        client.log_batch(self.run_id, metrics=batch)

    def _enforce_backlog(self) -> None:
        parts = self.log.pending_parts()
        counts = [sum(1 for _ in p.open(encoding="utf-8")) for p in parts]
        total = sum(counts)
        while parts and total > self.config.max_backlog_records:
            oldest = parts.pop(0)
            dropped = counts.pop(0)
            oldest.unlink(missing_ok=True)
            total -= dropped
            self.dropped_records += dropped
            logger.warning(
                "telemetry backlog above %d records while the tracking server is unreachable: "
                "dropped %d of the oldest records (%d dropped in this session)",
                self.config.max_backlog_records,
                dropped,
                self.dropped_records,
            )

    # -- shutdown -------------------------------------------------------------------------

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, log the final session metrics, deliver, end the run."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._queue.put(None)
        self._writer.join(timeout)
        with self._state_lock:
            self._queue_session_metrics_locked()
        try:
            self.flush(force_seal=True)
            if self.run_id is not None:
                self._client.set_terminated(self.run_id, "FINISHED")
        except Exception as exc:
            logger.warning(
                "telemetry could not deliver at shutdown (%s); the records stay in %s",
                _short(exc),
                self.log.folder,
            )


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def log_request(request_id: str, *, latency_ms: float, rows: int, errors: int) -> None:
    """One structured (JSON) log line per request: id, latency, rows and errors."""
    if not request_logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        request_logger.addHandler(handler)
        request_logger.setLevel(logging.INFO)
        request_logger.propagate = False
    request_logger.info(
        json.dumps(
            {
                "event": "predict",
                "request_id": request_id,
                "latency_ms": round(latency_ms, 3),
                "rows": rows,
                "errors": errors,
                "pid": os.getpid(),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        )
    )


@dataclass
class ProbeResult:
    """The outcome of one health check of a model server."""

    count: int
    ok: bool
    response_time_ms: float
    endpoints: dict[str, int]
    version: str = ""


def check_model_server(url: str, *, timeout: float = 5.0) -> ProbeResult:
    """Call ``/ping``, ``/health`` and ``/version`` once.

    Returns:
        The result; ``ok`` is whether ``/ping`` answered 200 (the model is loaded) and
        ``response_time_ms`` is the time ``/ping`` took (the timeout when it failed).
    """
    import requests

    statuses: dict[str, int] = {}
    ping_ms = timeout * 1000.0
    version = ""
    for endpoint in ("ping", "health", "version"):
        start = time.perf_counter()
        try:
            response = requests.get(f"{url.rstrip('/')}/{endpoint}", timeout=timeout)
            statuses[endpoint] = response.status_code
            if endpoint == "ping":
                ping_ms = (time.perf_counter() - start) * 1000.0
            if endpoint == "version" and response.ok:
                version = response.text.strip()[:50]
        except requests.RequestException:
            statuses[endpoint] = 0
    return ProbeResult(0, statuses.get("ping") == 200, ping_ms, statuses, version)


def run_probe(
    url: str,
    *,
    interval: float = 30.0,
    count: int = 0,
    timeout: float = 5.0,
    tracking_uri: str = "",
    experiment_name: str = "",
) -> list[ProbeResult]:
    """Probe a model server every ``interval`` seconds and track it in a run tagged ``role=probe``.

    Metrics (step = check number): ``health_check_response_time_ms``, ``model_loaded`` (0/1),
    ``health_check_count``, ``health_check_failures`` (cumulative). A tracking server that
    is down is reported and retried at the next check; it never stops the probe.

    Args:
        url: base URL of the model server.
        interval: seconds between checks.
        count: number of checks; 0 probes until interrupted.
        timeout: seconds to wait for each endpoint.
        tracking_uri: where the run goes (default ``MLFLOW_TRACKING_URI``).
        experiment_name: experiment of the run (default ``MLFLOW_EXPERIMENT_NAME``).

    Returns:
        The results of every check.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    config = TelemetryConfig.from_env()
    client = MlflowClient(tracking_uri=tracking_uri or config.tracking_uri)
    name = experiment_name or config.experiment_name
    run_id: str | None = None
    results: list[ProbeResult] = []
    failures = 0
    pending: list[Metric] = []
    try:
        while count <= 0 or len(results) < count:
            if results:
                time.sleep(interval)
            result = check_model_server(url, timeout=timeout)
            result.count = len(results) + 1
            failures += 0 if result.ok else 1
            results.append(result)
            stamp = int(time.time() * 1000)
            values = {
                "health_check_response_time_ms": result.response_time_ms,
                "model_loaded": float(result.ok),
                "health_check_count": float(result.count),
                "health_check_failures": float(failures),
            }
            pending += [Metric(k, v, stamp, result.count) for k, v in values.items()]
            logger.info("probe %d of %s: %s", result.count, url, json.dumps(result.__dict__))
            try:
                if run_id is None:
                    experiment = client.get_experiment_by_name(name)
                    experiment_id = (
                        experiment.experiment_id if experiment else client.create_experiment(name)
                    )
                    run_id = client.create_run(
                        experiment_id,
                        run_name="probe",
                        tags={
                            "role": "probe",
                            "target_url": redact_uri(url),
                            "host": socket.gethostname(),
                        },
                    ).info.run_id
                client.log_batch(run_id, metrics=pending)
                pending = []
            except Exception as exc:
                logger.warning(
                    "probe could not log to the tracking server (%s); will retry", _short(exc)
                )
    finally:
        if run_id is not None:
            with contextlib.suppress(Exception):
                if pending:
                    client.log_batch(run_id, metrics=pending)
                client.set_terminated(run_id, "FINISHED")
    return results
