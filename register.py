"""Register a logged eye-model as a new version in the MLflow Model Registry.

    python register.py --model-uri runs:/<run_id>/model [--model-name eye-disease-model]

A thin script over ``eye_model.registry`` (the same as ``eye-model register`` and
``mlflow run . -e register``).
"""

from eye_model.cli import register

if __name__ == "__main__":
    register()
