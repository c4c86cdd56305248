"""``Telemetry``: one tracked serving session, wiring the recorder, the log and the shipper."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import Any

from eye_model.metrics import set_backlog
from eye_model.telemetry import shutdown
from eye_model.telemetry.adoption import SessionManifest, adopt_dead_sessions, own_session
from eye_model.telemetry.config import TelemetryConfig
from eye_model.telemetry.inference_log import InferenceLog
from eye_model.telemetry.recorder import MAX_QUEUED_RECORDS, Recorder
from eye_model.telemetry.records import ModelIdentity
from eye_model.telemetry.session import SessionMetrics
from eye_model.telemetry.shipping import (
    WARN_EVERY_SECONDS,
    DeliveryHealth,
    RunShipper,
    ShippingLoop,
)

logger = logging.getLogger(__name__)

#: Seconds :meth:`Telemetry.close` takes at most by default (SIGTERM must end in 10 s).
CLOSE_SECONDS = 5.0
#: Seconds between two checks of the backlog limit.
BACKLOG_CHECK_SECONDS = 5.0


class Telemetry:
    """Tracks one serving session (one process); see :mod:`eye_model.telemetry`.

    Threads: the request threads write records (:class:`Recorder`); a metrics thread
    counts them and seals, bounds and watches the log; the shipper thread is the only one
    that delivers (first adopting dead sessions' logs, see
    :mod:`eye_model.telemetry.adoption`). :meth:`flush` may deliver from any thread: one
    lock makes delivery single-owner, so a part is never shipped twice and the run is
    created once.

    Attributes:
        config: the telemetry settings.
        identity: the served model.
        session_id: ``<start time>-<pid>-<random>``, also the log folder's name.
        log: the session's local inference log.
        session: the session and window metrics.
        started_at: start of the session (epoch s).
        health: since when delivery fails.
    """

    def __init__(
        self,
        config: TelemetryConfig,
        identity: ModelIdentity,
        *,
        max_queued: int = MAX_QUEUED_RECORDS,
        warn_every: float = WARN_EVERY_SECONDS,
    ) -> None:
        """Open the session's log and start its threads (no tracking server call yet).

        Args:
            config: the telemetry settings.
            identity: the served model.
            max_queued: most records waiting for the session metrics.
            warn_every: seconds between two "delivery failing" warnings.
        """
        self.config = config
        self.identity = identity
        self.session_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.started_at = time.time()
        folder = config.log_dir / self.session_id
        self._manifest = SessionManifest.for_this_process(
            self.session_id, self.started_at, identity
        )
        self._manifest_lock = threading.Lock()
        self._owner_lock = own_session(folder, self._manifest)
        self.log = InferenceLog(
            folder, part_records=config.part_records, part_seconds=config.part_seconds
        )
        self.session = SessionMetrics(
            window_size=config.window_size,
            every_n=config.session_every_n,
            every_s=config.session_every_s,
        )
        self.health = DeliveryHealth(warn_every)
        self._recorder = Recorder(
            identity,
            self.log,
            self.session,
            log_image_ids=config.log_image_ids,
            max_queued=max_queued,
            housekeeping=self._housekeeping,
        )
        self._shipper = RunShipper(
            config,
            identity,
            session_id=self.session_id,
            started_at=self.started_at,
            on_run=self._remember_run,
        )
        self._ship_lock = threading.Lock()
        self._adopted = False
        self._last_backlog_check = -float("inf")
        self._closing = threading.Lock()  # taken once, by the first close(), never released
        self._stop = threading.Event()
        self._loop = ShippingLoop(self._deliver, config.ship_interval, self._stop, self.health)
        self._recorder.start()
        self._loop.start()
        shutdown.register(self)

    @property
    def run_id(self) -> str | None:
        """The session's MLflow run, None until the first delivery created it."""
        return self._shipper.run_id

    @property
    def dropped_records(self) -> int:
        """Records left out of the session metrics because the in-memory queue was full."""
        return self._recorder.dropped_records

    @property
    def dropped_backlog_records(self) -> int:
        """Records deleted unsent because the backlog grew past ``max_backlog_records``."""
        return self.log.dropped_records

    def record(
        self, rows: Sequence[Any], *, request_id: str, image_ids: Sequence[object] | None
    ) -> None:
        """Write the records of one request to the local log (from ``predict``; never raises).

        Args:
            rows: the request's scored rows (``eye_model.scored.ScoredImage``); their pixels
                are released here.
            request_id: the request's id.
            image_ids: the client's ids, kept only when ``log_image_ids`` is on.
        """
        if self._stop.is_set():  # closed: the process is ending
            return
        self._recorder.record(rows, request_id=request_id, image_ids=image_ids)

    def _remember_run(self, run_id: str) -> None:
        with self._manifest_lock:
            self._manifest.run_id = run_id
            self._manifest.write(self.log.folder)

    def _housekeeping(self) -> None:
        """The metrics thread's round: seal by age, bound the backlog, warn about delivery."""
        config = self.config
        self.session.queue_if_stale()
        sealed = self.log.seal_if_due()
        now = time.monotonic()
        if sealed is not None or now - self._last_backlog_check >= BACKLOG_CHECK_SECONDS:
            self._last_backlog_check = now
            self.log.enforce_backlog(config.max_backlog_records)
        self.health.warn_if_failing(self.log.pending_records)
        set_backlog(self.log.pending_records())

    def _deliver(self, final: bool) -> None:
        """The shipper thread's round: adopt dead sessions once, then deliver this one."""
        if not self._adopted and not final:
            adopt_dead_sessions(self.config.log_dir, self.log.folder, self.config, self._stop)
            self._adopted = True
        if final:
            self._finish()
        else:
            self.flush(force_seal=False)

    def flush(self, *, force_seal: bool = True, lock_timeout: float = -1) -> int:
        """Seal what is due, deliver every pending part and session metrics.

        Safe from any thread: deliveries take turns.

        Args:
            force_seal: also seal the current file when it is neither full nor old.
            lock_timeout: give up (returning 0) when another delivery holds the turn this
                long (s; negative: wait).

        Returns:
            The number of records delivered.

        Raises:
            Exception: whatever the tracking server raised; nothing is lost.
        """
        if not self._ship_lock.acquire(timeout=lock_timeout):
            return 0
        try:
            return self._flush_locked(force_seal)
        finally:
            self._ship_lock.release()

    def _flush_locked(self, force_seal: bool) -> int:
        self.session.queue_if_stale()
        self.log.seal_if_due(force=force_seal)
        parts = self.log.pending_parts()
        if not parts and not self.session.has_pending:
            return 0
        self._shipper.ensure_run()
        delivered = 0
        for part in parts:
            self.log.begin_shipping(part)
            try:
                delivered += self._shipper.ship_part(part)
            finally:
                self.log.end_shipping()
        while (pending := self.session.next_pending()) is not None:
            step, metrics = pending
            self._shipper.log_metrics(metrics, step)
            self.session.delivered()
        return delivered

    def _finish(self) -> None:
        """Last delivery (shipper thread, at close): everything, then end the run."""
        with self._ship_lock:
            self._flush_locked(force_seal=True)
            self._shipper.finish()
            with self._manifest_lock:
                self._manifest.ended = True
                self._manifest.write(self.log.folder)

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Seal what is written, deliver it and end the run, in at most ``timeout`` s.

        Safe while a delivery runs in another thread and from a signal handler: only the
        first call acts, nothing waits for a lock longer than the time left, and the last
        delivery runs in the shipper thread (joined with the time left). What could not
        be delivered in time stays on disk and is delivered by the next serving process
        on this host (:mod:`eye_model.telemetry.adoption`).

        Args:
            timeout: seconds this call takes at most.
        """
        if not self._closing.acquire(blocking=False):
            return
        deadline = time.monotonic() + timeout
        shutdown.unregister(self)
        self._recorder.stop(min(1.0, timeout / 4))
        self.session.queue_now()
        # A signal handler may interrupt a thread that holds the log: never wait long.
        self.log.seal_if_due(force=True, lock_timeout=min(1.0, timeout / 4))
        with self._manifest_lock:
            self._manifest.closed = True
            self._manifest.write(self.log.folder)
        self._stop.set()
        if not self._loop.join(deadline - time.monotonic()) or self.health.failing:
            logger.warning(
                "telemetry could not deliver everything at shutdown (%s); %d records stay in "
                "%s and are delivered by the next serving process on this host",
                self.health.reason or "the tracking server did not answer in time",
                self.log.pending_records(),
                self.log.folder,
            )
        self.log.close()
        self._owner_lock.close()  # the folder is free for adoption
