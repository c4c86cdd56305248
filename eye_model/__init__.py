"""eye-model: an MLflow-native classifier of retinal fundus photographs."""

from eye_model.config import CLASS_NAMES

__all__ = ["CLASS_NAMES", "__version__"]
__version__ = "0.1.0"
