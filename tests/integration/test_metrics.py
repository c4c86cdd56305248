"""Prometheus metrics of a real `mlflow models serve` with two workers, one of them killed."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from eye_model.metrics import METRIC_NAMES, MULTIPROC_VARIABLE
from eye_model.settings import settings_environ
from eye_model.stack import (
    build_serve_command,
    find_free_port,
    server_environment,
    start_process,
    stop_process,
    wait_for_http,
)
from tests.helpers import b64, draw_fundus_like, encode

pytestmark = pytest.mark.slow


def _scrape(url: str, timeout: float = 30.0) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Samples of the eye_model_* metrics at ``url``, by sample name."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + timeout
    while True:
        try:
            text = requests.get(url, timeout=5).text
            break
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("eye_model_"):
                samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def _by_status(samples: dict[str, list[tuple[dict[str, str], float]]]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for labels, value in samples.get("eye_model_predictions_total", []):
        counts[labels["status"]] += int(value)
    return counts


def _post(url: str, good: int, bad: int) -> list[dict[str, object]]:
    images = [b64(encode(draw_fundus_like(96, seed=i))) for i in range(good)]
    images += ["not base64 at all!"] * bad
    response = requests.post(
        f"{url}/invocations",
        json={"dataframe_split": {"columns": ["image"], "data": [[image] for image in images]}},
        timeout=120,
    )
    response.raise_for_status()
    return response.json()["predictions"]


def test_counters_add_up_over_workers_and_survive_a_killed_worker(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    port, metrics_port = find_free_port(), find_free_port()
    folder = tmp_path / "metrics"
    folder.mkdir()
    env = server_environment(
        {
            "ENABLE_MLFLOW_TRACKING": "false",
            **settings_environ(metrics_port=metrics_port, metrics_host="127.0.0.1"),
            MULTIPROC_VARIABLE: str(folder),
        }
    )
    command = build_serve_command(str(tiny_model_path), port=port, env_manager="local", workers=2)
    log = tmp_path / "server.log"
    process = start_process(command, log_path=log, env=env)
    url = f"http://127.0.0.1:{port}"
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        wait_for_http(f"{url}/ping", timeout=180, process=process)
        sent = Counter[str]()
        for _ in range(8):  # spread over both workers by the kernel's accept queue
            rows = _post(url, good=3, bad=1)
            assert sum(row["error"] is None for row in rows) == 3
            sent.update(ok=3, invalid_image=1)
        samples = _scrape(metrics_url)
        assert _by_status(samples) == sent, log.read_text()[-2000:]
        names = {
            name.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
            for name in samples
        }
        # Exported once something happened: no OOD row, no telemetry here.
        quiet = {
            "eye_model_fundus_check_total",
            "eye_model_out_of_distribution_total",
            "eye_model_telemetry_backlog_records",
            "eye_model_telemetry_delivery_failures_total",
        }
        missing = set(METRIC_NAMES) - names - quiet
        assert not missing, f"not exported: {missing}"
        (request_count,) = [v for _, v in samples["eye_model_request_seconds_count"]]
        assert request_count == 8
        classes = {
            labels["predicted_class"] for labels, _ in samples["eye_model_predictions_total"]
        }
        assert "none" in classes and len(classes) >= 2  # errors have no class; scored ones do

        # kill -9 a worker: what it answered still counts, and /metrics comes back.
        workers = sorted(
            {int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("counter_*.db")} - {process.pid}
        )
        assert workers, list(folder.iterdir())
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:  # uvicorn starts a new worker; requests keep being answered
            try:
                rows = _post(url, good=2, bad=0)
                sent.update(ok=2)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        samples = _scrape(metrics_url, timeout=60)
        assert _by_status(samples) == sent
    finally:
        stop_process(process)
    assert process.poll() is not None
