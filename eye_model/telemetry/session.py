"""Session and recent-window metrics of one serving session.

The metrics thread counts every record (:meth:`SessionMetrics.count`); the inference log
already gave each its ``count`` (the metric step of its per-prediction metrics). Every N
predictions, every T seconds and at shutdown a snapshot of the session and window
metrics is queued (at most :data:`MAX_PENDING_SNAPSHOTS`, the oldest dropped first while
the tracking server is away); the shipper delivers the queue in order.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eye_model.config import CLASS_NAMES
from eye_model.ood import OOD_THRESHOLD

#: Most snapshots kept for delivery; older ones are dropped while the tracking server is away.
MAX_PENDING_SNAPSHOTS = 1000


@dataclass
class _SessionState:
    """Running aggregates of the session (changed under :class:`SessionMetrics`' lock)."""

    total: int = 0
    errors: int = 0
    sum_ms: float = 0.0
    sum_confidence: float = 0.0
    scored: int = 0
    sum_batch: int = 0
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(len(CLASS_NAMES), int))
    # (confidence 0-1 or None, class code or -1 for an error, inference ms)
    window: deque[tuple[float | None, int, float]] = field(default_factory=deque)
    # ood_score of the window's scored records (None: the model has no score), same order
    window_ood: deque[float | None] = field(default_factory=deque)
    last_logged_total: int = 0
    last_logged_at: float = field(default_factory=time.monotonic)


class SessionMetrics:
    """Aggregates of a session's predictions and the snapshots waiting for delivery.

    Thread-safe: the metrics thread counts, the shipper thread takes snapshots.
    """

    def __init__(self, *, window_size: int, every_n: int, every_s: float) -> None:
        """Start an empty session.

        Args:
            window_size: predictions in the recent window.
            every_n: queue a snapshot every this many predictions ...
            every_s: ... or when this many seconds passed since the last one (see
                :meth:`queue_if_stale`).
        """
        self.every_n = every_n
        self.every_s = every_s
        self._state = _SessionState(
            window=deque(maxlen=window_size), window_ood=deque(maxlen=window_size)
        )
        self._lock = threading.Lock()
        self._pending: list[tuple[int, dict[str, float]]] = []

    def count(self, records: list[dict[str, Any]]) -> None:
        """Add records to the aggregates.

        A record's ``count`` (given by the inference log) is the session's total so far,
        so records left out of the aggregates (a full queue) still count in the total; a
        record without one gets the next number. Queues a snapshot when ``every_n``
        predictions passed since the last one.
        """
        with self._lock:
            state = self._state
            for record in records:
                state.total = max(state.total + 1, int(record.get("count") or 0))
                record.setdefault("count", state.total)
                state.sum_ms += record["inference_ms"]
                if record["status"] == "ok":
                    state.scored += 1
                    state.sum_batch += int(record.get("batch_size") or 0)
                    state.sum_confidence += record["confidence"]
                    code = CLASS_NAMES.index(record["predicted_class"])
                    state.class_counts[code] += 1
                    state.window.append((record["confidence"], code, record["inference_ms"]))
                    state.window_ood.append(record.get("ood_score"))
                else:
                    state.errors += 1
                    state.window.append((None, -1, record["inference_ms"]))
                    state.window_ood.append(None)
            if state.total - state.last_logged_total >= self.every_n:
                self._queue_locked()

    def queue_if_stale(self) -> None:
        """Queue a snapshot when ``every_s`` seconds passed since the last one."""
        with self._lock:
            if time.monotonic() - self._state.last_logged_at >= self.every_s:
                self._queue_locked()

    def queue_now(self) -> None:
        """Queue a snapshot now (at shutdown), unless nothing was counted since the last."""
        with self._lock:
            self._queue_locked()

    def next_pending(self) -> tuple[int, dict[str, float]] | None:
        """The oldest snapshot not yet delivered (step, metrics), or None."""
        with self._lock:
            return self._pending[0] if self._pending else None

    def delivered(self) -> None:
        """Forget the oldest snapshot: it was delivered."""
        with self._lock:
            if self._pending:
                self._pending.pop(0)

    @property
    def has_pending(self) -> bool:
        """Whether snapshots wait for delivery."""
        return bool(self._pending)

    def _queue_locked(self) -> None:
        state = self._state
        if state.total == state.last_logged_total:
            return
        self._pending.append((state.total, self._snapshot_locked()))
        del self._pending[:-MAX_PENDING_SNAPSHOTS]
        state.last_logged_total = state.total
        state.last_logged_at = time.monotonic()

    def _snapshot_locked(self) -> dict[str, float]:
        """The session and window metrics now (confidences in these metrics are 0-100)."""
        # Imported here: the drift package reads the inference log this package writes.
        from eye_model.drift import DriftConfig, compute_heuristics

        drift = DriftConfig()
        state = self._state
        metrics = {
            "session_total_predictions": float(state.total),
            "session_avg_inference_time_ms": state.sum_ms / max(state.total, 1),
            "session_avg_confidence": 100.0 * state.sum_confidence / max(state.scored, 1),
            # Images per network call, averaged over scored images (batching across requests).
            "session_avg_batch_size": state.sum_batch / max(state.scored, 1),
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
        heuristics = compute_heuristics(confidence, codes, times, drift)
        metrics.update(
            {
                "recent_avg_confidence": 100.0 * float(confidence.mean())
                if confidence.size
                else 0.0,
                "recent_low_confidence_ratio": float(
                    (confidence < drift.low_confidence_cutoff).mean()
                )
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
        ood = np.array([score for score in state.window_ood if score is not None], float)
        if ood.size:  # a model without the out-of-distribution score logs neither
            metrics["recent_ood_share"] = float((ood >= OOD_THRESHOLD).mean())
            metrics["recent_avg_ood_score"] = float(ood.mean())
        return metrics
