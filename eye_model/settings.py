"""The one place that reads eye-model's environment variables.

Every variable the project knows (the brief's ``MLFLOW_*``, ``ENABLE_*`` and ``MODEL_*``, and
eye-model's own ``EYE_MODEL_*``) is declared once in :data:`ENVIRONMENT` with its default, its
parser and its meaning. :func:`load_settings` reads them all into a frozen :class:`Settings`;
other modules receive values from it and never read ``os.environ`` themselves. The README's
configuration table is checked against :data:`ENVIRONMENT` (``tests/code/test_settings.py``).

Nothing here talks to MLflow, creates folders or reads the environment at import time.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eye_model.config import (
    ALIASES,
    DEFAULT_EXPERIMENT_NAME,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL_NAME,
    DEFAULT_TRACKING_URI,
    FUNDUS_CHECK_MODES,
    NETWORK_RUNTIMES,
)
from eye_model.setting_values import (
    SettingsError,
    parse_choice,
    parse_non_negative_int,
    parse_positive_float,
)
from eye_model.setting_values import bool_parser as _bool
from eye_model.setting_values import choice_parser as _choice
from eye_model.setting_values import int_parser as _int
from eye_model.setting_values import seconds_parser as _seconds
from eye_model.setting_values import text_parser as _text

#: Default of ``EYE_MODEL_HOME``: the local stack's state, relative to the working folder.
DEFAULT_HOME = ".eye-model"
#: Default most images per network call, across concurrent requests (serving) or within
#: one call (in-process scoring). Batch 32 runs 2-7 % faster per image than batch 8.
DEFAULT_MAX_BATCH = 32
#: Default longest wait (ms) of a part-filled batch for more requests. Measured with 8
#: clients posting one 512 px image each (scripts/benchmark_concurrency.py --wait-sweep,
#: servers interleaved, 2-core machine under load): 0 ms gave batches of 3.4 images and
#: 11.3 ms CPU per image, 2 ms 4.1 and 10.4, 5 ms 4.4 and 10.2 (the most images/s), 10 ms
#: 4.5 and 10.2. A lone client never waits.
DEFAULT_MAX_WAIT_MS = 5.0
#: MLflow's scoring server answers HTTP 504 after this many seconds (its own default).
DEFAULT_SCORING_TIMEOUT = 60
#: Decoded pixels one REST request may use: 10 images at the 40 MP limit, about 10 s of
#: decoding on one core, well inside half of the scoring server's 60 s timeout.
DEFAULT_MAX_REQUEST_PIXELS = 400_000_000
#: Decoded bytes that large images decoding at once in one model server may hold, in MB.
DEFAULT_DECODE_MEMORY_MB = 1024
#: The values of ``EYE_MODEL_TELEMETRY``.
TELEMETRY_MODES = ("serving", "always", "never")
#: The values of ``EYE_MODEL_STACK_PROFILE``.
STACK_PROFILES = ("embedded", "production")
#: The values of ``EYE_MODEL_DEFAULT_PERMISSION`` (MLflow's basic-auth permissions).
PERMISSIONS = ("READ", "USE", "EDIT", "MANAGE", "NO_PERMISSIONS")


@dataclass(frozen=True)
class EnvVar:
    """One environment variable: its name, the :class:`Settings` field it fills, its meaning.

    Attributes:
        name: the variable's name.
        field: the :class:`Settings` attribute.
        default: the default shown in the README (the parser applies it).
        meaning: one line for the README's configuration table.
        parse: turns the raw text (or None when unset) into the field's value.
        secret: never shown in reprs or logs.
    """

    name: str
    field: str
    default: str
    meaning: str
    parse: Callable[[str | None], Any]
    secret: bool = False


def _version(value: str | None) -> str:
    text = (value or "").strip() or "latest"
    if text.lower() == "latest":
        return "latest"
    if not text.isdigit() or int(text) <= 0:
        raise SettingsError(
            f"MODEL_VERSION={value!r} is not a version; set it to a positive whole number "
            "such as 3, or to latest"
        )
    return str(int(text))


def _fraction(name: str, value: str | None, default: float) -> float:
    number = _seconds(name, default)(value) if (value or "").strip() not in ("0", "0.0") else 0.0
    if number > 1.0:
        raise SettingsError(f"{name}={value!r} must be a share between 0 and 1")
    return number


def _stage(value: str | None) -> str:
    return parse_choice(
        value,
        name="MODEL_STAGE",
        default="Production",
        choices=("None", "Staging", "Production", "Archived"),
    )


#: Every environment variable of eye-model, in the order of the README's table.
ENVIRONMENT: tuple[EnvVar, ...] = (
    EnvVar(
        "MLFLOW_TRACKING_URI",
        "tracking_uri",
        DEFAULT_TRACKING_URI,
        "tracking server",
        _text(DEFAULT_TRACKING_URI),
    ),
    EnvVar(
        "MLFLOW_EXPERIMENT_NAME",
        "experiment_name",
        DEFAULT_EXPERIMENT_NAME,
        "experiment of every run eye-model creates",
        _text(DEFAULT_EXPERIMENT_NAME),
    ),
    EnvVar(
        "MLFLOW_MODEL_NAME",
        "model_name",
        DEFAULT_MODEL_NAME,
        "registered model name",
        _text(DEFAULT_MODEL_NAME),
    ),
    EnvVar(
        "ENABLE_MLFLOW_TRACKING",
        "enable_tracking",
        "true",
        "track predictions",
        _bool("ENABLE_MLFLOW_TRACKING", True),
    ),
    EnvVar(
        "ENABLE_MODEL_REGISTRY",
        "enable_registry",
        "false",
        "serve from the registry",
        _bool("ENABLE_MODEL_REGISTRY", False),
    ),
    EnvVar("MODEL_STAGE", "model_stage", "Production", "stage served from the registry", _stage),
    EnvVar(
        "MODEL_VERSION", "model_version", "latest", "version served from the registry", _version
    ),
    EnvVar(
        "MODEL_ALIAS",
        "model_alias",
        "",
        "alias served from the registry (`champion` or `challenger`; overrides stage and version)",
        lambda value: parse_choice(value, name="MODEL_ALIAS", default="", choices=ALIASES),
    ),
    EnvVar(
        "EYE_MODEL_LOCAL_MODEL",
        "local_model",
        "",
        "local model folder served when the registry fails",
        _text(),
    ),
    EnvVar(
        "EYE_MODEL_MAX_PIXELS",
        "max_pixels",
        str(DEFAULT_MAX_PIXELS),
        "largest image accepted (width x height)",
        _int("EYE_MODEL_MAX_PIXELS", DEFAULT_MAX_PIXELS),
    ),
    EnvVar(
        "EYE_MODEL_MAX_BYTES",
        "max_bytes",
        str(DEFAULT_MAX_BYTES),
        "largest encoded image accepted",
        _int("EYE_MODEL_MAX_BYTES", DEFAULT_MAX_BYTES),
    ),
    EnvVar(
        "EYE_MODEL_MAX_REQUEST_PIXELS",
        "max_request_pixels",
        str(DEFAULT_MAX_REQUEST_PIXELS),
        "decoded pixels one REST request may use; rows past it get an error",
        _int("EYE_MODEL_MAX_REQUEST_PIXELS", DEFAULT_MAX_REQUEST_PIXELS),
    ),
    EnvVar(
        "EYE_MODEL_DECODE_MEMORY_MB",
        "decode_memory_mb",
        str(DEFAULT_DECODE_MEMORY_MB),
        "decoded megabytes large images may hold at once in a model server (they wait)",
        _int("EYE_MODEL_DECODE_MEMORY_MB", DEFAULT_DECODE_MEMORY_MB),
    ),
    EnvVar(
        "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT",
        "scoring_timeout_s",
        str(DEFAULT_SCORING_TIMEOUT),
        "MLflow's model server answers 504 after this many seconds; "
        "no decode starts after half of it",
        _int("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", DEFAULT_SCORING_TIMEOUT),
    ),
    EnvVar(
        "EYE_MODEL_MAX_BATCH",
        "max_batch",
        str(DEFAULT_MAX_BATCH),
        "most images per network call, gathered across concurrent requests "
        "(`EYE_MODEL_BATCH_SIZE`, its old name, is still read)",
        _int("EYE_MODEL_MAX_BATCH", DEFAULT_MAX_BATCH),
    ),
    EnvVar(
        "EYE_MODEL_MAX_WAIT_MS",
        "max_wait_ms",
        f"{DEFAULT_MAX_WAIT_MS:g}",
        "longest a part-filled network batch waits for requests still decoding (0: never)",
        lambda value: parse_positive_float(
            value, name="EYE_MODEL_MAX_WAIT_MS", default=DEFAULT_MAX_WAIT_MS, allow_zero=True
        ),
    ),
    EnvVar(
        "EYE_MODEL_FUNDUS_CHECK",
        "fundus_check",
        "refuse",
        "an image that is not a gradable colour fundus photograph: `refuse`, `warn` or `off`",
        _choice("EYE_MODEL_FUNDUS_CHECK", "refuse", FUNDUS_CHECK_MODES),
    ),
    EnvVar(
        "EYE_MODEL_DECODE_THREADS",
        "decode_threads",
        "CPUs (≤ 8)",
        "decoding threads when serving",
        lambda value: (
            parse_non_negative_int(value, name="EYE_MODEL_DECODE_THREADS", default=0)
            or min(8, os.cpu_count() or 2)
        ),
    ),
    EnvVar(
        "EYE_MODEL_NETWORK_THREADS",
        "network_threads",
        "(all CPUs; in a model server with `--workers` N above 1, CPUs / N)",
        "the network's threads within one operation (TensorFlow) or call (TensorFlow Lite); "
        "with `--workers` above 1, idle TensorFlow threads sleep instead of spinning for work",
        lambda value: parse_non_negative_int(value, name="EYE_MODEL_NETWORK_THREADS", default=0),
    ),
    EnvVar(
        "EYE_MODEL_NETWORK_RUNTIME",
        "network_runtime",
        "tflite",
        "what runs the network: `tflite` (TensorFlow Lite, about half the CPU; checked against "
        "TensorFlow at load, which serves instead if they differ) or `tensorflow`",
        _choice("EYE_MODEL_NETWORK_RUNTIME", "tflite", NETWORK_RUNTIMES),
    ),
    EnvVar(
        "EYE_MODEL_HOME",
        "home",
        f"./{DEFAULT_HOME}",
        "state of the local stack (store, artifacts, logs, pids, telemetry)",
        lambda value: Path((value or "").strip() or DEFAULT_HOME).expanduser().resolve(),
    ),
    EnvVar(
        "EYE_MODEL_CACHE",
        "cache_dir",
        "~/.cache/eye-model",
        "generated synthetic datasets",
        lambda value: Path((value or "").strip() or "~/.cache/eye-model").expanduser(),
    ),
    EnvVar(
        "EYE_MODEL_TELEMETRY",
        "telemetry_mode",
        "serving",
        "track predictions in a scoring server (`always`, `never`)",
        _choice("EYE_MODEL_TELEMETRY", "serving", TELEMETRY_MODES),
    ),
    EnvVar(
        "EYE_MODEL_TELEMETRY_DIR",
        "telemetry_dir_override",
        "$EYE_MODEL_HOME/telemetry",
        "local inference log",
        lambda value: Path(value.strip()).expanduser() if value and value.strip() else None,
    ),
    EnvVar(
        "EYE_MODEL_LOG_PART_RECORDS",
        "log_part_records",
        "500",
        "seal the local inference log part after this many records",
        _int("EYE_MODEL_LOG_PART_RECORDS", 500),
    ),
    EnvVar(
        "EYE_MODEL_LOG_PART_SECONDS",
        "log_part_seconds",
        "5",
        "... or after this many seconds",
        _seconds("EYE_MODEL_LOG_PART_SECONDS", 5.0),
    ),
    EnvVar(
        "EYE_MODEL_SHIP_INTERVAL",
        "ship_interval",
        "2",
        "seconds between deliveries of sealed parts to MLflow",
        _seconds("EYE_MODEL_SHIP_INTERVAL", 2.0),
    ),
    EnvVar(
        "EYE_MODEL_SESSION_EVERY_N",
        "session_every_n",
        "100",
        "log session and window metrics every N predictions",
        _int("EYE_MODEL_SESSION_EVERY_N", 100),
    ),
    EnvVar(
        "EYE_MODEL_SESSION_EVERY_S",
        "session_every_s",
        "30",
        "... or every this many seconds",
        _seconds("EYE_MODEL_SESSION_EVERY_S", 30.0),
    ),
    EnvVar(
        "EYE_MODEL_WINDOW_SIZE",
        "window_size",
        "100",
        "predictions in the serving run's recent window",
        _int("EYE_MODEL_WINDOW_SIZE", 100),
    ),
    EnvVar(
        "EYE_MODEL_MAX_BACKLOG",
        "max_backlog",
        "200000",
        "most undelivered inference records kept on disk",
        _int("EYE_MODEL_MAX_BACKLOG", 200_000),
    ),
    EnvVar(
        "EYE_MODEL_LOG_IMAGE_IDS",
        "log_image_ids",
        "false",
        "keep clients' `image_id`s in the inference log (they may identify a patient)",
        _bool("EYE_MODEL_LOG_IMAGE_IDS", False),
    ),
    EnvVar(
        "EYE_MODEL_ALERT_COOLDOWN",
        "alert_cooldown_s",
        "3600",
        "seconds between two drift alerts of one model",
        _seconds("EYE_MODEL_ALERT_COOLDOWN", 3600.0),
    ),
    EnvVar(
        "EYE_MODEL_METRICS_PORT",
        "metrics_port",
        "",
        "serve Prometheus `/metrics` of the model server on this port (empty: off; the "
        "stack sets 8081)",
        lambda value: parse_non_negative_int(value, name="EYE_MODEL_METRICS_PORT", default=0),
    ),
    EnvVar(
        "EYE_MODEL_METRICS_HOST",
        "metrics_host",
        "0.0.0.0",
        "interface of the metrics port (the stack uses its `--host`)",
        _text("0.0.0.0"),
    ),
    EnvVar(
        "PROMETHEUS_MULTIPROC_DIR",
        "metrics_dir",
        "(one per server start)",
        "folder where the model server's workers add up their metrics (prometheus_client's)",
        _text(),
    ),
    EnvVar(
        "EYE_MODEL_STACK_PROFILE",
        "stack_profile",
        "embedded",
        "`stack up` profile (`production`: PostgreSQL + auth)",
        _choice("EYE_MODEL_STACK_PROFILE", "embedded", STACK_PROFILES),
    ),
    EnvVar(
        "MLFLOW_BACKEND_STORE_URI",
        "backend_store_uri",
        "",
        "production backend store (PostgreSQL or MySQL URI)",
        _text(),
        secret=True,
    ),
    EnvVar(
        "MLFLOW_ARTIFACTS_DESTINATION",
        "artifacts_destination",
        "$EYE_MODEL_HOME/mlartifacts",
        "artifact root proxied by the tracking server (a folder or s3://, gs://, …)",
        _text(),
    ),
    EnvVar(
        "EYE_MODEL_AUTH_DB_URI",
        "auth_db_uri",
        "sqlite:///$EYE_MODEL_HOME/basic_auth.db",
        "users database of the production profile",
        _text(),
        secret=True,
    ),
    EnvVar(
        "EYE_MODEL_DEFAULT_PERMISSION",
        "default_permission",
        "READ",
        "permission of users on resources they did not create",
        _choice("EYE_MODEL_DEFAULT_PERMISSION", "READ", PERMISSIONS),
    ),
    EnvVar(
        "EYE_MODEL_ADMIN_USERNAME",
        "admin_username",
        "admin",
        "admin user of the production profile",
        _text(),
    ),
    EnvVar(
        "EYE_MODEL_ADMIN_PASSWORD_FILE",
        "admin_password_file",
        "",
        "file holding the admin password (never printed or logged)",
        _text(),
    ),
    EnvVar(
        "EYE_MODEL_ADMIN_PASSWORD",
        "admin_password",
        "",
        "the admin password itself (prefer the file)",
        _text(),
        secret=True,
    ),
    EnvVar(
        "MLFLOW_AUTH_ADMIN_USERNAME",
        "auth_admin_username",
        "",
        "MLflow's name for the admin user (read after `EYE_MODEL_ADMIN_USERNAME`)",
        _text(),
    ),
    EnvVar(
        "MLFLOW_AUTH_ADMIN_PASSWORD",
        "auth_admin_password",
        "",
        "MLflow's name for the admin password (read after `EYE_MODEL_ADMIN_PASSWORD`)",
        _text(),
        secret=True,
    ),
    EnvVar(
        "MLFLOW_TRACKING_USERNAME",
        "tracking_username",
        "",
        "user of an authenticated tracking server",
        _text(),
    ),
    EnvVar(
        "MLFLOW_TRACKING_PASSWORD",
        "tracking_password",
        "",
        "password of an authenticated tracking server",
        _text(),
        secret=True,
    ),
    EnvVar(
        "MLFLOW_FLASK_SERVER_SECRET_KEY",
        "flask_secret_key",
        "(generated, kept in $EYE_MODEL_HOME)",
        "secret key of the basic-auth tracking server's sessions",
        _text(),
        secret=True,
    ),
    EnvVar(
        "EYE_MODEL_SHADOW_ALIAS",
        "shadow_alias",
        "",
        "also score each served image with this alias or version of the served model, "
        "after the response (as `eye-model serve --shadow`)",
        _text(),
    ),
    EnvVar(
        "EYE_MODEL_SHADOW_FRACTION",
        "shadow_fraction",
        "1.0",
        "share of served images the shadow model scores (0-1)",
        lambda value: _fraction("EYE_MODEL_SHADOW_FRACTION", value, 1.0),
    ),
    EnvVar(
        "EYE_MODEL_DEBUG",
        "debug",
        "false",
        "failed commands print the full traceback (as `eye-model --debug`)",
        _bool("EYE_MODEL_DEBUG", False),
    ),
    EnvVar(
        "EYE_MODEL_SERVED_URI",
        "served_uri",
        "(set by `eye-model serve`)",
        "model URI the model server was asked for, recorded in serving runs",
        _text(),
    ),
    EnvVar(
        "EYE_MODEL_SERVED_SOURCE",
        "served_source",
        "(set by `eye-model serve`)",
        "`registry` or `local`: where the served model came from",
        _text(),
    ),
    EnvVar(
        "EYE_MODEL_SERVED_NAME",
        "served_name",
        "(set by `eye-model serve`)",
        "registered name of the served model",
        _text(),
    ),
    EnvVar(
        "EYE_MODEL_SERVED_VERSION",
        "served_version",
        "(set by `eye-model serve`)",
        "registered version of the served model",
        _text(),
    ),
)

_BY_FIELD: dict[str, EnvVar] = {var.field: var for var in ENVIRONMENT}


@dataclass(frozen=True)
class Settings:
    """eye-model's settings, read once from the environment by :func:`load_settings`.

    Each attribute is filled from the variable of :data:`ENVIRONMENT` that names it;
    the defaults here equal the variables' defaults. Secrets are left out of ``repr``.
    """

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
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    decode_memory_mb: int = DEFAULT_DECODE_MEMORY_MB
    scoring_timeout_s: int = DEFAULT_SCORING_TIMEOUT
    max_batch: int = DEFAULT_MAX_BATCH
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    fundus_check: str = "refuse"
    decode_threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 2))
    network_threads: int = 0  # 0: TensorFlow's default, one per CPU
    network_runtime: str = "tflite"
    home: Path = field(default_factory=lambda: Path(DEFAULT_HOME).resolve())
    cache_dir: Path = field(default_factory=lambda: Path("~/.cache/eye-model").expanduser())
    telemetry_mode: str = "serving"
    telemetry_dir_override: Path | None = None
    log_part_records: int = 500
    log_part_seconds: float = 5.0
    ship_interval: float = 2.0
    session_every_n: int = 100
    session_every_s: float = 30.0
    window_size: int = 100
    max_backlog: int = 200_000
    log_image_ids: bool = False
    alert_cooldown_s: float = 3600.0
    metrics_port: int = 0
    metrics_host: str = "0.0.0.0"
    metrics_dir: str = ""
    stack_profile: str = "embedded"
    backend_store_uri: str = field(default="", repr=False)
    artifacts_destination: str = ""
    auth_db_uri: str = field(default="", repr=False)
    default_permission: str = "READ"
    admin_username: str = ""
    admin_password_file: str = ""
    admin_password: str = field(default="", repr=False)
    auth_admin_username: str = ""
    auth_admin_password: str = field(default="", repr=False)
    tracking_username: str = ""
    tracking_password: str = field(default="", repr=False)
    flask_secret_key: str = field(default="", repr=False)
    shadow_alias: str = ""
    shadow_fraction: float = 1.0
    debug: bool = False
    served_uri: str = ""
    served_source: str = ""
    served_name: str = ""
    served_version: str = ""
    #: Set by MLflow's scoring server (``mlflow models serve``) in its workers.
    in_scoring_server: bool = False
    #: The run ``mlflow run`` started for an entry point (``MLFLOW_RUN_ID``), if any.
    mlflow_run_id: str = ""
    #: The experiment ``mlflow run`` or ``mlflow.set_experiment`` chose (``MLFLOW_EXPERIMENT_ID``).
    mlflow_experiment_id: str = ""
    #: TensorFlow's cluster description (``TF_CONFIG``): training runs on its workers.
    tf_config: str = ""

    @property
    def telemetry_dir(self) -> Path:
        """Local root of inference logs (``EYE_MODEL_TELEMETRY_DIR``, else ``<home>/telemetry``)."""
        return self.telemetry_dir_override or self.home / "telemetry"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every eye-model setting from ``environ`` (default: ``os.environ``).

    Args:
        environ: a mapping of environment variables.

    Returns:
        The settings, with the documented default for anything unset.

    Raises:
        SettingsError: a variable holds a value that cannot be used; the message names
            the variable and the fix.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {var.field: var.parse(env.get(var.name)) for var in ENVIRONMENT}
    # MLflow's own markers: the scoring server sets them in its workers.
    values["in_scoring_server"] = bool(env.get("__pyfunc_model_path__")) or (
        env.get("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "").lower() == "true"
    )
    if not env.get("EYE_MODEL_MAX_BATCH", "").strip() and "EYE_MODEL_BATCH_SIZE" in env:
        values["max_batch"] = _int("EYE_MODEL_BATCH_SIZE", DEFAULT_MAX_BATCH)(
            env["EYE_MODEL_BATCH_SIZE"]
        )
    values["mlflow_run_id"] = env.get("MLFLOW_RUN_ID", "")
    values["mlflow_experiment_id"] = env.get("MLFLOW_EXPERIMENT_ID", "")
    values["tf_config"] = env.get("TF_CONFIG", "")
    return Settings(**values)


def env_name(field_name: str) -> str:
    """The environment variable that fills the :class:`Settings` attribute ``field_name``."""
    return _BY_FIELD[field_name].name


def settings_environ(**values: Any) -> dict[str, str]:
    """Environment variables that give a child process these settings.

    Example: ``settings_environ(telemetry_mode="never")`` →
    ``{"EYE_MODEL_TELEMETRY": "never"}``. Booleans become ``true``/``false``.
    """
    result: dict[str, str] = {}
    for name, value in values.items():
        if name not in _BY_FIELD:
            raise KeyError(f"{name!r} is not a setting; see eye_model.settings.ENVIRONMENT")
        if isinstance(value, bool):
            text = "true" if value else "false"
        else:
            text = "" if value is None else str(value)
        result[_BY_FIELD[name].name] = text
    return result


def secret_variables() -> tuple[str, ...]:
    """Names of the variables holding secrets (never logged, never passed on unasked)."""
    return tuple(var.name for var in ENVIRONMENT if var.secret)


def configuration_table() -> str:
    """The README's configuration table (Markdown), generated from :data:`ENVIRONMENT`."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for var in ENVIRONMENT:
        if not var.default:
            default = "(empty)"
        elif var.default.startswith("(") or " " in var.default:
            default = var.default
        else:
            default = f"`{var.default}`"
        lines.append(f"| `{var.name}` | {default} | {var.meaning} |")
    return "\n".join(lines)


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


@contextlib.contextmanager
def hidden_environ(names: tuple[str, ...]) -> Iterator[None]:
    """Unset environment variables for the duration of a ``with`` block, then put them back.

    The retraining loop trains in its own process while ``mlflow run`` has set
    ``MLFLOW_RUN_ID``: hidden, the training run is a new run instead of the loop's.
    """
    saved = {key: os.environ.pop(key) for key in names if key in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)
