"""Tests of eye_model.settings: the one place that reads environment variables."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from eye_model.settings import (
    ENVIRONMENT,
    Settings,
    SettingsError,
    configuration_table,
    env_name,
    load_settings,
    secret_variables,
    settings_environ,
)

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_match_the_brief() -> None:
    settings = load_settings({})
    assert settings.tracking_uri == "http://localhost:5000"
    assert settings.experiment_name == "eye-disease-classifier"
    assert settings.model_name == "eye-disease-model"
    assert settings.enable_tracking is True
    assert settings.enable_registry is False
    assert settings.model_stage == "Production"
    assert settings.model_version == "latest"
    assert settings.max_batch == 32
    assert settings.max_wait_ms == 5.0
    assert settings.home == Path(".eye-model").resolve()
    assert settings.telemetry_dir == settings.home / "telemetry"


def test_every_settings_field_has_exactly_one_variable() -> None:
    # Variables other tools own (MLflow, TensorFlow's TF_CONFIG): read, not eye-model's table.
    markers = {"in_scoring_server", "mlflow_run_id", "mlflow_experiment_id", "tf_config"}
    names = {f.name for f in dataclasses.fields(Settings)} - markers
    assert names == {var.field for var in ENVIRONMENT}
    assert len({var.name for var in ENVIRONMENT}) == len(ENVIRONMENT)


def test_unset_variables_give_the_dataclass_defaults() -> None:
    assert load_settings({}) == Settings()


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("EYE_MODEL_MAX_BATCH", "abc", "EYE_MODEL_MAX_BATCH='abc' is not a whole number"),
        ("EYE_MODEL_MAX_BATCH", "0", "EYE_MODEL_MAX_BATCH='0' must be above 0"),
        ("EYE_MODEL_BATCH_SIZE", "0", "EYE_MODEL_BATCH_SIZE='0' must be above 0"),
        ("EYE_MODEL_MAX_WAIT_MS", "-1", "EYE_MODEL_MAX_WAIT_MS='-1' must be at least 0"),
        ("EYE_MODEL_SHIP_INTERVAL", "inf", "EYE_MODEL_SHIP_INTERVAL='inf' must be above 0"),
        ("EYE_MODEL_DECODE_THREADS", "-1", "EYE_MODEL_DECODE_THREADS='-1' must be at least 0"),
        ("EYE_MODEL_SHIP_INTERVAL", "soon", "EYE_MODEL_SHIP_INTERVAL='soon' is not a number"),
        ("ENABLE_MLFLOW_TRACKING", "maybe", "ENABLE_MLFLOW_TRACKING='maybe' is not a boolean"),
        ("EYE_MODEL_TELEMETRY", "sometimes", "EYE_MODEL_TELEMETRY='sometimes' is not one of"),
        ("MODEL_VERSION", "1.5", "MODEL_VERSION='1.5' is not a version"),
        ("MODEL_STAGE", "Prod", "MODEL_STAGE='Prod' is not one of"),
        ("MODEL_ALIAS", "champoin", "MODEL_ALIAS='champoin' is not one of"),
        ("EYE_MODEL_NETWORK_RUNTIME", "tflit", "EYE_MODEL_NETWORK_RUNTIME='tflit' is not one of"),
    ],
)
def test_a_bad_value_names_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings({name: value})
    assert str(info.value).startswith(expected)


def test_values_are_parsed() -> None:
    settings = load_settings(
        {
            "EYE_MODEL_BATCH_SIZE": " 8 ",
            "ENABLE_MODEL_REGISTRY": "YES",
            "EYE_MODEL_TELEMETRY": "Always",
            "MODEL_STAGE": "staging",
            "MODEL_VERSION": "07",
            "EYE_MODEL_HOME": "/tmp/eye-home",
        }
    )
    assert settings.max_batch == 8  # the old name of EYE_MODEL_MAX_BATCH
    assert settings.enable_registry is True
    assert settings.telemetry_mode == "always"
    assert settings.model_stage == "Staging"
    assert settings.model_version == "7"
    assert settings.telemetry_dir == Path("/tmp/eye-home/telemetry")


def test_the_new_batch_name_wins_over_the_old_one_and_zero_wait_is_allowed() -> None:
    settings = load_settings(
        {"EYE_MODEL_MAX_BATCH": "16", "EYE_MODEL_BATCH_SIZE": "8", "EYE_MODEL_MAX_WAIT_MS": "0"}
    )
    assert (settings.max_batch, settings.max_wait_ms) == (16, 0.0)
    assert load_settings({"EYE_MODEL_MAX_WAIT_MS": "0.5"}).max_wait_ms == 0.5


def test_secrets_stay_out_of_repr() -> None:
    settings = load_settings(
        {"MLFLOW_TRACKING_PASSWORD": "hunter2-secret", "EYE_MODEL_ADMIN_PASSWORD": "pw-1234567"}
    )
    assert settings.tracking_password == "hunter2-secret"
    assert "hunter2" not in repr(settings)
    assert "pw-1234567" not in repr(settings)
    assert "MLFLOW_TRACKING_PASSWORD" in secret_variables()


def test_settings_environ_round_trips() -> None:
    env = settings_environ(telemetry_mode="never", log_image_ids=True, served_version="3")
    assert env == {
        "EYE_MODEL_TELEMETRY": "never",
        "EYE_MODEL_LOG_IMAGE_IDS": "true",
        "EYE_MODEL_SERVED_VERSION": "3",
    }
    settings = load_settings(env)
    assert (settings.telemetry_mode, settings.log_image_ids, settings.served_version) == (
        "never",
        True,
        "3",
    )
    assert env_name("max_pixels") == "EYE_MODEL_MAX_PIXELS"
    with pytest.raises(KeyError):
        settings_environ(no_such_setting=1)


def test_readme_configuration_table_is_generated_from_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert configuration_table() in readme
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", readme, flags=re.MULTILINE))
    assert documented == {var.name for var in ENVIRONMENT}


def test_no_module_reads_the_environment_but_settings() -> None:
    """Only settings.py reads eye-model's variables (other modules may pass os.environ on)."""
    offenders = []
    for path in sorted((ROOT / "eye_model").rglob("*.py")):
        if path.name == "settings.py":
            continue
        text = path.read_text()
        for pattern in (r"os\.environ\.get\(", r"os\.getenv\(", r"os\.environ\[[\"']"):
            for match in re.finditer(pattern, text):
                line = text[: match.start()].count("\n") + 1
                snippet = text[match.start() : match.start() + 60]
                if "PYSPARK_PYTHON" in snippet or "MLFLOW_HTTP" in snippet:
                    continue  # Spark's and MLflow's own variables, set for a child
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, offenders
