"""Shipping to MLflow: the session's run, its sealed log parts and its metrics.

:class:`RunShipper` delivers to one session run, created on first use: the per-prediction
metrics of each part in batches (``MlflowClient.log_batch``, up to 1,000 per call), then
the part itself as the artifact ``inference_log/part-NNNNN.jsonl``; only then is the part
marked shipped. :class:`ShippingLoop` calls a delivery function every few seconds in its
own thread (the only thread that ships), and backs off while the tracking server is
away. :class:`DeliveryHealth` remembers since when delivery fails, and says so in a
rate-limited warning from a thread that never waits for the network.

MLflow reads its HTTP timeout and retries from the process environment only
(``MLFLOW_HTTP_REQUEST_TIMEOUT``, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, read at each call;
neither a client nor a thread can have its own): :func:`limit_http_retries` lowers them
for the whole scoring server, whose only MLflow client is telemetry's.

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
from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from eye_model.config import INFERENCE_LOG_ARTIFACT_DIR, PROB_COLUMNS
from eye_model.metrics import count_delivery_failure
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
#: Longest wait (s) for one answer of the tracking server, in a scoring server.
HTTP_TIMEOUT_SECONDS = 5
#: Retries of one call MLflow makes itself, in a scoring server (the loop retries later).
HTTP_MAX_RETRIES = 0
#: Seconds between two "delivery failing" warnings.
WARN_EVERY_SECONDS = 60.0
#: A delivery attempt without an answer for this long (s) counts as failing.
STALL_SECONDS = 10.0


def limit_http_retries(environ: MutableMapping[str, str] | None = None) -> None:
    """Cap MLflow's HTTP timeout and retries for this process (a scoring server's).

    By default MLflow waits 120 s for an answer and retries for minutes, so one delivery
    attempt to a dead tracking server outlasted any shutdown. A lower value the user set
    is kept. Call it from the code that owns the process.

    Args:
        environ: the environment to change (default the process's).
    """
    env = os.environ if environ is None else environ
    for name, cap in (
        ("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_SECONDS),
        ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_MAX_RETRIES),
    ):
        try:
            value = min(int(env.get(name, cap)), cap)
        except ValueError:
            value = cap
        env[name] = str(value)


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
        run_id: str | None = None,
        pid: int | None = None,
        on_run: Callable[[str], None] | None = None,
    ) -> None:
        """Prepare the shipper; nothing talks to the tracking server before :meth:`ensure_run`.

        Args:
            config: tracking URI and experiment name.
            identity: the served model (run tags).
            session_id: the session's id (run tag).
            started_at: the session's start (epoch s, run tag).
            run_id: the session's run when it exists already (an adopted session).
            pid: the session's process (run tag; default this one).
            on_run: called with the run id once the run is created.
        """
        self.config = config
        self.identity = identity
        self.session_id = session_id
        self.started_at = started_at
        self.run_id = run_id
        self.pid = os.getpid() if pid is None else pid
        self.on_run = on_run
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
                "network_runtime": self.identity.network_runtime,
                "host": socket.gethostname(),
                "pid": str(self.pid),
                "session_id": self.session_id,
                "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started_at)),
            }
            run = client.create_run(
                experiment_id,
                run_name=f"serving-{socket.gethostname()}-{self.pid}",
                tags={k: v for k, v in tags.items() if v},
            )
            self.run_id = run.info.run_id
            logger.info("telemetry session %s logs to run %s", self.session_id, self.run_id)
            if self.on_run is not None:
                self.on_run(self.run_id)
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
                if record.get("ood_score") is not None:
                    values["prediction_ood_score"] = record["ood_score"]
                metrics.extend(Metric(k, float(v), stamp, step) for k, v in values.items())
            for start in range(0, len(metrics), BATCH_LIMIT):
                client.log_batch(run_id, metrics=metrics[start : start + BATCH_LIMIT])
            marker.touch()
        client.log_artifact(run_id, str(part), artifact_path=INFERENCE_LOG_ARTIFACT_DIR)
        InferenceLog.mark_shipped(part)
        marker.unlink(missing_ok=True)
        logger.debug(
            "telemetry delivered %s (%d records) to run %s", part.name, len(records), run_id
        )
        return len(records)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log metrics at ``step`` (now); non-finite values are left out."""
        from mlflow.entities import Metric

        client, run_id = self.ensure_run()
        stamp = int(time.time() * 1000)
        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items() if np.isfinite(v)]
        client.log_batch(run_id, metrics=batch)

    def tag(self, key: str, value: str) -> None:
        """Set a tag of the session run (created if need be)."""
        client, run_id = self.ensure_run()
        client.set_tag(run_id, key, value)

    def finish(self, status: str = "FINISHED", tags: dict[str, str] | None = None) -> None:
        """End the session run with ``status`` (and ``tags``), if one was created."""
        if self.run_id is not None and self._client is not None:
            for key, value in (tags or {}).items():
                self._client.set_tag(self.run_id, key, value)
            self._client.set_terminated(self.run_id, status)


