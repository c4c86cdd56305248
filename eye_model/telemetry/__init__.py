"""Prediction telemetry: the brief's metrics, session and window metrics, a durable inference log.

How a record travels, and why it is never lost nor slows a request down:

1. ``predict`` hands the scored rows to :meth:`Telemetry.record`, which, in the request
   thread (:mod:`~eye_model.telemetry.recorder`), computes each image's statistics, drops
   its pixels, builds one record per image (:mod:`~eye_model.telemetry.records`) and
   appends them, one JSON line each, to the session's open local file
   (``<telemetry dir>/<session>/current.jsonl``), flushed to the OS before ``predict``
   returns: every prediction a client receives survives a killed process. This local log
   (:mod:`~eye_model.telemetry.inference_log`) is the source of truth. The file is sealed
   as ``part-NNNNN.jsonl`` every N records (by the request thread) or every few seconds
   (by the metrics thread, which also counts the records into the session metrics,
   :mod:`~eye_model.telemetry.session`, from a bounded queue).
2. The shipper thread, the only one that talks to the tracking server, delivers each
   sealed part to the session's MLflow run (:mod:`~eye_model.telemetry.shipping`): the
   per-prediction metrics in batches, then the part itself as the artifact
   ``inference_log/part-NNNNN.jsonl``. Only then is it marked shipped. While the tracking
   server is down, parts wait on disk, sealing goes on, a rate-limited warning says since
   when delivery fails, and if more than ``max_backlog_records`` wait, the oldest are
   dropped with a warning that says how many.
3. When the process ends, every session delivers what it can in a few seconds
   (:mod:`~eye_model.telemetry.shutdown`); what is left stays on disk. At its start, the
   next serving process on the host adopts the folders of dead sessions and delivers them
   into their own runs (:mod:`~eye_model.telemetry.adoption`).

:class:`Telemetry` (:mod:`~eye_model.telemetry.tracker`) wires these together;
:mod:`~eye_model.telemetry.config` says whether this process tracks at all, and
:mod:`~eye_model.telemetry.probe` is the separate health probe of a model server.

No pixels, no image bytes, no file names and no ``image_id`` (it may identify a
patient) are written, unless the ``log_image_ids`` setting is on.

Tracking disabled (``enable_tracking`` off) means no run, no file and no thread.
"""

from __future__ import annotations

from eye_model.config import INFERENCE_LOG_ARTIFACT_DIR
from eye_model.telemetry.adoption import RECOVERED_TAG, SessionManifest, dead_sessions
from eye_model.telemetry.config import TelemetryConfig
from eye_model.telemetry.inference_log import InferenceLog
from eye_model.telemetry.probe import ProbeResult, check_model_server, run_probe
from eye_model.telemetry.recorder import MAX_QUEUED_RECORDS
from eye_model.telemetry.records import (
    RECORD_SCHEMA,
    ModelIdentity,
    build_records,
    complete_model_identity,
    log_request,
    read_model_identity,
)
from eye_model.telemetry.session import SessionMetrics
from eye_model.telemetry.shipping import limit_http_retries
from eye_model.telemetry.shutdown import close_all, install_shutdown_handler
from eye_model.telemetry.tracker import Telemetry

__all__ = [
    "INFERENCE_LOG_ARTIFACT_DIR",
    "MAX_QUEUED_RECORDS",
    "RECOVERED_TAG",
    "RECORD_SCHEMA",
    "InferenceLog",
    "ModelIdentity",
    "complete_model_identity",
    "ProbeResult",
    "SessionManifest",
    "SessionMetrics",
    "Telemetry",
    "TelemetryConfig",
    "build_records",
    "check_model_server",
    "close_all",
    "dead_sessions",
    "install_shutdown_handler",
    "limit_http_retries",
    "log_request",
    "read_model_identity",
    "run_probe",
]
