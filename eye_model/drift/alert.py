"""Drift alerts: the JSON a webhook receives, and sending it at most once per cooldown.

An alert is due when the report's ``alarm`` is set: a statistical test flagged a feature
(``drift_test_detected``) or one of the brief's heuristics fired (``drift_detected``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from eye_model.drift.report import DriftReport
from eye_model.uris import redact_uri

logger = logging.getLogger(__name__)

#: File under ``Settings.home`` remembering when each alert was last sent.
ALERT_STATE_NAME = "drift_alerts.json"


def build_alert_payload(
    report: DriftReport, *, model_uri: str, run_id: str, run_url: str
) -> dict[str, Any] | None:
    """The JSON body of a drift alert, or None when nothing fired.

    The alert names the strongest flagged feature (largest effect); when only heuristics
    fired, it names the first flagged heuristic (``heuristic.<name>``, its value as the
    statistic and its threshold).

    Args:
        report: the drift report.
        model_uri: the served model.
        run_id: the drift run.
        run_url: link to the drift run in the MLflow UI.

    Returns:
        ``event``, ``model_uri``, ``feature``, ``statistic``, ``p_corrected``, ``effect``,
        ``threshold``, the report's summary (``status``, ``drift_detected``,
        ``drift_test_detected``, ``drift_share``, ``flagged``, ``heuristics``, ``n``,
        ``estimated_accuracy``), ``run_id`` and ``run_url``; None without alarm.
    """
    if not report.alarm:
        return None
    config = report.config
    body: dict[str, Any]
    if report.flagged_features:
        strongest = max(report.flagged_features, key=lambda f: f.effect or 0.0)
        body = {
            "feature": f"{strongest.family}.{strongest.feature}",
            "statistic": strongest.statistic,
            "p_corrected": strongest.p_corrected,
            "effect": strongest.effect,
            "threshold": {"alpha": config.alpha, "effect_floor": config.effect_floor},
        }
    else:
        fired = report.flagged_heuristics[0]
        body = {
            "feature": f"heuristic.{fired.name}",
            "statistic": fired.value,
            "p_corrected": None,
            "effect": None,
            "threshold": {fired.name: fired.threshold},
        }
    return {
        "event": "drift_detected",
        "model_uri": model_uri,
        **body,
        **report.summary(),
        "run_id": run_id,
        "run_url": run_url,
    }


def send_alert(
    alert_url: str,
    payload: dict[str, Any],
    *,
    key: str,
    cooldown_s: float,
    state_file: Path,
) -> bool:
    """POST ``payload`` as JSON to ``alert_url`` unless the same alert was sent within the cooldown.

    Args:
        alert_url: the webhook (credentials in it are never logged).
        payload: the JSON body.
        key: what the cooldown is per (the model URI).
        cooldown_s: seconds during which the same alert is not sent again.
        state_file: JSON file remembering when each (URL, key) was last alerted.

    Returns:
        Whether the alert was sent (a failed POST is logged and returns False).
    """
    import requests

    state = json.loads(state_file.read_text()) if state_file.exists() else {}
    slot = f"{redact_uri(alert_url)}|{key}"
    now = time.time()
    if now - float(state.get(slot, 0.0)) < cooldown_s:
        logger.info("drift alert for %s not sent: within the %.0f s cooldown", key, cooldown_s)
        return False
    try:
        response = requests.post(alert_url, json=payload, timeout=10)
        response.raise_for_status()
    except requests.RequestException as exc:
        logger.warning("drift alert to %s failed: %s", redact_uri(alert_url), exc)
        return False
    state[slot] = now
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps(state))
    return True
