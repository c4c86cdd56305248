"""The output frame of scored rows, built a column at a time, equals the row-by-row one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from eye_model.config import CLASS_NAMES
from eye_model.scored import ScoredImage, _frame_of_records, build_output_frame


def _scored_rows(ood: list[float | None]) -> list[ScoredImage]:
    rng = np.random.default_rng(0)
    rows = [
        ScoredImage(
            index=i,
            probabilities=rng.dirichlet(np.ones(len(CLASS_NAMES))),
            fundus_check="pass",
            ood_score=score,
        )
        for i, score in enumerate(ood)
    ]
    rows[1].probabilities = np.array([0.1, 0.4, 0.4, 0.1])  # a tie: the first class wins
    rows[2].warnings += ["unlike the training data", "may not be a fundus photograph"]
    return rows


@pytest.mark.parametrize(
    "ood", [[0.2, 1.4, 0.7, 0.1], [None, None, None, None], [0.3, None, 1.2, 0.5]]
)
def test_the_frame_of_scored_rows_equals_the_one_built_row_by_row(ood: list[float | None]) -> None:
    rows = _scored_rows(ood)
    fast = build_output_frame(rows, list(CLASS_NAMES))
    pd.testing.assert_frame_equal(fast, _frame_of_records(rows, list(CLASS_NAMES)))
    assert fast.loc[1, "predicted_class"] == CLASS_NAMES[1]
    assert fast.loc[2, "warning"] == "unlike the training data; may not be a fundus photograph"
    assert fast["error"].isna().all() and fast["confidence"].dtype == np.float64


def test_a_frame_with_a_failed_row_keeps_nulls_not_nans() -> None:
    rows = _scored_rows([0.2, 0.3, 0.4, 0.5])
    rows[3].probabilities = None
    rows[3].error = "not an image"
    frame = build_output_frame(rows, list(CLASS_NAMES))
    assert frame.loc[3, "error"] == "not an image"
    assert frame.loc[3, "confidence"] is None and frame["confidence"].dtype == object
