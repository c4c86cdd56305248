"""Shipping to MLflow: the session's run, its sealed log parts and its metrics.

:class:`RunShipper` delivers to one session run, created on first use: the per-prediction
metrics of each part in batches (``MlflowClient.log_batch``, up to 1,000 per call), then
the part itself as the artifact ``inference_log/part-NNNNN.jsonl``; only then is the part
marked shipped. :class:`ShippingLoop` calls a delivery function every few seconds in a
thread, and backs off while the tracking server is away.

MLflow's own asynchronous logging queue is not used for records because it does not keep
what it could not deliver. The client is an ``MlflowClient(tracking_uri=...)``: nothing
here changes MLflow's process-wide tracking URI.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eye_model.config import INFERENCE_LOG_ARTIFACT_DIR, PROB_COLUMNS
from eye_model.telemetry.config import TelemetryConfig
from eye_model.telemetry.inference_log import InferenceLog
from eye_model.telemetry.records import ModelIdentity
from eye_model.uris import redact_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

logger = logging.getLogger(__name__)

#: MLflow accepts at most this many metrics in one log_batch call.
BATCH_LIMIT = 1000
#: Longest wait (s) between two delivery attempts while the tracking server is away.
MAX_RETRY_SECONDS = 15.0


def short_error(exc: BaseException) -> str:
    """The exception's type and the first line of its message (at most 200 characters)."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


class RunShipper:
    """Delivers one serving session to its MLflow run (tagged ``role=serving``).

    Attributes:
        run_id: the session run, None until the first delivery created it.
    """

    def __init__(
        self,
        config: TelemetryConfig,
        identity: ModelIdentity,
        *,
        session_id: str,
        started_at: float,
    ) -> None:
        """Prepare the shipper; nothing talks to the tracking server before :meth:`ensure_run`.

        Args:
            config: tracking URI and experiment name.
            identity: the served model (run tags).
            session_id: the session's id (run tag).
            started_at: the session's start (epoch s, run tag).
        """
        self.config = config
        self.identity = identity
        self.session_id = session_id
        self.started_at = started_at
        self.run_id: str | None = None
        self._client: MlflowClient | None = None

    def ensure_run(self) -> tuple[MlflowClient, str]:
        """Create the session run if it does not exist yet.

        Returns:
            The client of the tracking server and the run's id.

        Raises:
            Exception: whatever the tracking server raised.
        """
        from mlflow import MlflowClient

        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.config.tracking_uri)
        if self.run_id is None:
            client = self._client
            name = self.config.experiment_name
            experiment = client.get_experiment_by_name(name)
            experiment_id = (
                experiment.experiment_id if experiment else client.create_experiment(name)
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
            run = client.create_run(
                experiment_id,
                run_name=f"serving-{socket.gethostname()}-{os.getpid()}",
                tags={k: v for k, v in tags.items() if v},
            )
            self.run_id = run.info.run_id
            logger.info("telemetry session %s logs to run %s", self.session_id, self.run_id)
        return self._client, self.run_id

    def ship_part(self, part: Path) -> int:
        """Deliver a sealed part: its per-prediction metrics, then the part as an artifact.

        A ``.metrics`` file beside the part remembers that its metrics were delivered, so a
        retry after a failed artifact upload does not log them twice.

        Args:
            part: a pending part of the inference log.

        Returns:
            The number of records delivered.
        """
        from mlflow.entities import Metric

        client, run_id = self.ensure_run()
        records = InferenceLog.read_part(part)
        marker = part.with_suffix(".metrics")
        if not marker.exists():
            metrics: list[Metric] = []
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
            for start in range(0, len(metrics), BATCH_LIMIT):
                client.log_batch(run_id, metrics=metrics[start : start + BATCH_LIMIT])
            marker.touch()
        client.log_artifact(run_id, str(part), artifact_path=INFERENCE_LOG_ARTIFACT_DIR)
        InferenceLog.mark_shipped(part)
        marker.unlink(missing_ok=True)
        return len(records)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log metrics at ``step`` (now); non-finite values are left out."""
        from mlflow.entities import Metric

        client, run_id = self.ensure_run()
        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items() if np.isfinite(v)]
        client.log_batch(run_id, metrics=batch)

    def finish(self) -> None:
        """End the session run (FINISHED), if one was created."""
        if self.run_id is not None and self._client is not None:
            self._client.set_terminated(self.run_id, "FINISHED")


class ShippingLoop:
    """Calls a delivery function every ``interval`` seconds in a thread until stopped.

    A failed delivery (the tracking server is away) is logged and retried after a wait
    that doubles up to :data:`MAX_RETRY_SECONDS`; nothing is lost meanwhile.
    """

    def __init__(
        self, deliver: Callable[[], object], interval: float, stop: threading.Event
    ) -> None:
        """Prepare the loop; :meth:`start` starts its thread.

        Args:
            deliver: delivers what is pending; raises when the tracking server failed.
            interval: seconds between deliveries.
            stop: ends the loop when set.
        """
        self.deliver = deliver
        self.interval = interval
        self.stop = stop
        self._thread = threading.Thread(
            target=self._run, name="eye-model-telemetry-shipper", daemon=True
        )

    def start(self) -> None:
        """Start the shipper thread."""
        self._thread.start()

    def _run(self) -> None:
        delay = self.interval
        while not self.stop.wait(delay):
            try:
                self.deliver()
                delay = self.interval
            except Exception as exc:  # the tracking server is down: back off, keep everything
                delay = min(max(delay * 2, self.interval), MAX_RETRY_SECONDS)
                logger.warning(
                    "telemetry delivery failed (%s); retrying in %.0f s", short_error(exc), delay
                )
