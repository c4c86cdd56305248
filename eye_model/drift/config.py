"""Settings of the drift job (:class:`DriftConfig`) and the names of the tested features."""

from __future__ import annotations

from dataclasses import dataclass

from eye_model.config import EMBEDDING_DIMS, PROB_COLUMNS
from eye_model.drift.heuristics import (
    CLASS_DOMINANCE,
    LOW_CONFIDENCE_CUTOFF,
    LOW_CONFIDENCE_MEAN,
    LOW_CONFIDENCE_RATIO,
    SLOW_INFERENCE_MS,
)
from eye_model.preprocess import IMAGE_STAT_NAMES

#: Families of drift tests, in report order.
FAMILIES: tuple[str, ...] = ("prediction", "output", "image", "embedding")

#: Families whose drift means the *inputs* moved (the accuracy estimate is then unreliable).
INPUT_FAMILIES: tuple[str, ...] = ("image", "embedding")

OUTPUT_FEATURES: tuple[str, ...] = ("confidence", "entropy", *PROB_COLUMNS)
#: The image statistics the serving side computes (one definition, in preprocess).
IMAGE_FEATURES: tuple[str, ...] = IMAGE_STAT_NAMES
EMBEDDING_COLUMNS: tuple[str, ...] = tuple(f"emb_{index}" for index in range(EMBEDDING_DIMS))
#: Scores of the penultimate features tested one by one in the embedding family.
OOD_FEATURES: tuple[str, ...] = ("ood_score",)

#: Name of the single feature of the prediction and embedding families.
PREDICTION_FEATURE = "predicted_class"
EMBEDDING_FEATURE = "emb"


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds and budgets of the drift job.

    Attributes:
        alpha: family-wise significance level (0-1) after Holm and Bonferroni.
        effect_floor: smallest effect counted as drift (see :mod:`eye_model.drift.stats`).
        effect_margin_z: a flag also needs ``effect_lower`` (the effect minus this many
            noise standard deviations of both samples) at or above the floor; 0 gives the
            plain rule "corrected p < alpha and effect >= floor".
        min_records: fewest usable (non-error) window records to run the tests.
        min_reference_records: fewest reference rows to run the tests.
        families: families to test, a subset of ``FAMILIES``.
        output_features: features of the ``output`` family.
        image_features: features of the ``image`` family.
        log_features: features tested as ``log1p(max(x, 0))`` (heavy-tailed).
        embedding_columns: columns forming the embedding vector.
        ood_features: scalar features of the ``embedding`` family (``ood_score``: distance
            from the training data), each tested like the output features.
        n_permutations: permutations of the MMD test (p-value resolution 1/(n+1)).
        mmd_max_samples: most rows per side used by the MMD test (seeded subsample).
        n_estimate_draws: simulated label draws behind the accuracy intervals.
        interval_level: coverage of the accuracy intervals (0-1).
        seed: seed of every random choice (subsampling, permutations, draws).
        low_confidence_mean: heuristic threshold on the mean confidence (0-1).
        low_confidence_cutoff: a prediction below this confidence (0-1) is "low".
        low_confidence_ratio: heuristic threshold on the share of low predictions (0-1).
        slow_inference_ms: heuristic threshold on the mean inference time (ms).
        class_dominance: heuristic threshold on the share of the commonest class (0-1).
    """

    alpha: float = 0.05
    effect_floor: float = 0.1
    effect_margin_z: float = 2.0
    min_records: int = 200
    min_reference_records: int = 50
    families: tuple[str, ...] = FAMILIES
    output_features: tuple[str, ...] = OUTPUT_FEATURES
    image_features: tuple[str, ...] = IMAGE_FEATURES
    log_features: tuple[str, ...] = ("img_sharpness",)
    embedding_columns: tuple[str, ...] = EMBEDDING_COLUMNS
    ood_features: tuple[str, ...] = OOD_FEATURES
    n_permutations: int = 500
    mmd_max_samples: int = 1000
    n_estimate_draws: int = 2000
    interval_level: float = 0.95
    seed: int = 0
    low_confidence_mean: float = LOW_CONFIDENCE_MEAN
    low_confidence_cutoff: float = LOW_CONFIDENCE_CUTOFF
    low_confidence_ratio: float = LOW_CONFIDENCE_RATIO
    slow_inference_ms: float = SLOW_INFERENCE_MS
    class_dominance: float = CLASS_DOMINANCE

    def scalar_features(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """(family, features) of the features tested one by one, in report order."""
        return (
            ("output", self.output_features),
            ("image", self.image_features),
            ("embedding", self.ood_features),
        )

    def __post_init__(self) -> None:
        """Reject settings that would make the tests meaningless, naming the setting."""
        for name in ("alpha", "interval_level"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"DriftConfig.{name}={value!r} must be between 0 and 1")
        for name in ("effect_floor", "effect_margin_z"):
            if getattr(self, name) < 0:
                raise ValueError(f"DriftConfig.{name}={getattr(self, name)!r} must be >= 0")
        for name in ("min_records", "min_reference_records", "n_permutations", "n_estimate_draws"):
            if getattr(self, name) < 1:
                raise ValueError(f"DriftConfig.{name}={getattr(self, name)!r} must be >= 1")
        if self.mmd_max_samples < 10:
            raise ValueError(f"DriftConfig.mmd_max_samples={self.mmd_max_samples!r} must be >= 10")
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"DriftConfig.families has unknown {unknown}; choose from {FAMILIES}")
