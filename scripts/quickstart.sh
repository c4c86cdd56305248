#!/usr/bin/env bash
# The whole lifecycle on embedded defaults, on a fresh machine with no data and no network:
# tracking server (SQLite + local artifacts) on 5000 → train on generated images → register
# → serve on 8080 → score sample images → print where to look.
#
# Environment (all optional): EYE_MODEL_HOME (state folder, default ./.eye-model),
# MLFLOW_MODEL_NAME, MLFLOW_EXPERIMENT_NAME, QUICKSTART_PER_CLASS, QUICKSTART_EPOCHS.
set -euo pipefail
cd "$(dirname "$0")/.."

export EYE_MODEL_HOME="${EYE_MODEL_HOME:-$PWD/.eye-model}"
export MLFLOW_TRACKING_URI="http://127.0.0.1:${TRACKING_PORT:-5000}"
export MLFLOW_EXPERIMENT_NAME="${MLFLOW_EXPERIMENT_NAME:-eye-disease-classifier}"
MODEL_NAME="${MLFLOW_MODEL_NAME:-eye-disease-model}"
PER_CLASS="${QUICKSTART_PER_CLASS:-300}"
EPOCHS="${QUICKSTART_EPOCHS:-15}"
SERVING_PORT="${SERVING_PORT:-8080}"

step() { printf '\n==> %s\n' "$*"; }

step "1/5 tracking server on ${MLFLOW_TRACKING_URI} (SQLite + local artifacts in ${EYE_MODEL_HOME})"
eye-model stack up --home "$EYE_MODEL_HOME" --tracking-port "${TRACKING_PORT:-5000}"

step "2/5 train on a generated synthetic fundus set and register it as ${MODEL_NAME}"
mlflow run . -e train --env-manager local --experiment-name "$MLFLOW_EXPERIMENT_NAME" \
    -P synthetic_per_class="$PER_CLASS" -P epochs="$EPOCHS" -P register_as="$MODEL_NAME"

MODEL_URI="models:/${MODEL_NAME}/latest"

step "3/5 serve ${MODEL_URI} on port ${SERVING_PORT}"
eye-model stack up --home "$EYE_MODEL_HOME" --tracking-port "${TRACKING_PORT:-5000}" \
    --serving-port "$SERVING_PORT" --model-uri "$MODEL_URI"

step "4/5 score sample images (new synthetic photos, one set per class)"
SAMPLES="$EYE_MODEL_HOME/samples"
eye-model synthesize --out-dir "$SAMPLES" --per-class 2 --image-size 512 --seed 2024 >/dev/null
eye-model score --url "http://127.0.0.1:${SERVING_PORT}" "$SAMPLES"/*/*.jpg

step "5/5 done"
cat <<MSG
MLflow UI (runs, metrics, registered models): ${MLFLOW_TRACKING_URI}
REST API:  curl -s http://127.0.0.1:${SERVING_PORT}/ping ; POST images to /invocations
Logs:      eye-model stack logs --home ${EYE_MODEL_HOME}
Stop all:  eye-model stack down --home ${EYE_MODEL_HOME}
MSG
