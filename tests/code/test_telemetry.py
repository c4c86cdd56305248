"""Telemetry units: records hold no image content, the local log seals and bounds itself."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

from eye_model.ood import OOD_WARNING
from eye_model.preprocess import decode_image
from eye_model.scored import ScoredImage
from eye_model.settings import load_settings, settings_environ
from eye_model.telemetry import (
    RECOVERED_TAG,
    InferenceLog,
    ModelIdentity,
    SessionManifest,
    SessionMetrics,
    Telemetry,
    TelemetryConfig,
    build_records,
    dead_sessions,
    read_model_identity,
    shutdown,
)
from eye_model.telemetry.recorder import TICK_SECONDS as TICK
from eye_model.uris import redact_uri
from tests.helpers import draw_fundus_like, encode

JPEG = encode(draw_fundus_like(128, seed=5), "JPEG")


def _rows() -> list[ScoredImage]:
    image = decode_image(JPEG, 64)
    image.pixels = None
    good = ScoredImage(
        index=0,
        image=image,
        probabilities=np.array([0.1, 0.2, 0.3, 0.4]),
        embedding=np.arange(8, dtype=np.float32),
        decode_ms=2.0,
        network_ms=1.5,
        batch_size=12,
    )
    bad = ScoredImage(index=1, error="image is not valid base64; send ...", decode_ms=0.1)
    return [good, bad]


def test_records_describe_predictions_without_image_content() -> None:
    identity = ModelIdentity(name="eye-disease-model", version="3", source_run_id="abc")
    records = build_records(_rows(), request_id="r1", identity=identity)
    good, bad = records
    assert good["status"] == "ok"
    assert good["predicted_class"] == "normal"
    assert good["confidence"] == pytest.approx(0.4)
    assert good["inference_ms"] == pytest.approx(3.5)
    assert (good["batch_size"], bad["batch_size"]) == (12, 0)
    assert good["model_version"] == "3"
    assert good["img_width"] == 128
    assert good["img_format"] == "JPEG"
    assert good["emb_7"] == 7.0
    assert bad["status"] == "error"
    assert bad["predicted_class"] is None
    text = json.dumps(records)
    assert "image_id" not in text
    assert "pixels" not in text
    assert JPEG[100:140].hex() not in text


def test_image_ids_only_on_request() -> None:
    records = build_records(_rows(), request_id="r", identity=ModelIdentity(), image_ids=["a", "b"])
    assert [r["image_id"] for r in records] == ["a", "b"]
    records = build_records(_rows(), request_id="r", identity=ModelIdentity(), image_ids=[7, None])
    assert [r["image_id"] for r in records] == ["7", None]
    assert records[1]["error"] == "image is not valid base64; send ..."


def test_log_seals_parts_by_size_and_keeps_order(tmp_path: Path) -> None:
    log = InferenceLog(tmp_path)
    log.append([{"n": i} for i in range(3)])
    assert log.seal_if_due(5, 60) is None
    log.append([{"n": i} for i in range(3, 6)])
    part = log.seal_if_due(5, 60)
    assert part is not None
    assert part.name == "part-00000.jsonl"
    assert [json.loads(x)["n"] for x in part.read_text().splitlines()] == list(range(6))
    log.append([{"n": 6}])
    assert log.seal_if_due(5, 60, force=True).name == "part-00001.jsonl"
    assert [p.name for p in log.pending_parts()] == ["part-00000.jsonl", "part-00001.jsonl"]


def test_backlog_is_bounded_and_says_what_it_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    log = InferenceLog(tmp_path)
    for _ in range(4):
        log.append([{"status": "error", "inference_ms": 1.0}] * 10)
        log.seal_if_due(10, 3600)
    with caplog.at_level(logging.WARNING):
        assert log.enforce_backlog(25) == 20
    assert log.dropped_records == 20
    assert "dropped 10 of the oldest records" in caplog.text
    assert [p.name for p in log.pending_parts()] == ["part-00002.jsonl", "part-00003.jsonl"]
    assert log.enforce_backlog(25) == 0


def test_disabled_or_outside_a_server_means_no_telemetry() -> None:
    assert not TelemetryConfig.from_env({}).active_here()
    assert TelemetryConfig.from_env({"EYE_MODEL_TELEMETRY": "always"}).active_here()
    off = {"EYE_MODEL_TELEMETRY": "always", "ENABLE_MLFLOW_TRACKING": "false"}
    assert not TelemetryConfig.from_env(off).active_here()
    # MLflow's scoring server marks its workers; only they track in the default mode.
    assert TelemetryConfig.from_env({"__pyfunc_model_path__": "/models/x"}).active_here()
    serving = {"_MLFLOW_IS_IN_SERVING_ENVIRONMENT": "true"}
    assert TelemetryConfig.from_env(serving).active_here()
    assert not TelemetryConfig.from_env({**serving, "EYE_MODEL_TELEMETRY": "never"}).active_here()
    with pytest.raises(ValueError, match="EYE_MODEL_TELEMETRY"):
        TelemetryConfig.from_env({"EYE_MODEL_TELEMETRY": "sometimes"})


def test_served_model_identity_comes_from_the_settings(tmp_path: Path) -> None:
    (tmp_path / "MLmodel").write_text("run_id: abc123\nmodel_id: m-42\n")
    settings = load_settings(
        settings_environ(served_name="eye-disease-model", served_version="4", served_uri="")
    )
    identity = read_model_identity(tmp_path, settings)
    assert identity == ModelIdentity(
        name="eye-disease-model",
        version="4",
        uri=str(tmp_path),  # no served URI: the model's folder
        source_run_id="abc123",
        logged_model_id="m-42",
    )
    settings = load_settings(settings_environ(served_uri="models:/eye-disease-model/4"))
    assert read_model_identity(None, settings).uri == "models:/eye-disease-model/4"


def test_credentials_never_reach_tags() -> None:
    assert redact_uri("http://alice:s3cret@host:5000/x") == "http://alice@host:5000/x"
    assert redact_uri("models:/eye-disease-model/2") == "models:/eye-disease-model/2"


def _record(
    status: str = "ok", confidence: float = 0.9, ms: float = 2.0, batch: int = 1
) -> dict[str, object]:
    if status != "ok":
        return {"status": "error", "inference_ms": ms, "batch_size": 0}
    return {
        "status": "ok",
        "confidence": confidence,
        "predicted_class": "normal",
        "inference_ms": ms,
        "batch_size": batch,
    }


def test_session_metrics_number_records_and_queue_every_n() -> None:
    session = SessionMetrics(window_size=4, every_n=5, every_s=3600)
    first = [_record(confidence=0.5), _record(), _record("error")]
    session.count(first)
    assert [r["count"] for r in first] == [1, 2, 3]
    assert session.next_pending() is None  # 3 < every_n
    session.count([_record(confidence=0.8, ms=4.0, batch=8) for _ in range(3)])
    step, metrics = session.next_pending()
    assert step == 6
    assert metrics["session_total_predictions"] == 6
    assert metrics["session_error_count"] == 1
    assert metrics["session_avg_confidence"] == pytest.approx(100 * (0.5 + 0.9 + 2.4) / 5)
    assert metrics["class_dist_normal"] == 1.0
    # Over the scored images only: two ran alone, three in batches of 8.
    assert metrics["session_avg_batch_size"] == pytest.approx((1 + 1 + 3 * 8) / 5)
    # The window holds the last 4: one error and three at 0.8 (0.8 is not below 0.70).
    assert metrics["recent_avg_confidence"] == pytest.approx(80.0)
    assert metrics["recent_low_confidence_ratio"] == 0.0
    assert metrics["error_rate"] == pytest.approx(0.25)
    assert metrics["recent_avg_inference_time_ms"] == pytest.approx((2.0 + 12.0) / 4)
    session.delivered()
    assert not session.has_pending
    session.queue_now()  # nothing new since the last snapshot
    assert not session.has_pending
    session.count([_record(confidence=0.6)])
    session.queue_now()
    assert session.next_pending()[0] == 7


def test_records_and_session_metrics_carry_the_ood_score() -> None:
    """The inference log keeps ood_score and the warning; the window logs the share at or
    above 1.0 and the mean; a model without the score logs neither metric."""
    rows = _rows()
    rows[0].ood_score = 1.25
    rows[0].warnings.append(OOD_WARNING)
    good, bad = build_records(rows, request_id="r", identity=ModelIdentity())
    assert good["ood_score"] == 1.25
    assert good["warning"] == OOD_WARNING
    assert bad["status"] == "error" and bad.get("ood_score") is None
    session = SessionMetrics(window_size=4, every_n=4, every_s=3600)
    scores = [0.2, 1.0, 3.0, -0.2]
    session.count([{**_record(), "ood_score": score} for score in scores])
    _, metrics = session.next_pending()
    assert metrics["recent_ood_share"] == pytest.approx(0.5)  # 1.0 and 3.0
    assert metrics["recent_avg_ood_score"] == pytest.approx(1.0)
    session.delivered()
    session.count([good, bad])  # the window keeps the last 4: 3.0, -0.2, 1.25 and the error
    session.queue_now()
    _, metrics = session.next_pending()
    assert metrics["recent_ood_share"] == pytest.approx(2 / 3)
    old_model = SessionMetrics(window_size=4, every_n=2, every_s=3600)
    old_model.count([_record(), {**_record(), "ood_score": None}])
    _, metrics = old_model.next_pending()
    assert "recent_ood_share" not in metrics and "recent_avg_ood_score" not in metrics


def test_session_metrics_queue_when_stale() -> None:
    session = SessionMetrics(window_size=10, every_n=100, every_s=0.01)
    session.count([_record()])
    time.sleep(0.02)
    session.queue_if_stale()
    assert session.next_pending()[0] == 1


def test_a_session_delivers_its_records_and_metrics_when_closed(
    tmp_path: Path, tracking_store: str
) -> None:
    from mlflow import MlflowClient

    config = TelemetryConfig(
        tracking_uri=tracking_store,
        experiment_name="telemetry-unit",
        log_dir=tmp_path / "telemetry",
        ship_interval=3600,  # only close() delivers
    )
    telemetry = Telemetry(config, ModelIdentity(name="eye-disease-model", version="2"))
    assert telemetry in shutdown._live
    telemetry.record(_rows(), request_id="r1", image_ids=["patient-1", "patient-2"])
    telemetry.record(_rows()[:1], request_id="r2", image_ids=None)
    telemetry.close(timeout=60)  # a new SQLite store takes seconds to create its tables
    assert telemetry not in shutdown._live
    client = MlflowClient(tracking_store)
    run = client.get_run(telemetry.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["role"] == "serving"
    assert run.data.tags["model_version"] == "2"
    assert run.data.metrics["session_total_predictions"] == 3
    assert run.data.metrics["session_error_count"] == 1
    history = client.get_metric_history(telemetry.run_id, "prediction_confidence")
    assert sorted(m.step for m in history) == [1, 3]  # the error (step 2) has no point
    assert all(m.value == pytest.approx(40.0) for m in history)
    assert telemetry.log.pending_parts() == []  # everything shipped
    shipped = sorted(p.name for p in telemetry.log.folder.glob("*.shipped"))
    assert shipped == ["part-00000.shipped"]
    records = InferenceLog.read_part(telemetry.log.folder / "part-00000.jsonl")
    assert [r["request_id"] for r in records] == ["r1", "r1", "r2"]
    assert "image_id" not in json.dumps(records)  # log_image_ids is off
    artifacts = [f.path for f in client.list_artifacts(telemetry.run_id, "inference_log")]
    assert artifacts == ["inference_log/part-00000.jsonl"]
    telemetry.close()  # a second close does nothing


_SIGTERM_SCRIPT = """
import os, signal, sys
from eye_model.telemetry import install_shutdown_handler, shutdown

