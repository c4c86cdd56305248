"""Prometheus metrics of the model server, on their own port (``/metrics``).

MLflow's scoring server has no metrics endpoint, so each worker of ``mlflow models serve``
that has the metrics port set records into prometheus_client's multiprocess files, and one
of them (the first to bind the port; another takes over within seconds if it dies) serves
``/metrics`` with the sum over every worker, including workers that died: a counter never
goes down because uvicorn replaced a killed worker.

Nothing here is on when the port is unset, and every recording function is then a no-op.
Metric names are a contract with dashboards (``deploy/grafana``) and alert rules
(``deploy/prometheus``); ``tests/code/test_dashboards.py`` checks they stay in step.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: prometheus_client's variable naming the folder of the multiprocess files.
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
#: Seconds between two attempts of a worker to take over the port.
BIND_RETRY_SECONDS = 5.0
#: Buckets of the per-image inference time and the request latency, in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Buckets of the network batch size.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64)
#: Buckets of the top probability (a confidence below 0.6 is "low" for the drift heuristics).
CONFIDENCE_BUCKETS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)

#: Every metric name the service exports (dashboards and alert rules may use only these).
METRIC_NAMES = (
    "eye_model_predictions_total",
    "eye_model_inference_seconds",
    "eye_model_request_seconds",
    "eye_model_batch_size",
    "eye_model_confidence",
    "eye_model_fundus_check_total",
    "eye_model_out_of_distribution_total",
    "eye_model_telemetry_backlog_records",
    "eye_model_telemetry_delivery_failures_total",
    "eye_model_model_info",
)


@dataclass
class _Metrics:
    predictions: Any
    inference: Any
    request: Any
    batch: Any
    confidence: Any
    fundus: Any
    ood: Any
    backlog: Any
    delivery_failures: Any
    info: Any


_lock = threading.Lock()
_metrics: _Metrics | None = None
_server_thread: threading.Thread | None = None


def enabled() -> bool:
    """Whether this process records metrics."""
    return _metrics is not None


def metrics_folder(port: int, configured: str | None = None) -> Path:
    """The multiprocess folder shared by the workers of one model server.

    ``PROMETHEUS_MULTIPROC_DIR`` when set (the stack sets a fresh one per start); else one
    per server start and port: the workers of one ``mlflow models serve`` share a parent
    process (uvicorn, or MLflow's command for one worker), and a new server has a new one.
    """
    if configured:
        return Path(configured)
    return Path(tempfile.gettempdir()) / f"eye-model-metrics-{port}-{os.getppid()}"


def start(
    port: int,
    *,
    model_name: str,
    model_version: str,
    host: str = "0.0.0.0",
    folder: str = "",
) -> bool:
    """Record metrics in this worker and try to serve ``/metrics`` on ``port``.

    Idempotent: a second call (another model loaded in the same worker) does nothing.

    Args:
        port: the port of ``/metrics``.
        model_name: registered name of the served model (the info metric's label).
        model_version: its version.
        host: the interface to listen on.
        folder: the workers' shared folder (``PROMETHEUS_MULTIPROC_DIR``); empty: one per
            server start (:func:`metrics_folder`).

    Returns:
        Whether metrics are recorded (False only when prometheus_client is missing).
    """
    global _metrics
    with _lock:
        if _metrics is not None:
            return True
        path = metrics_folder(port, folder)
        path.mkdir(parents=True, exist_ok=True)
        # prometheus_client reads its folder from the environment when a value is made.
        os.environ[MULTIPROC_VARIABLE] = str(path)
        try:
            _metrics = _create_metrics()
        except ImportError:
            logger.warning("metrics port %d is set but prometheus_client is not installed", port)
            return False
        _metrics.info.labels(model_name=model_name, model_version=model_version).set(1)
        _start_server(port, host, path)
        return True


def _create_metrics() -> _Metrics:
    from prometheus_client import Counter, Gauge, Histogram, values

    # The value class is chosen when prometheus_client is first imported; if something
    # imported it before the folder was set, switch to the multiprocess files now.
    if not isinstance(values.ValueClass, type) or values.ValueClass is values.MutexValue:
        values.ValueClass = values.MultiProcessValue()
    no_registry: dict[str, Any] = {"registry": None}
    return _Metrics(
        predictions=Counter(
            "eye_model_predictions",
            "Images scored, one per input row, by predicted class and status (ok or the "
            "error kind)",
            ["predicted_class", "status"],
            **no_registry,
        ),
        inference=Histogram(
            "eye_model_inference_seconds",
            "Time of one image: its decode and its share of the network call",
            buckets=LATENCY_BUCKETS,
            **no_registry,
        ),
        request=Histogram(
            "eye_model_request_seconds",
            "Time of one predict call (one REST request)",
            buckets=LATENCY_BUCKETS,
            **no_registry,
        ),
        batch=Histogram(
            "eye_model_batch_size",
            "Images per network call",
            buckets=BATCH_BUCKETS,
            **no_registry,
        ),
        confidence=Histogram(
            "eye_model_confidence",
            "Confidence (top probability, 0-1) of scored images",
            buckets=CONFIDENCE_BUCKETS,
            **no_registry,
        ),
        fundus=Counter(
            "eye_model_fundus_check",
            "Images by fundus-check result (pass, or the reason it failed)",
            ["result"],
            **no_registry,
        ),
        ood=Counter(
            "eye_model_out_of_distribution",
            "Scored images whose ood_score is 1.0 or more (unlike the training data)",
            **no_registry,
        ),
        backlog=Gauge(
            "eye_model_telemetry_backlog_records",
            "Inference records written locally and not yet delivered to MLflow",
            multiprocess_mode="livesum",
            **no_registry,
        ),
        delivery_failures=Counter(
            "eye_model_telemetry_delivery_failures",
            "Failed attempts to deliver telemetry to the tracking server",
            **no_registry,
        ),
        info=Gauge(
            "eye_model_model_info",
            "The served model (value 1), by registered name and version",
            ["model_name", "model_version"],
            multiprocess_mode="liveall",
            **no_registry,
        ),
    )


def _start_server(port: int, host: str, folder: Path) -> None:
    """Serve the folder's sum on ``port`` from the first worker that can bind it."""
    global _server_thread
    if _server_thread is not None:
        return

    def serve() -> None:
        import time

        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=str(folder))
        warned = False
        while True:
            try:
                start_http_server(port, addr=host, registry=registry)
                logger.info("Prometheus metrics on port %d (/metrics)", port)
                return
            except OSError as exc:  # another worker serves it; take over if it goes
                if not warned:
                    logger.debug("metrics port %d busy (%s); another worker serves it", port, exc)
                    warned = True
            time.sleep(BIND_RETRY_SECONDS)

    _server_thread = threading.Thread(target=serve, name="eye-model-metrics", daemon=True)
    _server_thread.start()


def error_kind(row: Any) -> str:
    """The ``status`` label of a row: ``ok``, or what kind of error it got."""
    error = getattr(row, "output_error", None)
    if error is None:
        return "ok"
    check = getattr(row, "fundus_check", None)
    if check not in (None, "pass"):
        return "not_fundus"
    text = str(error)
    if text.startswith("the model failed"):
        return "model_error"
    if "time limit" in text:
        return "timeout"
    if "too large" in text or "limit" in text:
        return "over_limit"
    return "invalid_image"


def observe_request(rows: Sequence[Any], seconds: float, class_names: Sequence[str]) -> None:
    """Count one predict call's rows and time it (no-op when metrics are off)."""
    metrics = _metrics
    if metrics is None:
        return
    try:
        metrics.request.observe(seconds)
        for row in rows:
            status = error_kind(row)
            probabilities = getattr(row, "probabilities", None)
            predicted = "none"
            if status == "ok" and probabilities is not None:
                top = int(probabilities.argmax())
                predicted = class_names[top]
                metrics.confidence.observe(float(probabilities[top]))
                metrics.inference.observe(row.inference_ms / 1000.0)
            metrics.predictions.labels(predicted_class=predicted, status=status).inc()
            check = getattr(row, "fundus_check", None)
            if check is not None:
                metrics.fundus.labels(result=check).inc()
            ood = getattr(row, "ood_score", None)
            if ood is not None and ood >= 1.0:
                metrics.ood.inc()
    except Exception:  # metrics must never fail a prediction
        logger.exception("could not record metrics")


def observe_batch(size: int) -> None:
    """One network call of ``size`` images."""
    metrics = _metrics
    if metrics is not None:
        metrics.batch.observe(size)


def set_backlog(records: int) -> None:
    """Telemetry records waiting for delivery in this worker."""
    metrics = _metrics
    if metrics is not None:
        metrics.backlog.set(records)


def count_delivery_failure() -> None:
    """One failed attempt to deliver telemetry."""
    metrics = _metrics
    if metrics is not None:
        metrics.delivery_failures.inc()
