"""``Telemetry``: one tracked serving session, wiring the recorder, the log and the shipper."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from eye_model.telemetry import shutdown
from eye_model.telemetry.config import TelemetryConfig
from eye_model.telemetry.inference_log import InferenceLog
from eye_model.telemetry.recorder import Recorder
from eye_model.telemetry.records import ModelIdentity
from eye_model.telemetry.session import SessionMetrics
from eye_model.telemetry.shipping import RunShipper, ShippingLoop, short_error

logger = logging.getLogger(__name__)


class Telemetry:
    """Tracks one serving session (one process); see :mod:`eye_model.telemetry`.

    Starts a writer thread and a shipper thread, and closes itself when the process ends
    (see :mod:`eye_model.telemetry.shutdown`).

    Attributes:
        config: the telemetry settings.
        identity: the served model.
        session_id: ``<start time>-<pid>-<random>``, also the log folder's name.
        log: the session's local inference log.
        session: the session and window metrics.
        started_at: start of the session (epoch s).
    """

    def __init__(self, config: TelemetryConfig, identity: ModelIdentity) -> None:
        """Open the session's log and start its threads (no tracking server call yet)."""
        self.config = config
        self.identity = identity
        self.session_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.log = InferenceLog(config.log_dir / self.session_id)
        self.started_at = time.time()
        self.session = SessionMetrics(
            window_size=config.window_size,
            every_n=config.session_every_n,
            every_s=config.session_every_s,
        )
        self._recorder = Recorder(
            identity, self.log, self.session, log_image_ids=config.log_image_ids
        )
        self._shipper = RunShipper(
            config, identity, session_id=self.session_id, started_at=self.started_at
        )
        self._stop = threading.Event()
        self._loop = ShippingLoop(
            lambda: self.flush(force_seal=False), config.ship_interval, self._stop
        )
        self._recorder.start()
        self._loop.start()
        shutdown.register(self)

    @property
    def run_id(self) -> str | None:
        """The session's MLflow run, None until the first delivery created it."""
        return self._shipper.run_id

    @property
    def dropped_records(self) -> int:
        """Records dropped because the backlog grew past ``max_backlog_records``."""
        return self.log.dropped_records

    def record(
        self, rows: Sequence[Any], *, request_id: str, image_ids: Sequence[object] | None
    ) -> None:
        """Queue the rows of one request (called from ``predict``: a queue put, never raising).

        Args:
            rows: the request's scored rows (``eye_model.pyfunc.ScoredImage``), pixels kept.
            request_id: the request's id.
            image_ids: the client's ids, kept only when ``log_image_ids`` is on.
        """
        self._recorder.record(rows, request_id=request_id, image_ids=image_ids)

    def flush(self, *, force_seal: bool = True) -> int:
        """Seal what is due, deliver every pending part and session metrics.

        Args:
            force_seal: also seal the current file when it is neither full nor old.

        Returns:
            The number of records delivered.

        Raises:
            Exception: whatever the tracking server raised; nothing is lost.
        """
        config = self.config
        self.session.queue_if_stale()
        self.log.seal_if_due(config.part_records, config.part_seconds, force=force_seal)
        self.log.enforce_backlog(config.max_backlog_records)
        parts = self.log.pending_parts()
        if not parts and not self.session.has_pending and self.run_id is not None:
            return 0
        self._shipper.ensure_run()
        delivered = 0
        for part in parts:
            delivered += self._shipper.ship_part(part)
        while (pending := self.session.next_pending()) is not None:
            step, metrics = pending
            self._shipper.log_metrics(metrics, step)
            self.session.delivered()
        return delivered

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, log the final session metrics, deliver, end the run.

        Args:
            timeout: seconds to wait for the writer thread to write what is queued.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        shutdown.unregister(self)
        self._recorder.stop(timeout)
        self.session.queue_now()
        try:
            self.flush(force_seal=True)
            self._shipper.finish()
        except Exception as exc:
            logger.warning(
                "telemetry could not deliver at shutdown (%s); the records stay in %s",
                short_error(exc),
                self.log.folder,
            )