class Session:
    def close(self, timeout=10.0):
        print("closed", flush=True)

def previous(signum, frame):
    print("previous", flush=True)
    sys.exit(3)

signal.signal(signal.SIGTERM, previous)
shutdown.register(Session())
assert install_shutdown_handler()
handler = signal.getsignal(signal.SIGTERM)
assert install_shutdown_handler()
assert signal.getsignal(signal.SIGTERM) is handler  # installed once
os.kill(os.getpid(), signal.SIGTERM)
print("not reached", flush=True)
"""


def test_sigterm_closes_every_session_then_chains_to_the_previous_handler() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _SIGTERM_SCRIPT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert done.stdout.split() == ["closed", "previous"], done.stderr
    assert done.returncode == 3


# -- crash safety (issue 15) and a safe close (issue 16) ------------------------------------


def _pixel_rows(n: int = 1) -> list[ScoredImage]:
    rows = []
    for i in range(n):
        image = decode_image(JPEG, 64)
        rows.append(
            ScoredImage(
                index=i,
                image=image,
                probabilities=np.array([0.1, 0.2, 0.3, 0.4]),
                embedding=np.arange(8, dtype=np.float32),
            )
        )
    return rows


def _dead_port() -> str:
    from eye_model.stack import find_free_port

    return f"http://127.0.0.1:{find_free_port()}"


def _reference_stats(pixels: np.ndarray) -> dict[str, float]:
    """The statistics by their definition (Pillow's ImageStat, a float Laplacian)."""
    from PIL import Image, ImageStat

    image = Image.fromarray(pixels, "RGB")
    gray = image.convert("L")
    luma = np.asarray(gray, dtype=np.float32)
    laplacian = (
        luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:] - 4.0 * luma[1:-1, 1:-1]
    )
    colour, gray_stat = ImageStat.Stat(image), ImageStat.Stat(gray)
    return {
        "img_brightness": float(gray_stat.mean[0]),
        "img_contrast": float(gray_stat.stddev[0]),
        "img_sharpness": float(laplacian.var()),
        "img_mean_r": float(colour.mean[0]),
        "img_mean_g": float(colour.mean[1]),
        "img_mean_b": float(colour.mean[2]),
    }


