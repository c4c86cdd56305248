"""Explanations point at the signs: on generated photographs whose lesions and optic disc the
generator placed, most of the heatmap's mass lies on the sign of the class."""

from __future__ import annotations

import pytest

from eye_model.explain import SIGN_MIN_SHARE, sign_coverage
from eye_model.inference import ModelConfig, NetworkRunner

pytestmark = pytest.mark.slow

PER_CLASS = 40


def test_heatmaps_lie_on_the_signs_of_each_disease_class(trained_model) -> None:
    import keras

    artifacts = trained_model.model_dir / "artifacts"
    config = ModelConfig.from_json((artifacts / "config.json").read_text())
    network = keras.saving.load_model(artifacts / "network.keras", compile=False)
    figures = sign_coverage(NetworkRunner(network, config), PER_CLASS)
    report = "\n".join(f"{label}: {figure}" for label, figure in figures.items())
    print(report)
    # A served heatmap explains the predicted class: the brief's bar (>= 50 % of the mass on
    # the sign in >= 80 % of images) is checked on the images the model calls by their class.
    # This 96 px test model misses many generated DR images (recall 0.55-0.6), whose maps
    # explain another class.
    for figure in figures.values():
        assert figure.right >= PER_CLASS // 3, report
        assert figure.on_sign >= SIGN_MIN_SHARE, report
    # The sign of a cataract is the whole field (two thirds of the picture): a map spread over
    # the field holds it. The lesions and the disc are small: their maps must gather there.
    assert figures["diabetic_retinopathy"].enrichment >= 1.3, report
    assert figures["glaucoma"].enrichment >= 3.0, report
