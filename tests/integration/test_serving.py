"""End to end through MLflow's own scoring server (`mlflow models serve`), on a free port."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests

from eye_model.config import CLASS_NAMES, PROB_COLUMNS
from eye_model.stack import (
    build_serve_command,
    find_free_port,
    server_environment,
    start_process,
    stop_process,
    wait_for_http,
)
from tests.helpers import b64, draw_fundus_like, encode, serving_without_tracking


@pytest.fixture(scope="module")
def server_url(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with serving_without_tracking(tiny_model_path, log) as url:
        yield url


def _mixed_rows() -> list[list[object]]:
    jpeg = encode(draw_fundus_like(300, seed=1), "JPEG")
    png = encode(draw_fundus_like(200, seed=2), "PNG")
    return [
        ["good-jpeg", b64(jpeg)],
        ["truncated", b64(jpeg[:500])],
        ["good-png", b64(png)],
        ["not-base64", "%%%"],
        ["null", None],
        ["number", 7],
        ["text", b64(b"just some text")],
        [None, b64(jpeg)],  # a missing id comes back as null
    ]


def _check_predictions(predictions: list[dict[str, object]]) -> None:
    by_id = {row["image_id"]: row for row in predictions}
    assert [row["image_id"] for row in predictions] == [r[0] for r in _mixed_rows()]
    for good in ("good-jpeg", "good-png", None):
        row = by_id[good]
        assert row["error"] is None
        assert row["predicted_class"] in CLASS_NAMES
        assert sum(row[c] for c in PROB_COLUMNS) == pytest.approx(1.0, abs=1e-9)
        assert row["confidence"] == max(row[c] for c in PROB_COLUMNS)
    expected_errors = {
        "truncated": "corrupt",
        "not-base64": "not valid base64",
        "null": "empty (null)",
        "number": "is a int",
        "text": "looks like text",
    }
    for image_id, message in expected_errors.items():
        row = by_id[image_id]
        assert message in row["error"], row
        assert row["predicted_class"] is None
        assert all(row[c] is None for c in ("confidence", *PROB_COLUMNS))


def test_dataframe_split_with_bad_rows(server_url: str) -> None:
    payload = {"dataframe_split": {"columns": ["image_id", "image"], "data": _mixed_rows()}}
    response = requests.post(f"{server_url}/invocations", json=payload, timeout=60)
    assert response.status_code == 200, response.text
    # Strict JSON: errors are null, never NaN.
    body = json.loads(response.text, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    _check_predictions(body["predictions"])


def test_dataframe_records(server_url: str) -> None:
    records = [{"image_id": i, "image": v} for i, v in _mixed_rows()]
    response = requests.post(
        f"{server_url}/invocations", json={"dataframe_records": records}, timeout=60
    )
    assert response.status_code == 200, response.text
    body = json.loads(response.text, parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    _check_predictions(body["predictions"])


def test_many_images_in_one_request(server_url: str) -> None:
    images = [b64(encode(draw_fundus_like(160, seed=s), "JPEG")) for s in range(40)]
    payload = {"dataframe_split": {"columns": ["image"], "data": [[v] for v in images]}}
    response = requests.post(f"{server_url}/invocations", json=payload, timeout=60)
    assert response.status_code == 200
    rows = response.json()["predictions"]
    assert len(rows) == 40
    probs = np.array([[row[c] for c in PROB_COLUMNS] for row in rows])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)


def test_concurrent_clients_each_get_their_own_rows(server_url: str) -> None:
    """16 clients at once (their images share network calls): each checks its own rows."""
    from concurrent.futures import ThreadPoolExecutor

    def post(rows: list[list[object]]) -> list[dict[str, object]]:
        payload = {"dataframe_split": {"columns": ["image_id", "image"], "data": rows}}
        response = requests.post(f"{server_url}/invocations", json=payload, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()["predictions"]

    requests_rows = []
    for caller in range(16):
        rows: list[list[object]] = []
        for k in range(1 + caller % 3):
            image = encode(draw_fundus_like(96 + 16 * k, seed=10 * caller + k), "JPEG")
            value = b64(image if (caller + k) % 4 else image[:300])  # every 4th truncated
            rows.append([f"c{caller}-{k}", value])
        requests_rows.append(rows)
    alone = {row[0]: post([row])[0] for rows in requests_rows for row in rows}
    for _ in range(2):
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(post, requests_rows))
        for rows, predictions in zip(requests_rows, answers, strict=True):
            assert [p["image_id"] for p in predictions] == [row[0] for row in rows]
            for prediction in predictions:
                expected = alone[prediction["image_id"]]
                if expected["error"] is None:
                    assert prediction["error"] is None
                    for column in PROB_COLUMNS:
                        assert prediction[column] == pytest.approx(expected[column], abs=1e-5)
                else:
                    assert "corrupt" in prediction["error"] or "truncated" in prediction["error"]
                    assert prediction["error"] == expected["error"]
                    assert prediction["predicted_class"] is None


def test_missing_image_column_is_a_4xx_naming_it(server_url: str) -> None:
    payload = {"dataframe_split": {"columns": ["picture"], "data": [["abc"]]}}
    response = requests.post(f"{server_url}/invocations", json=payload, timeout=60)
    assert 400 <= response.status_code < 500
    assert "image" in response.json()["message"]
    # The server is still up afterwards.
    assert requests.get(f"{server_url}/ping", timeout=10).status_code == 200


def test_garbage_body_is_a_4xx_and_the_server_survives(server_url: str) -> None:
    response = requests.post(
        f"{server_url}/invocations",
        data=b"\x00\x01not json",
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert 400 <= response.status_code < 500
    assert requests.get(f"{server_url}/ping", timeout=10).status_code == 200


def test_probe_tracks_health_checks(server_url: str, tracking_store: str) -> None:
    from mlflow import MlflowClient

    from eye_model.telemetry import run_probe

    results = run_probe(server_url, interval=0.2, count=3, experiment_name="probes")
    assert [r.ok for r in results] == [True, True, True]
    assert all(r.endpoints == {"ping": 200, "health": 200, "version": 200} for r in results)
    client = MlflowClient(tracking_store)
    experiment = client.get_experiment_by_name("probes")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.tags["role"] == "probe"
    assert run.info.status == "FINISHED"
    assert run.data.metrics["health_check_count"] == 3
    assert run.data.metrics["model_loaded"] == 1
    assert run.data.metrics["health_check_failures"] == 0
    history = client.get_metric_history(run.info.run_id, "health_check_response_time_ms")
    assert len(history) == 3
    assert all(0 < m.value < 5000 for m in history)


def test_probe_of_a_dead_server_counts_failures(tracking_store: str) -> None:
    from mlflow import MlflowClient

    from eye_model.telemetry import run_probe

    dead = f"http://127.0.0.1:{find_free_port()}"
    results = run_probe(dead, interval=0.1, count=2, timeout=1.0, experiment_name="probes")
    assert [r.ok for r in results] == [False, False]
    client = MlflowClient(tracking_store)
    (run,) = client.search_runs([client.get_experiment_by_name("probes").experiment_id])
    assert run.data.metrics["model_loaded"] == 0
    assert run.data.metrics["health_check_failures"] == 2


@pytest.mark.slow
def test_serving_in_the_models_own_virtualenv(tiny_model_path: Path, tmp_path: Path) -> None:
    """`--env-manager virtualenv` builds the environment from the model's requirements."""
    port = find_free_port()
    log = tmp_path / "virtualenv-server.log"
    command = build_serve_command(str(tiny_model_path), port=port, env_manager="virtualenv")
    process = start_process(
        command, log_path=log, env=server_environment({"ENABLE_MLFLOW_TRACKING": "false"})
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_http(f"{url}/ping", timeout=1500, process=process, interval=2.0)
        except RuntimeError:
            pytest.fail(f"virtualenv model server did not start:\n{log.read_text()[-4000:]}")
        image = b64(encode(draw_fundus_like(200, seed=9), "JPEG"))
        payload = {"dataframe_records": [{"image": image}, {"image": "%%%"}]}
        response = requests.post(f"{url}/invocations", json=payload, timeout=120)
        assert response.status_code == 200, response.text
        good, bad = response.json()["predictions"]
        assert good["predicted_class"] in CLASS_NAMES
        assert sum(good[c] for c in PROB_COLUMNS) == pytest.approx(1.0)
        assert "not valid base64" in bad["error"]
    finally:
        stop_process(process)
    # It really ran elsewhere: MLflow logs that it created or reused a virtual environment.
    assert "virtualenv" in log.read_text().lower() or "environment" in log.read_text().lower()


@pytest.mark.slow
def test_sigterm_while_requests_wait_answers_every_request_it_took(
    tiny_model_path: Path, tmp_path: Path
) -> None:
    """Requests queued for the network when SIGTERM arrives are answered, never left hanging."""
    import os
    import signal
    import threading
    import time

    port = find_free_port()
    command = build_serve_command(str(tiny_model_path), port=port, env_manager="local")
    env = server_environment({"ENABLE_MLFLOW_TRACKING": "false", "EYE_MODEL_MAX_WAIT_MS": "50"})
    process = start_process(command, log_path=tmp_path / "server.log", env=env)
    url = f"http://127.0.0.1:{port}"
    image = b64(encode(draw_fundus_like(200, seed=3), "JPEG"))
    payload = {"dataframe_split": {"columns": ["image"], "data": [[image]] * 4}}
    outcomes: list[str] = []
    lock = threading.Lock()

    def client() -> None:
        with requests.Session() as session:
            while True:
                try:
                    response = session.post(f"{url}/invocations", json=payload, timeout=30)
                except requests.ConnectionError:
                    outcome = "refused"  # the server no longer takes requests
                except requests.Timeout:
                    outcome = "hung"
                else:
                    rows = response.json()["predictions"] if response.ok else []
                    scored = len(rows) == 4 and all(row["error"] is None for row in rows)
                    outcome = "answered" if scored else f"HTTP {response.status_code}"
                with lock:
                    outcomes.append(outcome)
                if outcome != "answered":
                    return

    try:
        wait_for_http(f"{url}/ping", timeout=180, process=process)
        threads = [threading.Thread(target=client, daemon=True) for _ in range(12)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(outcomes) < 24 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGTERM)
        for thread in threads:
            thread.join(45)
        assert process.wait(timeout=30) is not None
    finally:
        stop_process(process)
    assert not any(thread.is_alive() for thread in threads)
    assert outcomes.count("answered") >= 24
    # Every request ended answered, or refused once the server had stopped listening.
    assert set(outcomes) <= {"answered", "refused"}, sorted(set(outcomes))
