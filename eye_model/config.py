"""Constants and settings of eye-model.

Pure constants and functions only: nothing here talks to MLflow, creates
folders or reads the environment at import time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

#: The four classes, always in this order (the folder names of the public
#: "eye diseases classification" fundus dataset).
CLASS_NAMES: tuple[str, ...] = ("cataract", "diabetic_retinopathy", "glaucoma", "normal")

#: Output column holding the probability of each class (0-1).
PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{name}" for name in CLASS_NAMES)

#: Length of the reduced image embedding kept for drift monitoring (``emb_0`` …).
EMBEDDING_DIMS = 8

#: Side of the square network input, in pixels.
DEFAULT_IMAGE_SIZE = 224

#: Largest image (width x height) decoded, checked from the header first.
DEFAULT_MAX_PIXELS = 40_000_000

#: Largest encoded image accepted, in bytes.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024

#: Ports of the brief: tracking server and UI, and the model's REST API.
TRACKING_PORT = 5000
SERVING_PORT = 8080

DEFAULT_TRACKING_URI = f"http://localhost:{TRACKING_PORT}"
DEFAULT_EXPERIMENT_NAME = "eye-disease-classifier"
DEFAULT_MODEL_NAME = "eye-disease-model"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


@contextlib.contextmanager
def temporary_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of a ``with`` block, then put back the old."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def parse_bool(value: str | bool | None, *, name: str = "value", default: bool = False) -> bool:
    """Parse a boolean setting the way users write them in shells.

    Args:
        value: "true"/"false", "1"/"0", "yes"/"no", "on"/"off" (any case), a bool or None.
        name: the setting's name, used in the error message.
        default: returned when ``value`` is None.

    Returns:
        The boolean value.

    Raises:
        ValueError: for anything else, naming the setting and the accepted values.
    """
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name}={value!r} is not a boolean; use true or false")


def parse_positive_int(value: str | int | None, *, name: str, default: int) -> int:
    """Parse a positive integer setting, naming it in the error."""
    if value is None or str(value).strip() == "":
        return default
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a whole number") from None
    if number <= 0:
        raise ValueError(f"{name}={value!r} must be above 0")
    return number


@dataclass(frozen=True)
class Settings:
    """Settings read from environment variables (names and defaults of the brief)."""

    tracking_uri: str = DEFAULT_TRACKING_URI
    experiment_name: str = DEFAULT_EXPERIMENT_NAME
    model_name: str = DEFAULT_MODEL_NAME
    enable_tracking: bool = True
    enable_registry: bool = False
    model_stage: str = "Production"
    model_version: str = "latest"
    model_alias: str = ""
    local_model: str = ""
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the settings from ``environ`` (default: ``os.environ``).

    Args:
        environ: a mapping of environment variables.

    Returns:
        The settings, with the brief's defaults for anything unset.
    """
    env = os.environ if environ is None else environ
    return Settings(
        tracking_uri=env.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI,
        experiment_name=env.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT_NAME,
        model_name=env.get("MLFLOW_MODEL_NAME") or DEFAULT_MODEL_NAME,
        enable_tracking=parse_bool(
            env.get("ENABLE_MLFLOW_TRACKING"), name="ENABLE_MLFLOW_TRACKING", default=True
        ),
        enable_registry=parse_bool(
            env.get("ENABLE_MODEL_REGISTRY"), name="ENABLE_MODEL_REGISTRY", default=False
        ),
        model_stage=env.get("MODEL_STAGE") or "Production",
        model_version=env.get("MODEL_VERSION") or "latest",
        model_alias=env.get("MODEL_ALIAS") or "",
        local_model=env.get("EYE_MODEL_LOCAL_MODEL") or "",
        max_pixels=parse_positive_int(
            env.get("EYE_MODEL_MAX_PIXELS"), name="EYE_MODEL_MAX_PIXELS", default=DEFAULT_MAX_PIXELS
        ),
        max_bytes=parse_positive_int(
            env.get("EYE_MODEL_MAX_BYTES"), name="EYE_MODEL_MAX_BYTES", default=DEFAULT_MAX_BYTES
        ),
    )
