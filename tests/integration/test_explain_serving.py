"""Explanations through MLflow's own scoring server (`mlflow models serve`): the params in the
JSON request, the heatmap per row, and no heatmap in the inference log."""

from __future__ import annotations

import base64
import io
import json
import time
from pathlib import Path

import pytest
import requests
from mlflow import MlflowClient
from PIL import Image

from tests.conftest import TINY_IMAGE_SIZE
from tests.helpers import TrackingServer, b64, draw_fundus_like, encode, serving_without_tracking
from tests.integration.test_telemetry import (
    ModelServer,
    _env,
    _records,
    _serving_runs,
    _wait_for,
)

pytestmark = pytest.mark.slow

IMAGES = [b64(encode(draw_fundus_like(200, seed=i), "JPEG")) for i in range(3)]


def _post(url: str, params: dict[str, object] | None) -> list[dict[str, object]]:
    payload: dict[str, object] = {
        "dataframe_split": {
            "columns": ["image_id", "image"],
            "data": [["a", IMAGES[0]], ["bad", "%%%"], ["b", IMAGES[1]]],
        }
    }
    if params is not None:
        payload["params"] = params
    response = requests.post(f"{url}/invocations", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def _size(text: str) -> tuple[int, int]:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    assert image.format == "PNG"
    return image.size


def test_rest_explain_gives_a_heatmap_per_scored_row(tiny_model_path: Path, tmp_path: Path) -> None:
    with serving_without_tracking(tiny_model_path, tmp_path / "serve.log") as url:
        plain = _post(url, None)
        assert all("heatmap" not in row for row in plain)
        explained = _post(url, {"explain": True})
        sized = _post(url, {"explain": True, "heatmap_size": 128})
        bad_size = requests.post(
            f"{url}/invocations",
            json={
                "dataframe_split": {"columns": ["image"], "data": [[IMAGES[0]]]},
                "params": {"explain": True, "heatmap_size": 4},
            },
            timeout=60,
        )
    assert [row["image_id"] for row in explained] == ["a", "bad", "b"]
    assert explained[1]["heatmap"] is None and explained[1]["error"]
    for row, before in zip(explained, plain, strict=True):
        assert {k: v for k, v in row.items() if k != "heatmap"} == before
    assert _size(explained[0]["heatmap"]) == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)
    assert _size(sized[2]["heatmap"]) == (128, 128)
    assert bad_size.status_code == 400
    assert "heatmap_size=4 is out of range" in bad_size.text


def test_heatmaps_never_reach_the_inference_log(tiny_model_path: Path, tmp_path: Path) -> None:
    home = tmp_path / "tracking"
    home.mkdir()
    tracking = TrackingServer(home).start()
    try:
        client = MlflowClient(tracking.url)
        server = ModelServer(tiny_model_path, tmp_path, _env(tracking.url, tmp_path))
        try:
            explained = _post(server.url, {"explain": True})
            heatmaps = [row["heatmap"] for row in explained if row["heatmap"]]
            assert len(heatmaps) == 2
            assert _wait_for(lambda: len(_serving_runs(client)) == 1, 30)
            run_id = _serving_runs(client)[0].info.run_id
            got: dict[str, list[dict[str, object]]] = {}

            def delivered() -> bool:
                got["records"] = _records(client, run_id, tmp_path / f"dl-{time.monotonic()}")
                return len(got["records"]) == 3

            assert _wait_for(delivered), len(got.get("records", []))
        finally:
            server.stop()
        assert all("heatmap" not in record for record in got["records"])
        import mlflow

        local = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, dst_path=str(tmp_path / "all"), tracking_uri=tracking.url
            )
        )
        blobs = [p.read_bytes() for p in local.rglob("*") if p.is_file()]
        blobs += [p.read_bytes() for p in (tmp_path / "telemetry").rglob("*") if p.is_file()]
        run = client.get_run(run_id)
        blobs.append(json.dumps([run.data.params, run.data.tags, run.data.metrics]).encode())
        for blob in blobs:
            for heatmap in heatmaps:
                assert heatmap[100:164].encode() not in blob
    finally:
        tracking.stop()
