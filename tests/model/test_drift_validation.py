"""A smaller run of the drift validation harness on the session's trained model: every
planted drift is found by the family expected, and resampled held-out data stays quiet."""

from __future__ import annotations

import pytest

from eye_model.drift.validation import SCENARIOS, run_validation
from tests.conftest import TrainedModel

pytestmark = pytest.mark.slow


def test_planted_drift_is_found_and_no_drift_stays_quiet(trained_model: TrainedModel) -> None:
    result = run_validation(
        trained_model.model_dir,
        image_size=256,
        reference_per_class=60,
        pool_per_class=60,
        window=200,
        trials=3,
        no_drift_sizes=(200,),
        no_drift_trials=12,
        seed=77,
    )
    assert set(result.detection) == {s.name for s in SCENARIOS}
    for name, rate in result.detection.items():
        assert rate == 1.0, f"{name}: found in {rate:.0%} of windows"
    # At most one false alarm in twelve no-drift windows.
    assert result.false_alarms[200] <= 1 / 12