def test_request_path_stats_equal_the_reference_stats() -> None:
    from eye_model.preprocess import compute_image_stats

    for size, seed in ((64, 1), (224, 2), (97, 3)):
        pixels = decode_image(encode(draw_fundus_like(300, seed=seed), "PNG"), size).pixels
        fast, reference = compute_image_stats(pixels), _reference_stats(pixels)
        assert fast.keys() == reference.keys()
        for key, value in reference.items():
            assert fast[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


def test_records_are_in_the_open_log_file_before_record_returns(tmp_path: Path) -> None:
    config = TelemetryConfig(
        tracking_uri=_dead_port(),
        log_dir=tmp_path / "telemetry",
        ship_interval=3600,
        part_seconds=3600,
    )
    telemetry = Telemetry(config, ModelIdentity())
    try:
        rows = _pixel_rows(2)
        telemetry.record(rows, request_id="r1", image_ids=None)
        # No thread had to run: the request thread wrote and flushed the lines.
        lines = (telemetry.log.folder / "current.jsonl").read_text().splitlines()
        assert [json.loads(x)["count"] for x in lines] == [1, 2]
        assert all(json.loads(x)["img_brightness"] > 0 for x in lines)
        assert all(row.image.pixels is None for row in rows)  # no pixels kept
        manifest = SessionManifest.read(telemetry.log.folder)
        assert manifest.pid == os.getpid() and manifest.start_time > 0
    finally:
        telemetry.close(timeout=2)


def test_a_full_queue_drops_the_oldest_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from eye_model.telemetry.recorder import Recorder

    log = InferenceLog(tmp_path, part_records=1000)
    session = SessionMetrics(window_size=10, every_n=1000, every_s=3600)
    recorder = Recorder(ModelIdentity(), log, session, max_queued=5)  # thread not started
    for request in range(4):
        recorder.record(_pixel_rows(2), request_id=f"r{request}", image_ids=None)
    assert recorder.dropped_records == 3  # 8 records, room for 5
    queued = list(recorder._queue)
    assert [r["count"] for r in queued] == [4, 5, 6, 7, 8]  # the newest are kept
    assert not any(isinstance(v, np.ndarray) for r in queued for v in r.values())
    with caplog.at_level(logging.WARNING):
        recorder._drain()
    assert "dropped_records=3" in caplog.text
    assert session.next_pending() is None
    session.queue_now()
    assert session.next_pending()[1]["session_total_predictions"] == 8  # drops still count
    # Every record is in the log all the same.
    assert len(log.read_part(log.seal_if_due(force=True))) == 8


def test_sealing_and_the_failure_warning_go_on_while_tracking_is_down(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eye_model.telemetry import limit_http_retries

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "120")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")  # restored after the test
    limit_http_retries()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "5"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    config = TelemetryConfig(
        tracking_uri=_dead_port(),
        log_dir=tmp_path / "telemetry",
        ship_interval=0.2,
        part_seconds=0.3,
        max_backlog_records=3,
    )
    with caplog.at_level(logging.WARNING):
        telemetry = Telemetry(config, ModelIdentity(), warn_every=3600)
        for request in range(4):
            telemetry.record(_pixel_rows(1), request_id=f"r{request}", image_ids=None)
            time.sleep(0.5)  # each record sealed into its own part by age
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (
            telemetry.health.warnings == 0 or telemetry.log.unsealed_records
        ):
            time.sleep(0.1)
        assert telemetry.log.unsealed_records == 0  # sealed by age, no delivery needed
        time.sleep(2 * TICK)
        waiting = sum(len(InferenceLog.read_part(p)) for p in telemetry.log.pending_parts())
        assert waiting <= 3 and telemetry.dropped_backlog_records == 4 - waiting  # bounded
        started = time.monotonic()
        telemetry.close()
        assert time.monotonic() - started < 6
    failing = [r.getMessage() for r in caplog.records if "delivery failing since" in r.message]
    assert len(failing) == 1, failing  # rate-limited
    assert "records waiting): MlflowException" in failing[0]
    assert "delivered by the next serving process" in caplog.text


def test_close_racing_a_flush_delivers_each_part_once(
    tmp_path: Path, tracking_store: str, caplog: pytest.LogCaptureFixture
) -> None:
    import threading

    from mlflow import MlflowClient

    config = TelemetryConfig(
        tracking_uri=tracking_store,
        experiment_name="telemetry-race",
        log_dir=tmp_path / "telemetry",
        ship_interval=0.05,
        part_records=1,  # one part per request
        session_every_n=1,  # one snapshot per request
    )
    client = MlflowClient(tracking_store)
    client.create_experiment("telemetry-race")  # the tables exist before the race
    errors: list[BaseException] = []

    def flush() -> None:
        try:
            telemetry.flush()
        except BaseException as exc:
            errors.append(exc)

    with caplog.at_level(logging.DEBUG, logger="eye_model.telemetry"):
        # Three deliverers at once: the shipper thread (every 50 ms), flush(), close().
        telemetry = Telemetry(config, ModelIdentity())
        for request in range(12):
            telemetry.record(_rows()[:1], request_id=f"r{request}", image_ids=None)
        time.sleep(TICK)
        racer = threading.Thread(target=flush)
        racer.start()
        telemetry.close(timeout=60)
        racer.join(60)
    assert errors == []
    assert "Traceback" not in caplog.text
    runs = client.search_runs([client.get_experiment_by_name("telemetry-race").experiment_id])
    assert len(runs) == 1
    messages = [r.getMessage() for r in caplog.records]
    delivered = [m.split()[2] for m in messages if "delivered part-" in m]
    assert sorted(delivered) == [f"part-{i:05d}.jsonl" for i in range(12)]  # each once
    history = client.get_metric_history(runs[0].info.run_id, "session_total_predictions")
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)) and max(steps) == 12  # each snapshot once
    assert runs[0].info.status == "FINISHED"


