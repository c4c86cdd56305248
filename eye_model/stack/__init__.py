"""The local and production stack: a tracking server and a model server in the background.

``eye-model stack up|down|status|logs`` replaces the original docker-compose file for
machines without Docker (``docker-compose.yml`` runs the same commands on machines with
it); ``eye-model backup|restore`` save and bring back the tracking data.

Modules, one idea each:

- :mod:`~eye_model.stack.config`: the state folder, the profiles, the tracking server's
  stores and drivers;
- :mod:`~eye_model.stack.auth`: MLflow's basic-auth app: admin password, ini file, keys;
- :mod:`~eye_model.stack.commands`: the ``mlflow server`` and ``mlflow models serve``
  command lines;
- :mod:`~eye_model.stack.processes`: starting, waiting for and stopping processes, and
  pid files checked against the process's start time and command line;
- :mod:`~eye_model.stack.services`: starting, stopping and reporting the two services;
- :mod:`~eye_model.stack.supervisor`: keeping the model server up (restarts, their
  causes and counts), with :mod:`~eye_model.stack.process_tree` watching its workers;
- :mod:`~eye_model.stack.databases`: dumping, restoring and emptying the databases;
- :mod:`~eye_model.stack.manifest`: the manifest of a backup folder, checked on reading;
- :mod:`~eye_model.stack.backup`: backup and restore of the stores, all or nothing.
"""

from __future__ import annotations

from eye_model.stack.auth import (
    ADMIN_PASSWORD_ENVS,
    ADMIN_PASSWORD_FILE_ENV,
    ADMIN_USERNAME_ENVS,
    BASIC_AUTH_FUNCTION,
    MIN_PASSWORD_LENGTH,
    AdminCredentials,
    check_credentials,
    client_credentials,
    read_admin_credentials,
    read_admin_password,
    read_flask_secret_key,
    render_auth_config,
    write_private_file,
)
from eye_model.stack.backup import (
    BackupError,
    StoreLocations,
    backup_stores,
    locate_stores,
    read_manifest,
    restore_stores,
)
from eye_model.stack.commands import build_serve_command, build_tracking_command
from eye_model.stack.config import (
    BASIC_AUTH_APP,
    DEFAULT_ADMIN_USERNAME,
    DEFAULT_PERMISSION,
    PERMISSIONS,
    PROFILES,
    SERVER_DATABASE_SCHEMES,
    StackError,
    StackPaths,
    TrackingConfig,
    check_drivers,
    default_admin_username,
    is_local_path,
    local_path,
    read_stack_state,
    resolve_tracking_config,
    with_installed_driver,
    write_stack_state,
)
from eye_model.stack.processes import (
    ProcessIdentity,
    find_free_port,
    local_url,
    mlflow_executable,
    process_identity,
    read_pid_file,
    server_environment,
    start_process,
    stop_group,
    stop_process,
    stop_recorded_process,
    wait_for_http,
    wait_group_gone,
    write_pid_file,
)
from eye_model.stack.services import (
    SERVICES,
    check_writable_folder,
    model_server_environment,
    stack_status,
    start_model_server,
    start_service,
    start_tracking,
    stop_service,
    stopped_on_failure,
    tracking_server_launch,
)

__all__ = [
    "ADMIN_PASSWORD_ENVS",
    "ADMIN_PASSWORD_FILE_ENV",
    "ADMIN_USERNAME_ENVS",
    "BASIC_AUTH_APP",
    "BASIC_AUTH_FUNCTION",
    "DEFAULT_ADMIN_USERNAME",
    "DEFAULT_PERMISSION",
    "MIN_PASSWORD_LENGTH",
    "PERMISSIONS",
    "PROFILES",
    "SERVER_DATABASE_SCHEMES",
    "SERVICES",
    "AdminCredentials",
    "BackupError",
    "ProcessIdentity",
    "StackError",
    "StackPaths",
    "StoreLocations",
    "TrackingConfig",
    "backup_stores",
    "build_serve_command",
    "build_tracking_command",
    "check_credentials",
    "check_drivers",
    "check_writable_folder",
    "client_credentials",
    "default_admin_username",
    "find_free_port",
    "is_local_path",
    "local_path",
    "local_url",
    "locate_stores",
    "mlflow_executable",
    "model_server_environment",
    "process_identity",
    "read_admin_credentials",
    "read_admin_password",
    "read_flask_secret_key",
    "read_manifest",
    "read_pid_file",
    "read_stack_state",
    "render_auth_config",
    "resolve_tracking_config",
    "restore_stores",
    "server_environment",
    "stack_status",
    "start_model_server",
    "start_process",
    "start_service",
    "start_tracking",
    "stop_group",
    "stop_process",
    "stop_recorded_process",
    "stop_service",
    "stopped_on_failure",
    "tracking_server_launch",
    "wait_for_http",
    "wait_group_gone",
    "with_installed_driver",
    "write_pid_file",
    "write_private_file",
    "write_stack_state",
]
