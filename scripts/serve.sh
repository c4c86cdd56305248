#!/usr/bin/env bash
# Serve a model with MLflow's scoring server on 8080 (REST API: POST /invocations).
# Usage: scripts/serve.sh MODEL_URI [extra eye-model serve options]
#   MODEL_URI: models:/eye-disease-model/Production, models:/eye-disease-model@champion,
#              runs:/<run_id>/model or a model folder.
set -euo pipefail
if [[ $# -lt 1 ]]; then
    echo "usage: $0 MODEL_URI [--port 8080] [--host 0.0.0.0] [--env-manager local]" >&2
    exit 2
fi
MODEL_URI="$1"
shift
exec eye-model serve --model-uri "$MODEL_URI" --port "${SERVING_PORT:-8080}" "$@"