def _session_folder(root: Path, pid: int, start_time: int, name: str) -> Path:
    import socket

    folder = root / name
    folder.mkdir(parents=True)
    SessionManifest(
        session_id=name,
        host=socket.gethostname(),
        pid=pid,
        start_time=start_time,
        started_at=time.time(),
        identity=ModelIdentity(name="eye-disease-model", version="3"),
    ).write(folder)
    log = InferenceLog(folder)
    log.append(build_records(_rows(), request_id="r", identity=ModelIdentity()))
    log.seal_if_due(force=True)
    log.append(build_records(_rows()[:1], request_id="s", identity=ModelIdentity()))
    log.close()  # left unsealed, as a killed process leaves it
    return folder


def test_dead_sessions_are_adopted_and_live_ones_left_alone(
    tmp_path: Path, tracking_store: str
) -> None:
    import subprocess
    import sys
    import threading

    from mlflow import MlflowClient

    from eye_model.stack.processes import process_identity
    from eye_model.telemetry.adoption import adopt_dead_sessions

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    me = process_identity(os.getpid())
    root = tmp_path / "telemetry"
    dead = _session_folder(root, gone.pid, 1, "dead")
    reused = _session_folder(root, os.getpid(), me.start_time + 1, "reused-pid")
    alive = _session_folder(root, os.getpid(), me.start_time, "alive")
    assert dead_sessions(root) == [dead, reused]
    config = TelemetryConfig(tracking_uri=tracking_store, experiment_name="adoption")
    assert adopt_dead_sessions(root, tmp_path / "none", config, threading.Event()) == 6
    client = MlflowClient(tracking_store)
    experiment = client.get_experiment_by_name("adoption")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert run.info.status == "KILLED"
        assert run.data.tags[RECOVERED_TAG] == "3"
        assert run.data.tags["model_version"] == "3"
        assert len(client.get_metric_history(run.info.run_id, "prediction_confidence")) == 2
    assert sorted(run.data.tags["session_id"] for run in runs) == ["dead", "reused-pid"]
    assert SessionManifest.read(dead).ended
    assert dead_sessions(root) == []  # adopted once
    assert (alive / "current.jsonl").exists()  # a live session is never touched
    assert not (alive / "part-00001.jsonl").exists()
