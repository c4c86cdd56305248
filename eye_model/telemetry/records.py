"""Recording rows: the served model's identity, one inference record per image, one log line.

A record describes a prediction and the image's statistics; it never holds pixels, image
bytes, file names, nor the client's ``image_id`` unless asked (it may identify a patient).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eye_model.config import CLASS_NAMES
from eye_model.preprocess import compute_image_stats
from eye_model.settings import Settings

logger = logging.getLogger(__name__)
request_logger = logging.getLogger("eye_model.requests")

#: Version of the record layout (``schema`` field of every record).
RECORD_SCHEMA = 1


@dataclass(frozen=True)
class ModelIdentity:
    """Which model a session serves (tags of the session run and fields of each record)."""

    name: str = ""
    version: str = ""
    uri: str = ""
    source_run_id: str = ""
    logged_model_id: str = ""
    #: What runs its network in this process (``tflite`` or ``tensorflow``).
    network_runtime: str = ""


def read_model_identity(model_dir: Path | None, settings: Settings) -> ModelIdentity:
    """Identify the served model from ``eye-model serve``'s settings and the MLmodel file.

    Args:
        model_dir: the served model's folder (holding ``MLmodel``), if known.
        settings: the process's settings; ``served_name``, ``served_version`` and
            ``served_uri`` are set by ``eye-model serve``.

    Returns:
        The identity; the URI falls back to ``model_dir`` when ``served_uri`` is unset.
    """
    run_id = model_id = ""
    if model_dir is not None and (model_dir / "MLmodel").is_file():
        import yaml

        meta = yaml.safe_load((model_dir / "MLmodel").read_text()) or {}
        run_id = str(meta.get("run_id") or "")
        model_id = str(meta.get("model_id") or "")
    return ModelIdentity(
        name=settings.served_name,
        version=settings.served_version,
        uri=settings.served_uri or str(model_dir or ""),
        source_run_id=run_id,
        logged_model_id=model_id,
    )


def complete_model_identity(identity: ModelIdentity, settings: Settings) -> ModelIdentity:
    """Fill in the registered name and version however the model was served.

    ``eye-model serve`` names them already; ``stack up`` passes the model URI it was asked
    for (``models:/name/Production``), resolved here with the registry's one resolver; a
    plain ``mlflow models serve -m models:/…`` only leaves the training run id in the
    MLmodel file, so the version registered from that run is looked up (the Production one
    when several are). Called once when the server starts; when the registry cannot be
    asked, the identity stays as it was, with a warning.
    """
    if identity.name and identity.version:
        return identity
    from mlflow import MlflowClient

    from eye_model.registry import find_registered_version, quiet_stage_deprecation

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    try:
        found = find_registered_version(identity.uri, client)
        if found is not None:
            return replace(identity, name=found.name, version=found.version, uri=found.uri)
        if not identity.source_run_id:
            return identity
        with quiet_stage_deprecation():
            versions = client.search_model_versions(f"run_id = '{identity.source_run_id}'")
        if not versions:
            return identity
        best = max(versions, key=lambda v: (v.current_stage == "Production", int(v.version)))
        return replace(
            identity,
            name=best.name,
            version=str(best.version),
            uri=f"models:/{best.name}/{best.version}",
        )
    except Exception as exc:  # the registry down or refusing: serve anyway, say what is missing
        logger.warning(
            "could not look up the registered name and version of the served model (%s); "
            "serving runs will not name them",
            str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
        )
        return identity


def add_image_stats(rows: Sequence[Any]) -> None:
    """Add :func:`~eye_model.preprocess.compute_image_stats` to rows still holding pixels (once)."""
    for row in rows:
        image = row.image
        if image is not None and image.pixels is not None and "img_brightness" not in image.stats:
            image.stats = {**compute_image_stats(image.pixels), **image.stats}


def release_pixels(rows: Sequence[Any]) -> None:
    """Add the image statistics to each row's image (unless done), then drop its pixels."""
    add_image_stats(rows)
    for row in rows:
        if row.image is not None:
            row.image.pixels = None


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
    """One inference record per scored row (``eye_model.scored.ScoredImage``), no pixels.

    Args:
        rows: the scored rows of one request, in order.
        request_id: the request's id, shared by its records.
        identity: the served model.
        image_ids: the client's ids, one per row, kept only when given (None stays None).
        timestamp: the request's time (epoch s); default now.

    Returns:
        Records with the fields ``schema``, ``request_id``, ``row``, ``timestamp`` (epoch s),
        ``model_name``, ``model_version``, ``source_run_id``, ``status`` (ok/error),
        ``error``, ``inference_ms``, ``batch_size`` (images in its network call, 0 when
        not scored), ``predicted_class``, ``confidence`` (0-1), ``prob_<class>`` (0-1),
        ``fundus_check`` (``pass``, why the image was refused or warned about, or None when
        not checked), ``ood_score``, ``warning``, ``img_*`` (metadata and statistics) and
        ``emb_0`` … ``emb_7``.
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
            # Images in the network call that scored it (0: not scored).
            "batch_size": int(getattr(row, "batch_size", 0)),
        }
        if image_ids is not None:  # a missing id stays missing (None), not "None"
            record["image_id"] = None if image_ids[i] is None else str(image_ids[i])
        # The one projection of a scored row (ScoredImage.output_fields), rounded for the log.
        fields = row.output_fields(CLASS_NAMES)
        if fields["error"] is None:
            record["status"] = "ok"
            record.update({k: _round(v) if isinstance(v, float) else v for k, v in fields.items()})
        else:
            # A refused row keeps why (``fundus_check``), not a class or probabilities.
            record.update(
                status="error",
                error=fields["error"],
                predicted_class=None,
                confidence=None,
                fundus_check=fields["fundus_check"],
            )
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


def log_request(request_id: str, *, latency_ms: float, rows: int, errors: int) -> None:
    """One structured (JSON) log line per request: id, latency, rows and errors.

    Args:
        request_id: the request's id (also in its inference records).
        latency_ms: time ``predict`` took, in ms.
        rows: images in the request.
        errors: images that got an error instead of a prediction.
    """
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
