"""Prediction telemetry: the brief's metrics, session and window metrics, a durable inference log.

How a record travels, and why it is never lost nor slows a request down:

1. ``predict`` hands the scored rows to :meth:`Telemetry.record`, which only puts them on
   an in-memory queue (microseconds; :mod:`~eye_model.telemetry.recorder`).
2. A writer thread builds one record per image (:mod:`~eye_model.telemetry.records`),
   counts it in the session metrics (:mod:`~eye_model.telemetry.session`) and appends it,
   one JSON line, to the session's local file (``<telemetry dir>/<session>/current.jsonl``).
   This local log (:mod:`~eye_model.telemetry.inference_log`) is the source of truth.
   Every few seconds (or every N records) the file is sealed as ``part-NNNNN.jsonl``.
3. A shipper thread delivers each sealed part to the session's MLflow run
   (:mod:`~eye_model.telemetry.shipping`): the per-prediction metrics in batches, then the
   part itself as the artifact ``inference_log/part-NNNNN.jsonl``. Only then is it marked
   shipped. While the tracking server is down, parts wait on disk and are delivered when it
   is back; if more than ``max_backlog_records`` wait, the oldest are dropped with a warning
   that says how many.
4. When the process ends, every session delivers what it holds
   (:mod:`~eye_model.telemetry.shutdown`).

:class:`Telemetry` (:mod:`~eye_model.telemetry.tracker`) wires these together;
:mod:`~eye_model.telemetry.config` says whether this process tracks at all, and
:mod:`~eye_model.telemetry.probe` is the separate health probe of a model server.

No pixels, no image bytes, no file names and no ``image_id`` (it may identify a
patient) are written, unless the ``log_image_ids`` setting is on.

Tracking disabled (``enable_tracking`` off) means no run, no file and no thread.
"""

from __future__ import annotations

from eye_model.config import INFERENCE_LOG_ARTIFACT_DIR
from eye_model.telemetry.config import TelemetryConfig
from eye_model.telemetry.inference_log import InferenceLog
from eye_model.telemetry.probe import ProbeResult, check_model_server, run_probe
from eye_model.telemetry.recorder import WRITE_DELAY_SECONDS
from eye_model.telemetry.records import (
    RECORD_SCHEMA,
    ModelIdentity,
    build_records,
    log_request,
    read_model_identity,
)
from eye_model.telemetry.session import SessionMetrics
from eye_model.telemetry.shutdown import close_all, install_shutdown_handler
from eye_model.telemetry.tracker import Telemetry

__all__ = [
    "INFERENCE_LOG_ARTIFACT_DIR",
    "RECORD_SCHEMA",
    "WRITE_DELAY_SECONDS",
    "InferenceLog",
    "ModelIdentity",
    "ProbeResult",
    "SessionMetrics",
    "Telemetry",
    "TelemetryConfig",
    "build_records",
    "check_model_server",
    "close_all",
    "install_shutdown_handler",
    "log_request",
    "read_model_identity",
    "run_probe",
]
