"""The comparison's figures from shadow records: agreement, Wilson interval, confusion,
distributions, estimated and true accuracy; and the shadow's running aggregates."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from eye_model.comparison import compare_records, wilson_interval
from eye_model.config import CLASS_NAMES
from eye_model.shadow import ShadowAggregates, shadow_model_uri


def _record(served: str, shadow: str, served_conf: float, shadow_conf: float) -> dict[str, object]:
    record: dict[str, object] = {
        "served_class": served,
        "shadow_class": shadow,
        "served_confidence": served_conf,
        "shadow_confidence": shadow_conf,
        "served_ood_score": 0.5,
        "shadow_ood_score": None,
        "agree": served == shadow,
    }
    for side, top, conf in (("served", served, served_conf), ("shadow", shadow, shadow_conf)):
        rest = (1.0 - conf) / 3
        for name in CLASS_NAMES:
            record[f"{side}_prob_{name}"] = conf if name == top else rest
    return record


def _window() -> pd.DataFrame:
    rows = [_record("normal", "normal", 0.9, 0.8) for _ in range(6)]
    rows += [_record("glaucoma", "glaucoma", 0.7, 0.6) for _ in range(2)]
    rows += [_record("cataract", "normal", 0.6, 0.5) for _ in range(2)]
    frame = pd.DataFrame(rows)
    frame["label"] = ["normal"] * 6 + ["glaucoma", "cataract"] + ["cataract", "cataract"]
    return frame


def test_wilson_interval_matches_the_formula() -> None:
    low, high = wilson_interval(8, 10)
    z, p, n = 1.959964, 0.8, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert low == pytest.approx(centre - half, abs=1e-4)
    assert high == pytest.approx(centre + half, abs=1e-4)


def test_comparison_figures() -> None:
    metrics, confusion = compare_records(_window())
    assert metrics["n"] == 10
    assert metrics["agreement"] == pytest.approx(0.8)
    assert metrics["agreement_ci_low"] < 0.8 < metrics["agreement_ci_high"]
    assert confusion["normal"]["normal"] == 6
    assert confusion["cataract"]["normal"] == 2
    assert sum(sum(row.values()) for row in confusion.values()) == 10
    assert metrics["champion_confidence_mean"] == pytest.approx(0.8)
    assert metrics["challenger_confidence_mean"] == pytest.approx(0.7)
    # The champion has OOD scores; the challenger gave none (an older model).
    assert metrics["champion_n_ood"] == 10 and metrics["champion_ood_score_p50"] == 0.5
    assert metrics["challenger_n_ood"] == 0 and "challenger_ood_score_mean" not in metrics
    # The label-free estimate is the mean top probability; the labels give the truth.
    assert metrics["champion_estimated_accuracy"] == pytest.approx(0.8)
    assert metrics["champion_accuracy"] == pytest.approx(0.9)  # 7 + 2 cataract rows: 9 of 10
    assert metrics["challenger_accuracy"] == pytest.approx(0.7)
    assert metrics["n_labelled"] == 10


def test_shadow_aggregates_per_class() -> None:
    aggregates = ShadowAggregates()
    for record in _window().to_dict("records"):
        aggregates.add(record)
    metrics = aggregates.metrics()
    assert metrics["shadow_agreement"] == pytest.approx(0.8)
    assert metrics["shadow_mean_confidence_delta"] == pytest.approx(-10.0)
    assert metrics["shadow_agreement_normal"] == 1.0
    assert metrics["shadow_agreement_cataract"] == 0.0
    assert "shadow_agreement_diabetic_retinopathy" not in metrics


def test_shadow_model_uri() -> None:
    assert shadow_model_uri("m", "challenger") == "models:/m@challenger"
    assert shadow_model_uri("m", "3") == "models:/m/3"
