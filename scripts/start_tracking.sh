#!/usr/bin/env bash
# Start the tracking server and UI on 5000 in the foreground (embedded default:
# SQLite backend and a local artifact folder, proxied by the server).
set -euo pipefail
HOME_DIR="${EYE_MODEL_HOME:-$PWD/.eye-model}"
mkdir -p "$HOME_DIR"
exec mlflow server \
    --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:-sqlite:///$HOME_DIR/mlflow.db}" \
    --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-$HOME_DIR/mlartifacts}" \
    --serve-artifacts --host "${TRACKING_HOST:-127.0.0.1}" --port "${TRACKING_PORT:-5000}"
