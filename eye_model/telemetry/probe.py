"""The health probe: checks a model server's endpoints and tracks them in a ``role=probe`` run."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import time
from dataclasses import dataclass

from eye_model.settings import Settings, load_settings
from eye_model.telemetry.shipping import short_error
from eye_model.uris import redact_uri

logger = logging.getLogger(__name__)


@dataclass
class ProbeResult:
    """The outcome of one health check of a model server."""

    count: int
    ok: bool
    response_time_ms: float
    endpoints: dict[str, int]
    version: str = ""


def check_model_server(url: str, *, timeout: float = 5.0) -> ProbeResult:
    """Call ``/ping``, ``/health`` and ``/version`` once.

    Returns:
        The result; ``ok`` is whether ``/ping`` answered 200 (the model is loaded) and
        ``response_time_ms`` is the time ``/ping`` took (the timeout when it failed).
    """
    import requests

    statuses: dict[str, int] = {}
    ping_ms = timeout * 1000.0
    version = ""
    for endpoint in ("ping", "health", "version"):
        start = time.perf_counter()
        try:
            response = requests.get(f"{url.rstrip('/')}/{endpoint}", timeout=timeout)
            statuses[endpoint] = response.status_code
            if endpoint == "ping":
                ping_ms = (time.perf_counter() - start) * 1000.0
            if endpoint == "version" and response.ok:
                version = response.text.strip()[:50]
        except requests.RequestException:
            statuses[endpoint] = 0
    return ProbeResult(0, statuses.get("ping") == 200, ping_ms, statuses, version)


def run_probe(
    url: str,
    *,
    interval: float = 30.0,
    count: int = 0,
    timeout: float = 5.0,
    tracking_uri: str = "",
    experiment_name: str = "",
    run_id: str = "",
    settings: Settings | None = None,
) -> list[ProbeResult]:
    """Probe a model server every ``interval`` seconds and track it in a run tagged ``role=probe``.

    Metrics (step = check number): ``health_check_response_time_ms``, ``model_loaded`` (0/1),
    ``health_check_count``, ``health_check_failures`` (cumulative). A tracking server that
    is down is reported and retried at the next check; it never stops the probe.

    Args:
        url: base URL of the model server.
        interval: seconds between checks.
        count: number of checks; 0 probes until interrupted.
        timeout: seconds to wait for each endpoint.
        tracking_uri: where the run goes (default: the settings' ``MLFLOW_TRACKING_URI``).
        experiment_name: experiment of the run (default: ``MLFLOW_EXPERIMENT_NAME``).
        settings: where the defaults come from (default: read from the environment).
        run_id: log into this existing run (the one ``mlflow run`` opened) instead of a new
            run; it is tagged and left for its owner to end.

    Returns:
        The results of every check.
    """
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    if not (tracking_uri and experiment_name):
        settings = settings or load_settings()
        tracking_uri = tracking_uri or settings.tracking_uri
        experiment_name = experiment_name or settings.experiment_name
    client = MlflowClient(tracking_uri=tracking_uri)
    name = experiment_name
    own_run = not run_id
    if run_id:
        client.set_tag(run_id, "target_url", redact_uri(url))
    results: list[ProbeResult] = []
    failures = 0
    pending: list[Metric] = []
    try:
        while count <= 0 or len(results) < count:
            if results:
                time.sleep(interval)
            result = check_model_server(url, timeout=timeout)
            result.count = len(results) + 1
            failures += 0 if result.ok else 1
            results.append(result)
            stamp = int(time.time() * 1000)
            values = {
                "health_check_response_time_ms": result.response_time_ms,
                "model_loaded": float(result.ok),
                "health_check_count": float(result.count),
                "health_check_failures": float(failures),
            }
            pending += [Metric(k, v, stamp, result.count) for k, v in values.items()]
            logger.info("probe %d of %s: %s", result.count, url, json.dumps(result.__dict__))
            try:
                if not run_id:
                    experiment = client.get_experiment_by_name(name)
                    experiment_id = (
                        experiment.experiment_id if experiment else client.create_experiment(name)
                    )
                    run_id = client.create_run(
                        experiment_id,
                        run_name="probe",
                        tags={
                            "role": "probe",
                            "target_url": redact_uri(url),
                            "host": socket.gethostname(),
                        },
                    ).info.run_id
                client.log_batch(run_id, metrics=pending)
                pending = []
            except Exception as exc:
                logger.warning(
                    "probe could not log to the tracking server (%s); will retry", short_error(exc)
                )
    finally:
        if run_id:
            with contextlib.suppress(Exception):
                if pending:
                    client.log_batch(run_id, metrics=pending)
                if own_run:
                    client.set_terminated(run_id, "FINISHED")
    return results
