"""Telemetry units: records hold no image content, the local log seals and bounds itself."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from eye_model.preprocess import decode_image
from eye_model.pyfunc import ScoredImage
from eye_model.telemetry import (
    InferenceLog,
    ModelIdentity,
    Telemetry,
    TelemetryConfig,
    build_records,
)
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
    config = TelemetryConfig(
        tracking_uri="http://127.0.0.1:9",  # nothing listens: every delivery fails
        log_dir=tmp_path,
        part_records=10,
        ship_interval=3600,
        max_backlog_records=25,
    )
    telemetry = Telemetry(config, ModelIdentity())
    try:
        for _ in range(4):
            telemetry.log.append([{"status": "error", "inference_ms": 1.0}] * 10)
            telemetry.log.seal_if_due(10, 3600)
        with caplog.at_level(logging.WARNING):
            telemetry._enforce_backlog()
        assert telemetry.dropped_records == 20
        assert "dropped 10 of the oldest records" in caplog.text
        assert len(telemetry.log.pending_parts()) == 2
    finally:
        telemetry._stop.set()


def test_disabled_or_outside_a_server_means_no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("__pyfunc_model_path__", raising=False)
    monkeypatch.delenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", raising=False)
    assert not TelemetryConfig.from_env({}).active_here()
    assert TelemetryConfig.from_env({"EYE_MODEL_TELEMETRY": "always"}).active_here()
    off = {"EYE_MODEL_TELEMETRY": "always", "ENABLE_MLFLOW_TRACKING": "false"}
    assert not TelemetryConfig.from_env(off).active_here()
    monkeypatch.setenv("__pyfunc_model_path__", "/models/x")
    assert TelemetryConfig.from_env({}).active_here()
    with pytest.raises(ValueError, match="EYE_MODEL_TELEMETRY"):
        TelemetryConfig.from_env({"EYE_MODEL_TELEMETRY": "sometimes"})


def test_credentials_never_reach_tags() -> None:
    assert redact_uri("http://alice:s3cret@host:5000/x") == "http://alice@host:5000/x"
    assert redact_uri("models:/eye-disease-model/2") == "models:/eye-disease-model/2"
