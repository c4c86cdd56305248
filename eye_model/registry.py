"""Model Registry: register versions, promote them through stages, resolve what to serve."""

from __future__ import annotations

import logging

import mlflow
from mlflow.entities.model_registry import ModelVersion

logger = logging.getLogger(__name__)


def register_model(model_uri: str, model_name: str) -> ModelVersion:
    """Register ``model_uri`` as a new version of ``model_name``.

    Args:
        model_uri: the logged model (``runs:/<run_id>/model``).
        model_name: the registered model's name.

    Returns:
        The new model version.
    """
    return mlflow.register_model(model_uri, model_name)
