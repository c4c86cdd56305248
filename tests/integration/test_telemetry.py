"""Telemetry from inside `predict`, against a real tracking server and a real scoring server:
records and metric points, an outage, tracking disabled, two workers, and no image bytes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient

from eye_model.stack import (
    build_serve_command,
    find_free_port,
    server_environment,
    start_process,
    stop_process,
    wait_for_http,
)
from tests.conftest import TrainedModel
from tests.helpers import TrackingServer, b64, draw_fundus_like, encode

pytestmark = pytest.mark.slow

EXPERIMENT = "telemetry-tests"
IMAGE = encode(draw_fundus_like(240, seed=11), "JPEG", quality=92)
PATIENT_ID = "patient-7731-left-eye"


@pytest.fixture
def tracking(tmp_path: Path) -> Iterator[TrackingServer]:
    home = tmp_path / "tracking"
    home.mkdir()
    server = TrackingServer(home).start()
    try:
        yield server
    finally:
        server.stop()


class ModelServer:
    def __init__(self, model: Path, home: Path, env: dict[str, str], workers: int = 1) -> None:
        self.port = find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / f"serve-{self.port}.log"
        command = build_serve_command(str(model), port=self.port, workers=workers)
        self.process = start_process(command, log_path=self.log, env=server_environment(env))
        try:
            wait_for_http(f"{self.url}/ping", timeout=180, process=self.process)
        except RuntimeError:
            self.stop()
            pytest.fail(f"model server did not start:\n{self.log.read_text()[-3000:]}")

    def predict(self, n: int = 1) -> list[dict[str, object]]:
        rows = [[f"{PATIENT_ID}-{i}", b64(IMAGE)] for i in range(n)]
        payload = {"dataframe_split": {"columns": ["image_id", "image"], "data": rows}}
        response = requests.post(f"{self.url}/invocations", json=payload, timeout=60)
        assert response.status_code == 200, response.text
        return response.json()["predictions"]

    def stop(self) -> None:
        stop_process(self.process)


def _env(tracking_url: str, home: Path, **extra: str) -> dict[str, str]:
    return {
        "MLFLOW_TRACKING_URI": tracking_url,
        "MLFLOW_EXPERIMENT_NAME": EXPERIMENT,
        "EYE_MODEL_TELEMETRY_DIR": str(home / "telemetry"),
        "EYE_MODEL_LOG_PART_SECONDS": "1",
        "EYE_MODEL_SHIP_INTERVAL": "0.5",
        "EYE_MODEL_SESSION_EVERY_N": "50",
        **extra,
    }


def _serving_runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.role = 'serving'")


def _records(client: MlflowClient, run_id: str, folder: Path) -> list[dict[str, object]]:
    import mlflow

    try:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path="inference_log",
            dst_path=str(folder),
            tracking_uri=client.tracking_uri,
        )
    except Exception:  # no part delivered yet
        return []
    records = []
    for part in sorted(Path(local).glob("part-*.jsonl")):
        records += [json.loads(line) for line in part.read_text().splitlines() if line]
    return records


def _wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(1.0)
    return condition()


def test_every_prediction_is_a_record_and_a_metric_point(
    tiny_model_path: Path, tracking: TrackingServer, tmp_path: Path
) -> None:
    client = MlflowClient(tracking.url)
    server = ModelServer(tiny_model_path, tmp_path, _env(tracking.url, tmp_path))
    try:
        for _ in range(50):
            server.predict(2)  # 100 predictions in 50 requests
        assert _wait_for(lambda: len(_serving_runs(client)) == 1, 30)
        run_id = _serving_runs(client)[0].info.run_id
        got = {}

        def delivered() -> bool:
            got["records"] = _records(client, run_id, tmp_path / f"dl-{time.monotonic()}")
            history = client.get_metric_history(run_id, "prediction_confidence")
            got["points"] = history
            return len(got["records"]) == 100 and len(history) == 100

        assert _wait_for(delivered), (len(got["records"]), len(got["points"]))
    finally:
        server.stop()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["role"] == "serving"
    assert tags["pid"].isdigit()
    assert tags["host"]
    assert tags["model_uri"] == str(tiny_model_path)
    assert "started_at" in tags
    steps = sorted(m.step for m in got["points"])
    assert steps == list(range(1, 101))
    for name in ("prediction_inference_time_ms", "prediction_count", "prob_glaucoma"):
        assert len(client.get_metric_history(run_id, name)) == 100
    metrics = run.data.metrics
    assert metrics["session_total_predictions"] == 100
    assert 0 < metrics["prediction_confidence"] <= 100
    for key in ("session_avg_inference_time_ms", "session_avg_confidence", "recent_avg_confidence"):
        assert key in metrics
    # One client, two images a request: every network call held that request's two images.
    assert metrics["session_avg_batch_size"] == 2.0
    assert {record["batch_size"] for record in got["records"]} == {2}
    for key in ("recent_low_confidence_ratio", "drift_detected", "error_rate", "class_dist_normal"):
        assert key in metrics
    record = got["records"][0]
    assert record["status"] == "ok"
    assert {
        "request_id",
        "timestamp",
        "inference_ms",
        "img_width",
        "img_sharpness",
        "emb_7",
    } <= set(record)
    assert record["img_width"] == 240
    # Structured logs: one JSON line per request.
    lines = [json.loads(x) for x in server.log.read_text().splitlines() if x.startswith('{"event"')]
    assert len(lines) == 50
    assert all(x["rows"] == 2 and x["errors"] == 0 and x["latency_ms"] > 0 for x in lines)
    _assert_no_image_content(client, run_id, tmp_path)


def _assert_no_image_content(client: MlflowClient, run_id: str, tmp_path: Path) -> None:
    import mlflow

    run = client.get_run(run_id)
    local = Path(
        mlflow.artifacts.download_artifacts(
            run_id=run_id, dst_path=str(tmp_path / "all"), tracking_uri=client.tracking_uri
        )
    )
    blobs = [p.read_bytes() for p in local.rglob("*") if p.is_file()]
    blobs.append(json.dumps([run.data.params, run.data.tags]).encode())
    encoded = b64(IMAGE).encode()
    for blob in blobs:
        for start in range(0, len(IMAGE) - 64, len(IMAGE) // 8):
            assert IMAGE[start : start + 64] not in blob
            assert encoded[start : start + 64] not in blob
        assert PATIENT_ID.encode() not in blob


def test_an_outage_loses_nothing(
    tiny_model_path: Path, tracking: TrackingServer, tmp_path: Path
) -> None:
    client = MlflowClient(tracking.url)
    server = ModelServer(tiny_model_path, tmp_path, _env(tracking.url, tmp_path))
    try:
        server.predict(1)
        assert _wait_for(lambda: len(_serving_runs(client)) == 1, 30)
        run_id = _serving_runs(client)[0].info.run_id
        tracking.stop()
        started = time.monotonic()
        for _ in range(50):
            assert server.predict(1)[0]["error"] is None
        # Predictions did not wait for the dead tracking server.
        assert time.monotonic() - started < 30
        tracking.start()  # same port, same store
        assert _wait_for(
            lambda: len(_records(client, run_id, tmp_path / f"dl-{time.monotonic()}")) == 51, 60
        )
    finally:
        server.stop()


def test_tracking_disabled_logs_nothing(
    tiny_model_path: Path, tracking: TrackingServer, tmp_path: Path
) -> None:
    client = MlflowClient(tracking.url)
    env = _env(tracking.url, tmp_path, ENABLE_MLFLOW_TRACKING="false")
    server = ModelServer(tiny_model_path, tmp_path, env)
    try:
        for _ in range(5):
            server.predict(2)
        time.sleep(3)
    finally:
        server.stop()
    assert _serving_runs(client) == []
    assert not (tmp_path / "telemetry").exists()


def test_the_served_ood_score_reaches_the_answer_the_log_and_the_session_metrics(
    trained_model: TrainedModel, tracking: TrackingServer, tmp_path: Path
) -> None:
    """A trained model served by `mlflow models serve`: noise gets ood_score >= 1 and the
    warning, generated fundus images do not; the log and the serving run hold both."""
    import numpy as np
    from PIL import Image

    from eye_model.drift.validation import render_pool
    from eye_model.ood import OOD_WARNING

    rng = np.random.default_rng(3)
    noise = [Image.fromarray(rng.integers(0, 256, (200, 200, 3), np.uint8)) for _ in range(10)]
    fundus, _ = render_pool(3, 256, seed=31)  # 12 images of the training generator
    images = [encode(image, "JPEG", quality=90) for image in (*noise, *fundus)]
    client = MlflowClient(tracking.url)
    env = _env(tracking.url, tmp_path, EYE_MODEL_FUNDUS_CHECK="off", EYE_MODEL_SESSION_EVERY_N="22")
    server = ModelServer(trained_model.model_dir, tmp_path, env)
    try:
        payload = {"dataframe_split": {"columns": ["image"], "data": [[b64(i)] for i in images]}}
        response = requests.post(f"{server.url}/invocations", json=payload, timeout=120)
        assert response.status_code == 200, response.text
        answers = response.json()["predictions"]
        assert _wait_for(lambda: len(_serving_runs(client)) == 1, 30)
        run_id = _serving_runs(client)[0].info.run_id
        got: dict[str, list] = {}

        def delivered() -> bool:
            got["records"] = _records(client, run_id, tmp_path / f"dl-{time.monotonic()}")
            got["points"] = client.get_metric_history(run_id, "prediction_ood_score")
            metrics = client.get_run(run_id).data.metrics
            return (
                len(got["records"]) == 22
                and len(got["points"]) == 22
                and ("recent_ood_share" in metrics)
            )

        assert _wait_for(delivered), {k: len(v) for k, v in got.items()}
    finally:
        server.stop()
    scores = [answer["ood_score"] for answer in answers]
    assert all(score >= 1.0 for score in scores[:10]), scores
    # ood_score 1.0 is the 99th percentile of the validation split, which for this small
    # model is ~54 images (15% of 360): that percentile is close to the split's largest
    # score and estimated from one or two images, so a fresh in-distribution image is
    # beyond it a few percent of the time or more (generator v3 has wide domain
    # randomisation). "Mostly < 1" is the claim: at most a quarter of the 12 generated
    # images, and all of them far below the noise.
    assert sum(score >= 1.0 for score in scores[10:]) <= 3, scores
    assert float(np.median(scores[10:])) < 1.0, scores
    assert max(scores[10:]) < min(scores[:10]), scores
    for answer, score in zip(answers, scores, strict=True):
        assert (OOD_WARNING in (answer["warning"] or "")) == (score >= 1.0)
    records = sorted(got["records"], key=lambda record: record["row"])
    assert [r["ood_score"] for r in records] == pytest.approx(scores, abs=1e-5)
    metrics = client.get_run(run_id).data.metrics
    share = sum(score >= 1.0 for score in scores) / len(scores)
    assert metrics["recent_ood_share"] == pytest.approx(share)
    assert metrics["recent_avg_ood_score"] == pytest.approx(float(np.mean(scores)), abs=1e-4)


def _keep_alive_ping_ms(port: int, count: int = 15) -> float:
    """Median time of ``count`` /ping requests sent one after another on one connection."""
    import http.client
    import statistics

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    times = []
    try:
        for _ in range(count):
            began = time.perf_counter()
            connection.request("GET", "/ping")
            response = connection.getresponse()
            response.read()
            assert response.status == 200
            times.append((time.perf_counter() - began) * 1000.0)
    finally:
        connection.close()
    return statistics.median(times[1:])


def test_two_workers_give_two_runs_whose_counts_add_up(
    tiny_model_path: Path, tracking: TrackingServer, tmp_path: Path
) -> None:
    client = MlflowClient(tracking.url)
    from concurrent.futures import ThreadPoolExecutor

    server = ModelServer(tiny_model_path, tmp_path, _env(tracking.url, tmp_path), workers=2)
    sent = 0
    try:
        # Keep-alive answers of a two-worker server come at once: uvicorn leaves Nagle on
        # there (eye_model.server_socket), which made each wait ~44 ms for a delayed ACK.
        assert _keep_alive_ping_ms(server.port) < 20.0
        # Which worker accepts a connection is the kernel's choice: sequential requests can all
        # land on one idle worker. Concurrent rounds reach both; keep sending until they have.
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in range(10):
                sent += sum(len(rows) for rows in pool.map(lambda _: server.predict(1), range(8)))
                if _wait_for(lambda: len(_serving_runs(client)) == 2, 5):
                    break
        assert _wait_for(lambda: len(_serving_runs(client)) == 2, 30)
        # Each worker knows it shares the cores with another (its network then uses one).
        from eye_model.server_socket import scoring_server_workers

        worker_pids = [int(r.data.tags["pid"]) for r in _serving_runs(client)]
        assert [scoring_server_workers(pid) for pid in worker_pids] == [2, 2]
    finally:
        server.stop()
    # ... and set its network's threads before TensorFlow started (eye_model.inference).
    assert "came after TensorFlow started" not in server.log.read_text()
    runs = _serving_runs(client)
    assert len({r.data.tags["pid"] for r in runs}) == 2
    # Each worker's network runs on TensorFlow Lite, and its serving run says so.
    assert [r.data.tags.get("network_runtime") for r in runs] == ["tflite", "tflite"]
    assert len({r.data.tags["session_id"] for r in runs}) == 2
    totals = [
        client.get_run(r.info.run_id).data.metrics.get("session_total_predictions", 0) for r in runs
    ]
    assert all(total > 0 for total in totals)
    assert sum(totals) == sent


# -- crash safety (issue 15): a killed worker, a SIGTERM during an outage ---------------------


def _session_folders(home: Path) -> list[Path]:
    return sorted(p for p in (home / "telemetry").iterdir() if p.is_dir())


def _delivered(client: MlflowClient, run_id: str, home: Path) -> list[dict[str, object]]:
    return _records(client, run_id, home / f"dl-{time.monotonic()}")


def test_a_killed_worker_loses_no_answered_prediction(
    tiny_model_path: Path, tracking: TrackingServer, tmp_path: Path
) -> None:
    import os
    import signal

    from eye_model.telemetry import RECOVERED_TAG, SessionManifest

    client = MlflowClient(tracking.url)
    # Parts of 8 records, never sealed by age: 20 predictions leave 4 in the unsealed file.
    env = _env(
        tracking.url, tmp_path, EYE_MODEL_LOG_PART_SECONDS="3600", EYE_MODEL_LOG_PART_RECORDS="8"
    )
    server = ModelServer(tiny_model_path, tmp_path, env)
    try:
        answered = sum(len(server.predict(2)) for _ in range(10))
        assert _wait_for(lambda: len(_serving_runs(client)) == 1, 30)
        run_id = _serving_runs(client)[0].info.run_id
        assert _wait_for(lambda: len(_delivered(client, run_id, tmp_path)) == 16, 30)
        (folder,) = _session_folders(tmp_path)
        manifest = SessionManifest.read(folder)
        assert manifest.run_id == run_id
        os.kill(manifest.pid, signal.SIGKILL)  # the worker that answered
    finally:
        server.stop()
    assert answered == 20
    assert client.get_run(run_id).info.status == "RUNNING"  # nobody ended it
    second = ModelServer(tiny_model_path, tmp_path, env)
    try:
        assert _wait_for(lambda: client.get_run(run_id).info.status == "KILLED", 60)
        records = _delivered(client, run_id, tmp_path)
        history = client.get_metric_history(run_id, "prediction_confidence")
    finally:
        second.stop()
    run = client.get_run(run_id)
    assert run.data.tags[RECOVERED_TAG] == "4"
    assert sorted(r["count"] for r in records) == list(range(1, 21))
    assert sorted(m.step for m in history) == list(range(1, 21))
    assert len(_serving_runs(client)) == 1  # delivered into the original run, no new one
    assert SessionManifest.read(folder).ended


def test_sigterm_during_an_outage_is_quick_and_the_next_start_delivers(
    tiny_model_path: Path, tracking: TrackingServer, tmp_path: Path
) -> None:
    import os
    import signal

    from eye_model.stack.processes import wait_group_gone
    from eye_model.telemetry import RECOVERED_TAG

    client = MlflowClient(tracking.url)
    env = _env(tracking.url, tmp_path)
    server = ModelServer(tiny_model_path, tmp_path, env)
    try:
        for _ in range(5):
            server.predict(1)
        assert _wait_for(lambda: len(_serving_runs(client)) == 1, 30)
        run_id = _serving_runs(client)[0].info.run_id
        assert _wait_for(lambda: len(_delivered(client, run_id, tmp_path)) == 5, 30)
        tracking.stop()
        for _ in range(5):
            assert server.predict(1)[0]["error"] is None
        time.sleep(2)  # sealed by age and failing to deliver
        started = time.monotonic()
        os.killpg(server.process.pid, signal.SIGTERM)  # as `stack down` or Docker stops it
        assert wait_group_gone(server.process.pid, 10.0, server.process)
        stopped_in = time.monotonic() - started
    finally:
        server.stop()
    assert stopped_in <= 10.0
    log = server.log.read_text()
    assert "telemetry delivery failing since" in log
    assert "delivered by the next serving process" in log
    tracking.start()
    second = ModelServer(tiny_model_path, tmp_path, env)
    try:
        assert _wait_for(lambda: len(_delivered(client, run_id, tmp_path)) == 10, 60)
        assert _wait_for(lambda: client.get_run(run_id).info.status == "FINISHED", 30)
    finally:
        second.stop()
    assert client.get_run(run_id).data.tags[RECOVERED_TAG] == "5"
