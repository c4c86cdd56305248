"""A request inside the documented limits is answered before MLflow's scoring server gives up.

Issue 15: 80 PNGs of 6300x6300 (16-bit RGBA, inside the 40 MP limit) in one request got
HTTP 504 after 60 s. At default settings the request's pixel budget answers the rows past
it with an error naming the limit, and everything else is scored, well inside the timeout.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.helpers import b64, serving_without_tracking, sixteen_bit_rgba_png


@pytest.fixture(scope="module")
def default_server(
    tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve-limits") / "server.log"
    with serving_without_tracking(tiny_model_path, log) as url:
        yield url


@pytest.mark.slow
def test_a_request_over_the_pixel_budget_is_answered_with_the_rows_past_it_in_error(
    default_server: str,
) -> None:
    giant = b64(sixteen_bit_rgba_png(6300))  # 39.7 MP each, inside the 40 MP limit
    rows = [[f"eye-{i}", giant] for i in range(12)]  # 476 MP, over the 400 MP default
    payload = {"dataframe_split": {"columns": ["image_id", "image"], "data": rows}}
    start = time.monotonic()
    response = requests.post(f"{default_server}/invocations", json=payload, timeout=120)
    elapsed = time.monotonic() - start
    assert response.status_code == 200, response.text[:500]
    assert elapsed < 60  # MLflow's default MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
    predictions = response.json()["predictions"]
    assert [row["image_id"] for row in predictions] == [f"eye-{i}" for i in range(12)]
    budget = "more than 400 MP of decoded pixels (EYE_MODEL_MAX_REQUEST_PIXELS)"
    refused = [row for row in predictions if budget in (row["error"] or "")]
    decoded = [row for row in predictions if budget not in (row["error"] or "")]
    assert len(decoded) == 10 and len(refused) == 2
    for row in refused:
        assert row["predicted_class"] is None
        assert row["fundus_check"] is None  # never decoded, so never checked
    # The giant picture is a flat square (it must stay tiny on the wire): decoded, it reached
    # the network and the fundus check, which refuses it.
    assert {row["fundus_check"] for row in decoded} == {"no_fundus_field"}
