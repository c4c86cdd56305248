"""Tests of the drift core (eye_model.drift): tests, corrections, heuristics, estimate, reports,
and the units and meanings of the metric names drift runs share with serving runs."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eye_model.config import CLASS_NAMES, PROB_COLUMNS
from eye_model.drift import (
    EMBEDDING_FEATURE,
    PREDICTION_FEATURE,
    SCHEMA_VERSION,
    DriftConfig,
    DriftReport,
    compare_embeddings,
    compute_drift,
    compute_heuristics,
    compute_recent_metrics,
    correct_holm,
    estimate_performance,
    select_window,
    write_html_report,
)
from eye_model.drift.alert import build_alert_payload
from eye_model.drift.validation import simulate_records

#: Cheaper MMD settings for tests that run many windows.
FAST_CONFIG = DriftConfig(n_permutations=200, mmd_max_samples=300)


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    """A 2,000-row reference profile (validation split) with labels."""
    return simulate_records(2_000, seed=1, as_reference=True, with_labels=True)


def flagged_of(report: DriftReport) -> set[tuple[str, str]]:
    """(family, feature) pairs flagged as drifted."""
    return {(result.family, result.feature) for result in report.flagged_features}


def encode(values: pd.Series) -> np.ndarray:
    """Class names to codes 0-3."""
    return values.map({name: index for index, name in enumerate(CLASS_NAMES)}).to_numpy()


# --- statistical drift ------------------------------------------------------------------


def test_no_drift_resample_is_quiet(reference: pd.DataFrame) -> None:
    window = simulate_records(1_000, seed=2)
    report = compute_drift(reference, window)
    assert report.status == "ok"
    assert not report.drift_test_detected
    assert not report.drift_detected  # no heuristic fired either
    assert not report.alarm
    assert report.drift_share == 0.0
    # prediction, output, image, embedding (ood_score and the embedding summary)
    assert len(report.features) == 1 + 6 + 6 + 2
    assert {result.family for result in report.features} == {
        "prediction",
        "output",
        "image",
        "embedding",
    }
    assert report.estimate is not None and report.estimate.reliable


def test_brightness_shift_flags_image_brightness(reference: pd.DataFrame) -> None:
    window = simulate_records(500, seed=3, brightness_scale=0.7)
    report = compute_drift(reference, window)
    assert report.status == "drift"
    assert report.drift_test_detected
    assert ("image", "img_brightness") in flagged_of(report)
    assert {family for family, _ in flagged_of(report)} == {"image"}
    brightness = next(r for r in report.features if r.feature == "img_brightness")
    assert brightness.p_corrected < 1e-10
    assert brightness.effect > 1.0  # x0.7 moves the mean by more than 1 reference sd
    assert report.estimate is not None and not report.estimate.reliable
    assert report.metrics()["drift.image.img_brightness.flag"] == 1.0


def test_class_prior_shift_flags_prediction(reference: pd.DataFrame) -> None:
    window = simulate_records(500, seed=4, class_prior=(0.4 / 3, 0.4 / 3, 0.4 / 3, 0.6))
    report = compute_drift(reference, window)
    assert ("prediction", PREDICTION_FEATURE) in flagged_of(report)
    prediction = next(r for r in report.features if r.family == "prediction")
    assert prediction.test == "chi2"
    assert 0.2 < prediction.effect < 0.45  # JS distance of 25% -> 60% normal is about 0.3


def test_embedding_shift_flags_only_embedding(reference: pd.DataFrame) -> None:
    window = simulate_records(1_000, seed=5, embedding_shift=0.6)
    report = compute_drift(reference, window)
    # Moved embeddings are further from the class centres: ood_score rises with them.
    assert flagged_of(report) == {("embedding", EMBEDDING_FEATURE), ("embedding", "ood_score")}
    embedding = next(r for r in report.flagged_features if r.feature == EMBEDDING_FEATURE)
    assert embedding.test == "mmd"
    assert embedding.p == pytest.approx(1 / (report.config.n_permutations + 1))
    assert report.estimate is not None and not report.estimate.reliable


def test_ood_score_is_a_feature_of_the_embedding_family(reference: pd.DataFrame) -> None:
    """Images unlike the training data (ood_score up) are input drift; a model without the
    score (null ood_score) is not tested on it, and says so."""
    window = simulate_records(500, seed=11)
    quiet = compute_drift(reference, window, FAST_CONFIG)
    ood = next(r for r in quiet.features if r.feature == "ood_score")
    assert (ood.family, ood.test, ood.flag) == ("embedding", "ks", False)
    assert ood.n_reference == 2_000 and ood.n_window == 500

    shifted = window.assign(ood_score=window["ood_score"] + 1.0)
    report = compute_drift(reference, shifted, FAST_CONFIG)
    assert flagged_of(report) == {("embedding", "ood_score")}
    assert report.metrics()["drift.embedding.ood_score.flag"] == 1.0
    assert report.drift_share == pytest.approx(1 / 15)
    assert report.estimate is not None and not report.estimate.reliable  # input drift

    old_model = window.assign(ood_score=None)
    report = compute_drift(reference, old_model, FAST_CONFIG)
    assert all(r.feature != "ood_score" for r in report.features)
    assert "embedding.ood_score not tested: too few finite values" in report.notes
    assert not report.drift_test_detected


def test_tiny_shift_on_huge_window_is_significant_but_not_flagged() -> None:
    reference = simulate_records(100_000, seed=6, as_reference=True)
    window = simulate_records(100_000, seed=7)
    sd = reference["img_brightness"].std()
    config = DriftConfig(n_permutations=100, mmd_max_samples=300)

    window["img_brightness"] += 0.05 * sd
    report = compute_drift(reference, window, config)
    brightness = next(r for r in report.features if r.feature == "img_brightness")
    assert brightness.p < 1e-6
    assert brightness.p_corrected < config.alpha
    assert brightness.effect == pytest.approx(0.05, abs=0.015)
    assert not brightness.flag
    assert not report.drift_test_detected

    # The same window with a shift above the floor is flagged: the floor, not the test, decided.
    window["img_brightness"] += 0.25 * sd
    shifted = compute_drift(reference, window, config)
    assert flagged_of(shifted) == {("image", "img_brightness")}


def test_small_window_is_insufficient_data(reference: pd.DataFrame) -> None:
    window = simulate_records(150, seed=8, brightness_scale=0.5)
    window["confidence"] = 0.3  # would trip two heuristics on a larger window
    report = compute_drift(reference, window)
    assert report.status == "insufficient_data"
    assert not report.drift_detected and not report.drift_test_detected
    assert report.features == ()
    assert not report.flagged_heuristics
    metrics = report.metrics()
    assert metrics["drift_detected"] == 0.0
    assert metrics["drift_test_detected"] == 0.0
    assert metrics["insufficient_data"] == 1.0
    assert report.estimate is not None and not report.estimate.reliable


def test_error_rows_are_counted_and_left_out(reference: pd.DataFrame) -> None:
    window = simulate_records(1_000, seed=9, error_rate=0.2)
    report = compute_drift(reference, window)
    n_errors = int((window["status"] == "error").sum())
    assert 150 < n_errors < 250
    assert report.n_errors == n_errors
    assert report.n_tested == 1_000 - n_errors
    assert report.error_rate == pytest.approx(n_errors / 1_000)
    assert all(math.isfinite(r.p) for r in report.features)
    assert all(r.n_window == report.n_tested for r in report.features if r.test == "ks")

    # Too many errors leave fewer than min_records usable records.
    failing = simulate_records(300, seed=10, error_rate=0.5)
    assert compute_drift(reference, failing).status == "insufficient_data"


def test_false_alarms_on_no_drift_resamples_are_rare() -> None:
    population = simulate_records(100_000, seed=11)
    reference = population.iloc[:2_000].drop(
        columns=["request_id", "timestamp", "inference_ms", "status"]
    )
    pool = population.iloc[2_000:]
    rng = np.random.default_rng(12)
    alarms = 0
    for trial in range(50):
        window = pool.iloc[np.sort(rng.choice(len(pool), size=1_000, replace=False))]
        config = DriftConfig(n_permutations=200, mmd_max_samples=200, seed=trial)
        alarms += compute_drift(reference, window, config).drift_test_detected
    assert alarms <= 2


def test_holm_correction_matches_hand_computation() -> None:
    adjusted = correct_holm([0.01, 0.04, 0.03])
    # Sorted 0.01, 0.03, 0.04 -> 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04).
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06])
    np.testing.assert_allclose(correct_holm([0.5, 0.9]), [1.0, 1.0])


def test_bonferroni_across_families_multiplies_by_family_count(reference: pd.DataFrame) -> None:
    window = simulate_records(500, seed=13, class_prior=(0.3, 0.3, 0.2, 0.2))
    both = compute_drift(reference, window, DriftConfig(families=("prediction", "embedding")))
    alone = compute_drift(reference, window, DriftConfig(families=("prediction",)))
    p_both = next(r.p_corrected for r in both.features if r.family == "prediction")
    p_alone = next(r.p_corrected for r in alone.features if r.family == "prediction")
    assert p_alone == pytest.approx(alone.features[0].p)
    assert p_both == pytest.approx(min(1.0, 2 * p_alone))


def test_mmd_does_not_reject_identical_distributions() -> None:
    rng = np.random.default_rng(14)
    same = compare_embeddings(rng.normal(size=(400, 8)), rng.normal(size=(400, 8)), seed=1)
    shifted = compare_embeddings(
        rng.normal(size=(400, 8)), rng.normal(0.5, 1.0, size=(400, 8)), seed=1
    )
    assert same.p > 0.05
    assert same.effect < 0.05
    assert shifted.p == pytest.approx(1 / 501)
    assert shifted.effect > 0.1


# --- heuristics -------------------------------------------------------------------------


def set_low_confidence(window: pd.DataFrame) -> None:
    window["confidence"] = 0.5


def set_many_low_confidence(window: pd.DataFrame) -> None:
    window["confidence"] = np.where(np.arange(len(window)) % 5 < 2, 0.65, 0.95)


def set_slow_inference(window: pd.DataFrame) -> None:
    window["inference_ms"] = 6_000.0


def set_dominant_class(window: pd.DataFrame) -> None:
    window["predicted_class"] = np.where(np.arange(len(window)) % 10 == 0, "cataract", "normal")


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (set_low_confidence, {"low_mean_confidence", "high_low_confidence_ratio"}),
        (set_many_low_confidence, {"high_low_confidence_ratio"}),
        (set_slow_inference, {"slow_inference"}),
        (set_dominant_class, {"class_dominance"}),
    ],
)
def test_heuristic_triggers_on_crafted_window(
    reference: pd.DataFrame, mutate: Callable[[pd.DataFrame], None], expected: set[str]
) -> None:
    window = simulate_records(400, seed=15)
    mutate(window)
    report = compute_drift(reference, window, FAST_CONFIG)
    assert {h.name for h in report.flagged_heuristics} == expected
    assert report.drift_detected and report.alarm
    metrics = report.metrics()
    assert metrics["drift_detected"] == 1.0  # the brief's meaning: a heuristic fired
    for name in expected:
        assert metrics[f"heuristic.{name}"] == 1.0
        assert metrics[f"recent_{name}"] == 1.0


def test_heuristics_stay_quiet_on_normal_window(reference: pd.DataFrame) -> None:
    report = compute_drift(reference, simulate_records(400, seed=16), FAST_CONFIG)
    assert report.flagged_heuristics == ()
    values = {h.name: h.value for h in report.heuristics}
    # The heuristic compares confidence 0-1 with 0.60; the metric is 0-100 as in serving runs.
    assert values["low_mean_confidence"] == pytest.approx(report.recent_avg_confidence / 100)
    assert 75.0 < report.recent_avg_confidence < 95.0
    assert values["high_low_confidence_ratio"] == pytest.approx(report.recent_low_confidence_ratio)
    assert 50.0 < values["slow_inference"] < 500.0
    assert values["class_dominance"] < 0.35


# --- one unit and one meaning per metric name --------------------------------------------


def test_recent_metrics_have_the_units_of_serving_runs(reference: pd.DataFrame) -> None:
    window = simulate_records(500, seed=26, error_rate=0.1)
    report = compute_drift(reference, window, FAST_CONFIG)
    metrics = report.metrics()
    scored = window[window["status"] == "ok"]
    # 0-100, like prediction_confidence and session_avg_confidence (was 0-1 in drift runs).
    assert metrics["recent_avg_confidence"] == pytest.approx(100 * scored["confidence"].mean())
    assert metrics["recent_avg_confidence"] > 1.0
    assert report.recent_avg_confidence == pytest.approx(metrics["recent_avg_confidence"])
    # A share 0-1 of the scored predictions below 70 %.
    expected_ratio = float((scored["confidence"] < 0.70).mean())
    assert metrics["recent_low_confidence_ratio"] == pytest.approx(expected_ratio)
    assert metrics["recent_avg_inference_time_ms"] == pytest.approx(window["inference_ms"].mean())
    n_errors = int((window["status"] == "error").sum())
    assert metrics["error_count"] == n_errors
    assert metrics["error_rate"] == pytest.approx(n_errors / len(window))


def test_drift_detected_is_the_heuristics_verdict_not_the_tests() -> None:
    """drift_detected: a heuristic fired (as in serving runs); drift_test_detected: a test."""
    reference = simulate_records(2_000, seed=1, as_reference=True)
    slow = simulate_records(400, seed=27)
    slow["inference_ms"] = 6_000.0  # a heuristic fires; no statistical test looks at time
    report = compute_drift(reference, slow, FAST_CONFIG)
    assert report.status == "ok"
    assert not report.drift_test_detected
    assert report.drift_detected
    assert report.alarm  # fail_on_drift and alerts act on either verdict
    metrics = report.metrics()
    assert metrics["drift_detected"] == 1.0
    assert metrics["drift_test_detected"] == 0.0

    dark = simulate_records(400, seed=28, brightness_scale=0.7)
    report = compute_drift(reference, dark, FAST_CONFIG)
    assert report.drift_test_detected and not report.flagged_heuristics
    metrics = report.metrics()
    assert metrics["drift_detected"] == 0.0
    assert metrics["drift_test_detected"] == 1.0


def test_recent_metrics_of_a_serving_window_match_the_heuristics() -> None:
    """The function serving runs and drift runs share gives 0-100 and flags from one place."""
    confidence = np.array([0.95, 0.9, 0.5, 0.55])
    codes = np.array([3, 3, 3, 3])
    times = np.array([100.0, 120.0, 80.0, 100.0, 90.0])  # one failed request: 5 records
    heuristics = compute_heuristics(confidence, codes, times, DriftConfig())
    metrics = compute_recent_metrics(heuristics, n_records=5, n_errors=1)
    assert metrics["recent_avg_confidence"] == pytest.approx(72.5)
    assert metrics["recent_low_confidence_ratio"] == pytest.approx(0.5)
    assert metrics["recent_avg_inference_time_ms"] == pytest.approx(98.0)
    assert metrics["recent_high_low_confidence_ratio"] == 1.0
    assert metrics["recent_class_dominance"] == 1.0
    assert metrics["recent_low_mean_confidence"] == 0.0
    assert metrics["drift_detected"] == 1.0
    assert metrics["error_rate"] == pytest.approx(0.2)
    assert compute_heuristics(confidence, codes, times) == heuristics  # the brief's thresholds


def test_alert_payload_names_a_heuristic_when_no_test_fired() -> None:
    reference = simulate_records(2_000, seed=1, as_reference=True)
    slow = simulate_records(400, seed=29)
    slow["inference_ms"] = 6_000.0
    report = compute_drift(reference, slow, FAST_CONFIG)
    payload = build_alert_payload(report, model_uri="models:/m/1", run_id="r", run_url="u")
    assert payload is not None
    assert payload["feature"] == "heuristic.slow_inference"
    assert payload["statistic"] == pytest.approx(6_000.0)
    assert payload["threshold"] == {"slow_inference": 5_000.0}
    assert payload["drift_detected"] is True and payload["drift_test_detected"] is False
    assert payload["heuristics"] == ["slow_inference"]
    quiet = compute_drift(reference, simulate_records(400, seed=30), FAST_CONFIG)
    assert build_alert_payload(quiet, model_uri="m", run_id="r", run_url="u") is None


# --- label-free performance estimate ----------------------------------------------------


def test_estimate_interval_covers_true_accuracy_on_calibrated_data() -> None:
    covered_accuracy = covered_f1 = 0
    trials = 40
    for seed in range(trials):
        window = simulate_records(1_000, seed=100 + seed, as_reference=True, with_labels=True)
        estimate = estimate_performance(
            window[list(PROB_COLUMNS)].to_numpy(),
            encode(window["predicted_class"]),
            labels=encode(window["label"]),
            seed=seed,
        )
        low, high = estimate.estimated_accuracy_interval
        assert high - low < 0.07  # about +-2 sd of a 1,000-record accuracy near 0.85
        assert abs(estimate.estimated_accuracy - estimate.true_accuracy) < 0.05
        covered_accuracy += low <= estimate.true_accuracy <= high
        low, high = estimate.estimated_macro_f1_interval
        covered_f1 += low <= estimate.true_macro_f1 <= high
    # 95% intervals: 40 trials cover 38 on average; 34 or fewer has probability < 1%.
    assert covered_accuracy >= 35
    assert covered_f1 >= 35


def test_estimate_uses_window_labels_when_present(reference: pd.DataFrame) -> None:
    window = simulate_records(1_000, seed=17, with_labels=True)
    report = compute_drift(reference, window, FAST_CONFIG)
    estimate = report.estimate
    assert estimate is not None and estimate.n_labelled == 1_000
    expected = float((window["label"] == window["predicted_class"]).mean())
    assert estimate.true_accuracy == pytest.approx(expected)
    assert report.metrics()["true_accuracy"] == pytest.approx(expected)

    # Labels passed separately override the column; None marks unknown labels.
    labels = window["predicted_class"].where(np.arange(1_000) < 500, None)
    relabelled = compute_drift(reference, window, FAST_CONFIG, labels=labels)
    assert relabelled.estimate is not None
    assert relabelled.estimate.n_labelled == 500
    assert relabelled.estimate.true_accuracy == 1.0


def test_estimate_of_miscalibrated_model_is_off() -> None:
    window = simulate_records(2_000, seed=18, as_reference=True, with_labels=True)
    codes = encode(window["predicted_class"])
    shuffled = np.random.default_rng(0).permutation(encode(window["label"]))
    estimate = estimate_performance(window[list(PROB_COLUMNS)].to_numpy(), codes, labels=shuffled)
    low, high = estimate.estimated_accuracy_interval
    assert not low <= estimate.true_accuracy <= high  # labels unrelated to the probabilities


# --- outputs ----------------------------------------------------------------------------


def test_metrics_have_contract_names(reference: pd.DataFrame) -> None:
    report = compute_drift(reference, simulate_records(500, seed=19), FAST_CONFIG)
    metrics = report.metrics()
    for name in (
        "drift_detected",
        "drift_test_detected",
        "recent_avg_confidence",
        "recent_low_confidence_ratio",
        "recent_avg_inference_time_ms",
        "drift_share",
        "estimated_accuracy",
        "estimated_macro_f1",
        "error_rate",
        "error_count",
        "n_window",
        "drift.image.img_brightness.p",
        "drift.output.confidence.effect",
        "drift.prediction.predicted_class.flag",
        "drift.embedding.emb.p",
        "heuristic.class_dominance",
    ):
        assert name in metrics, name
    assert all(isinstance(value, float) and math.isfinite(value) for value in metrics.values())


def test_json_has_schema_version_and_no_nan(reference: pd.DataFrame, tmp_path: Path) -> None:
    window = simulate_records(300, seed=20).drop(columns=["inference_ms"])
    window.loc[:, "status"] = "error"  # no usable record: NaN averages, no estimate
    report = compute_drift(reference, window, FAST_CONFIG)
    assert math.isnan(report.recent_avg_confidence)

    path = report.write_json(tmp_path)
    assert path == tmp_path / "drift_report.json"
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text

    def reject(constant: str) -> None:
        raise AssertionError(f"non-JSON constant {constant}")

    body = json.loads(text, parse_constant=reject)
    assert body["schema_version"] == SCHEMA_VERSION == 2
    assert body["status"] == "insufficient_data"
    assert body["recent_avg_confidence"] is None
    assert body["estimate"] is None
    assert body["n_errors"] == 300

    drifted = compute_drift(reference, simulate_records(500, seed=21, brightness_scale=1.3))
    body = json.loads(json.dumps(drifted.to_dict(), allow_nan=False))
    assert "image.img_brightness" in body["flagged_features"]
    assert body["drift_test_detected"] is True
    assert body["drift_detected"] is False  # no heuristic fired
    assert 75.0 < body["recent_avg_confidence"] <= 100.0
    assert body["config"]["alpha"] == 0.05


def test_html_report_is_written_with_plots(reference: pd.DataFrame, tmp_path: Path) -> None:
    window = simulate_records(500, seed=22, brightness_scale=0.7, error_rate=0.05)
    report = compute_drift(reference, window, FAST_CONFIG)
    path = write_html_report(report, reference, window, tmp_path)
    assert path == tmp_path / "drift_report.html"
    text = path.read_text()
    assert text.count("<img") >= 4  # classes, output, image, embedding
    assert "data:image/png;base64," in text
    assert "img_brightness" in text and "low_mean_confidence" in text
    assert "class='flag'" in text
    assert "Status: drift" in text


def test_html_report_escapes_text(reference: pd.DataFrame, tmp_path: Path) -> None:
    window = simulate_records(300, seed=31)
    report = compute_drift(reference, window, FAST_CONFIG)
    hostile = dataclasses.replace(report, notes=("<script>alert('x')</script>",))
    text = write_html_report(hostile, reference, window, tmp_path / "r.html").read_text()
    assert "<script>" not in text
    assert "&lt;script&gt;" in text


# --- window selection and input checks --------------------------------------------------


def test_select_window_takes_last_records_by_timestamp() -> None:
    records = simulate_records(1_000, seed=23)
    shuffled = records.sample(frac=1.0, random_state=0)
    window = select_window(shuffled, window=100)
    assert len(window) == 100
    assert window["timestamp"].is_monotonic_increasing
    assert window["timestamp"].min() == records["timestamp"].iloc[-100]

    since = float(records["timestamp"].iloc[900])
    recent = select_window(shuffled, since=since)
    assert len(recent) == 100 and recent["timestamp"].min() == since
    assert len(select_window(shuffled, window=10, since=since)) == 10
    assert select_window(records, window=None) is records
    assert len(select_window(records, window=0)) == 1_000


def test_select_window_rejects_bad_arguments() -> None:
    records = simulate_records(50, seed=24)
    with pytest.raises(ValueError, match="window"):
        select_window(records, window=-1)
    with pytest.raises(ValueError, match="timestamp"):
        select_window(records.drop(columns=["timestamp"]), since=0.0)


def test_bad_inputs_name_the_problem(reference: pd.DataFrame) -> None:
    window = simulate_records(300, seed=25)
    with pytest.raises(ValueError, match="prob_glaucoma"):
        compute_drift(reference, window.drop(columns=["prob_glaucoma"]))
    unknown = window.assign(predicted_class="retina_tumour")
    with pytest.raises(ValueError, match="retina_tumour"):
        compute_drift(reference, unknown)
    percent = window.assign(confidence=window["confidence"] * 100)
    with pytest.raises(ValueError, match="0-1"):
        compute_drift(reference, percent)
    with pytest.raises(ValueError, match="alpha"):
        DriftConfig(alpha=1.5)