class DeliveryHealth:
    """Since when delivery fails, and the rate-limited warning that says so.

    The shipper thread reports each attempt; another thread, one that never waits for the
    network, calls :meth:`warn_if_failing`, so the warning comes even while an attempt
    hangs on a tracking server that does not answer.
    """

    def __init__(self, warn_every: float = WARN_EVERY_SECONDS) -> None:
        """Start healthy; warn at most once every ``warn_every`` seconds."""
        self.warn_every = warn_every
        self._lock = threading.Lock()
        self._failing_since: float | None = None  # epoch s
        self._reason = ""
        self._attempt_since: float | None = None  # monotonic s
        self._last_warning = -float("inf")
        self.warnings = 0

    def attempt(self) -> None:
        """A delivery attempt starts."""
        with self._lock:
            self._attempt_since = time.monotonic()

    def succeeded(self) -> None:
        """The attempt delivered everything pending."""
        with self._lock:
            if self._failing_since is not None:
                logger.warning(
                    "telemetry delivery works again (failing since %s)",
                    _clock(self._failing_since),
                )
            self._failing_since = None
            self._attempt_since = None
            self._last_warning = -float("inf")

    def failed(self, exc: BaseException) -> None:
        """The attempt failed with ``exc``."""
        count_delivery_failure()
        with self._lock:
            self._attempt_since = None
            self._reason = short_error(exc)
            if self._failing_since is None:
                self._failing_since = time.time()

    @property
    def failing(self) -> bool:
        """Whether the last attempt failed (or the current one hangs)."""
        return self._state()[0] is not None

    @property
    def reason(self) -> str:
        """Why delivery fails ("" while it works)."""
        since, reason = self._state()
        return reason if since is not None else ""

    def _state(self) -> tuple[float | None, str]:
        with self._lock:
            since, reason = self._failing_since, self._reason
            started = self._attempt_since
        if started is not None and time.monotonic() - started >= STALL_SECONDS:
            hung = time.time() - (time.monotonic() - started)
            since = hung if since is None else min(since, hung)
            reason = f"no answer from the tracking server for {time.monotonic() - started:.0f} s"
        return since, reason

    def warn_if_failing(self, waiting: Callable[[], int]) -> bool:
        """Warn when delivery fails and the last warning is ``warn_every`` s old.

        Args:
            waiting: counts the records waiting for delivery (called only to warn).

        Returns:
            Whether a warning was logged.
        """
        since, reason = self._state()
        now = time.monotonic()
        if since is None or now - self._last_warning < self.warn_every:
            return False
        self._last_warning = now
        self.warnings += 1
        logger.warning(
            "telemetry delivery failing since %s (%d records waiting): %s",
            _clock(since),
            waiting(),
            reason,
        )
        return True


def _clock(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class ShippingLoop:
    """The shipper thread: calls a delivery function every ``interval`` s until stopped.

    The first call comes at once (adoption of dead sessions starts then). A failed
    delivery (the tracking server is away) is retried after a wait that doubles up to
    :data:`MAX_RETRY_SECONDS`; nothing is lost meanwhile. Once ``stop`` is set, one last
    call with ``final=True`` delivers what is left, then the thread ends.
    """

    def __init__(
        self,
        deliver: Callable[[bool], object],
        interval: float,
        stop: threading.Event,
        health: DeliveryHealth,
    ) -> None:
        """Prepare the loop; :meth:`start` starts its thread.

        Args:
            deliver: delivers what is pending (its argument: this is the last call);
                raises when the tracking server failed.
            interval: seconds between deliveries.
            stop: ends the loop when set.
            health: told about every attempt.
        """
        self.deliver = deliver
        self.interval = interval
        self.stop = stop
        self.health = health
        self._thread = threading.Thread(
            target=self._run, name="eye-model-telemetry-shipper", daemon=True
        )

    def start(self) -> None:
        """Start the shipper thread."""
        self._thread.start()

    def join(self, timeout: float) -> bool:
        """Wait at most ``timeout`` s for the thread to end; whether it ended."""
        if self._thread.ident is not None:
            self._thread.join(max(timeout, 0.0))
        return not self._thread.is_alive()

    def _run(self) -> None:
        delay = 0.0
        while True:
            final = self.stop.wait(delay)
            self.health.attempt()
            try:
                self.deliver(final)
                self.health.succeeded()
                delay = self.interval
            except Exception as exc:  # the tracking server is down: back off, keep everything
                self.health.failed(exc)
                delay = min(max(delay * 2, self.interval), MAX_RETRY_SECONDS)
                logger.debug("telemetry delivery failed (%s)", short_error(exc))
            if final:
                return
