"""The window of inference records the drift job checks: where records come from, which
ones are recent.

Records come from the serving runs of the model (their ``inference_log/`` artifacts,
matched by the model's training run id, which every serving run carries as the tag
``source_run_id``) or from a local folder of inference-log parts (``*.jsonl``).
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from eye_model.config import INFERENCE_LOG_ARTIFACT_DIR


def parse_since(since: str | float | None) -> float | None:
    """Epoch seconds from ``since``.

    Args:
        since: empty or None, epoch seconds, or an ISO 8601 time (UTC when naive).

    Returns:
        Epoch seconds, or None for an empty ``since``.

    Raises:
        ValueError: ``since`` is neither a number nor an ISO 8601 time.
    """
    if since is None or str(since).strip() == "":
        return None
    text = str(since).strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"since={since!r} is neither epoch seconds nor an ISO 8601 time "
            "(for example 2026-11-26T08:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def select_window(
    records: pd.DataFrame, window: int | None = None, since: float | None = None
) -> pd.DataFrame:
    """Select the recent window of inference records.

    Args:
        records: inference records with a ``timestamp`` column (epoch seconds, UTC).
        window: keep the last ``window`` records by timestamp; None or 0 keeps all.
        since: keep only records with ``timestamp >= since`` (epoch seconds); None keeps all.

    Returns:
        The selected records in timestamp order (rows without a timestamp are dropped
        when ``window`` or ``since`` is given). Without a ``timestamp`` column, ``window``
        keeps the last rows in file order.

    Raises:
        ValueError: for a negative window, or ``since`` without a ``timestamp`` column.
    """
    if window is not None and window < 0:
        raise ValueError(f"window={window!r} must be a positive number of records (0 = all)")
    limit = int(window) if window else 0
    if since is None and limit == 0:
        return records
    if "timestamp" not in records.columns:
        if since is not None:
            raise ValueError(
                "since= needs a 'timestamp' column (epoch seconds) in the inference records; "
                "drop since= or log timestamps"
            )
        return records.iloc[-limit:]
    stamps = records["timestamp"].to_numpy(dtype=np.float64, na_value=np.nan)
    keep = np.isfinite(stamps)
    if since is not None:
        keep &= stamps >= float(since)
    rows = np.flatnonzero(keep)
    rows = rows[np.argsort(stamps[rows], kind="stable")]
    if limit:
        rows = rows[-limit:]
    if rows.size and rows[-1] - rows[0] + 1 == rows.size and np.all(np.diff(rows) == 1):
        # Already contiguous and sorted: a slice avoids copying a large frame.
        return records.iloc[int(rows[0]) : int(rows[-1]) + 1]
    return records.iloc[rows]


def read_local_records(folder: str | Path) -> pd.DataFrame:
    """Read every inference-log part (``*.jsonl``) under ``folder``.

    Args:
        folder: a folder of parts, searched recursively (empty parts are skipped).

    Returns:
        All records, in file order; an empty frame when there are none.
    """
    paths = sorted(Path(folder).expanduser().rglob("*.jsonl"))
    # convert_dates=False: pandas would turn the epoch-seconds "timestamp" into datetimes.
    frames = [
        pd.read_json(path, lines=True, convert_dates=False, keep_default_dates=False)
        for path in paths
        if path.stat().st_size
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def gather_records(
    source_run_id: str,
    *,
    client: MlflowClient,
    experiment_name: str | None = None,
) -> pd.DataFrame:
    """Download the inference logs of every serving run of the model from ``source_run_id``.

    Args:
        source_run_id: the training run of the served model (tag ``source_run_id`` of
            its serving runs).
        client: the client of the tracking server holding the serving runs.
        experiment_name: search this experiment only; every experiment when None.

    Returns:
        The records of every part of every matching serving run (empty when none).
    """
    experiments = (
        [client.get_experiment_by_name(experiment_name)]
        if experiment_name
        else client.search_experiments()
    )
    ids = [e.experiment_id for e in experiments if e is not None]
    if not ids:
        return pd.DataFrame()
    query = f"tags.role = 'serving' and tags.source_run_id = '{source_run_id}'"
    runs = client.search_runs(ids, query, max_results=10_000)
    frames = []
    with tempfile.TemporaryDirectory(prefix="eye-model-records-") as tmp:
        for run in runs:
            names = [
                a.path for a in client.list_artifacts(run.info.run_id, INFERENCE_LOG_ARTIFACT_DIR)
            ]
            if not names:
                continue
            local = mlflow.artifacts.download_artifacts(
                run_id=run.info.run_id,
                artifact_path=INFERENCE_LOG_ARTIFACT_DIR,
                dst_path=str(Path(tmp) / run.info.run_id),
                tracking_uri=client.tracking_uri,
            )
            frame = read_local_records(local)
            if not frame.empty:
                frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def attach_labels(window: pd.DataFrame, labels_path: str | Path) -> pd.DataFrame:
    """Join true labels onto the window.

    Args:
        window: inference records with ``request_id`` and ``row``.
        labels_path: CSV with the columns ``request_id``, ``row`` and ``label``.

    Returns:
        The window with a ``label`` column (NaN where the file has no label).

    Raises:
        ValueError: the file lacks one of the three columns.
    """
    labels = pd.read_csv(labels_path, dtype={"request_id": str})
    missing = {"request_id", "row", "label"} - set(labels.columns)
    if missing:
        raise ValueError(
            f"labels file {labels_path} lacks columns {sorted(missing)}; "
            "it needs request_id, row and label"
        )
    merged = window.drop(columns=["label"], errors="ignore").merge(
        labels[["request_id", "row", "label"]], on=["request_id", "row"], how="left"
    )
    return merged
