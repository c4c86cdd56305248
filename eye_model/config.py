"""Constants of eye-model (class names, defaults, ports).

Pure constants and functions only: nothing here talks to MLflow, creates
folders or reads the environment. Environment variables are read by
:mod:`eye_model.settings`.
"""

from __future__ import annotations

#: The four classes, always in this order (the folder names of the public
#: "eye diseases classification" fundus dataset).
CLASS_NAMES: tuple[str, ...] = ("cataract", "diabetic_retinopathy", "glaucoma", "normal")

#: Output column holding the probability of each class (0-1).
PROB_COLUMNS: tuple[str, ...] = tuple(f"prob_{name}" for name in CLASS_NAMES)

#: Length of the reduced image embedding kept for drift monitoring (``emb_0`` …).
EMBEDDING_DIMS = 8

#: The values of ``EYE_MODEL_FUNDUS_CHECK``: refuse, or score with a warning, an image that is
#: not a gradable colour fundus photograph; or do not check.
FUNDUS_CHECK_MODES: tuple[str, ...] = ("refuse", "warn", "off")
#: What can run the network of a loaded model (``EYE_MODEL_NETWORK_RUNTIME``).
NETWORK_RUNTIMES: tuple[str, ...] = ("tflite", "tensorflow")

#: Side of the square network input, in pixels.
DEFAULT_IMAGE_SIZE = 224

#: Largest image (width x height) decoded, checked from the header first.
DEFAULT_MAX_PIXELS = 40_000_000

#: Largest encoded image accepted, in bytes.
DEFAULT_MAX_BYTES = 50 * 1024 * 1024

#: Ports of the brief: tracking server and UI, and the model's REST API.
TRACKING_PORT = 5000
SERVING_PORT = 8080
#: Prometheus `/metrics` of the model server (EYE_MODEL_METRICS_PORT), as the stack runs it.
METRICS_PORT = 8081

DEFAULT_TRACKING_URI = f"http://localhost:{TRACKING_PORT}"
DEFAULT_EXPERIMENT_NAME = "eye-disease-classifier"
DEFAULT_MODEL_NAME = "eye-disease-model"

#: MLflow environment managers a model can be served or batch-scored with.
ENV_MANAGERS: tuple[str, ...] = ("local", "virtualenv", "uv", "conda")

#: Artifact folder of a serving run that holds its inference-log parts.
INFERENCE_LOG_ARTIFACT_DIR = "inference_log"
#: Artifact folder of the shadow model's records in a serving run (``eye-model serve --shadow``).
SHADOW_LOG_ARTIFACT_DIR = "shadow_log"

#: The registry aliases eye-model keeps in step with the stages (Production, Staging).
ALIASES: tuple[str, ...] = ("champion", "challenger")
