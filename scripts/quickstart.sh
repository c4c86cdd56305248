#!/usr/bin/env bash
# The whole lifecycle on embedded defaults, on a fresh machine with no data and no network:
# tracking server (SQLite + local artifacts) on 5000 → train on generated images → register
# → promote to Production → serve on 8080 → score sample images → probe → drift → shadow
# scoring of a second version and a comparison → one retraining decision → print where to look.
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
EPOCHS="${QUICKSTART_EPOCHS:-25}"
SERVING_PORT="${SERVING_PORT:-8080}"

step() { printf '\n==> %s\n' "$*"; }

step "1/10 tracking server on ${MLFLOW_TRACKING_URI} (SQLite + local artifacts in ${EYE_MODEL_HOME})"
eye-model stack up --home "$EYE_MODEL_HOME" --tracking-port "${TRACKING_PORT:-5000}"

step "2/10 train on a generated synthetic fundus set and register it as ${MODEL_NAME}"
mlflow run . -e train --env-manager local --experiment-name "$MLFLOW_EXPERIMENT_NAME" \
    -P synthetic_per_class="$PER_CLASS" -P epochs="$EPOCHS" -P register_as="$MODEL_NAME"

step "3/10 promote the new version to Production (quality gate against the current one)"
if ! mlflow run . -e promote --env-manager local -P model_name="$MODEL_NAME" -P version=latest \
    -P stage=Production; then
    echo "The quality gate kept the current Production version (see the message above)."
fi

MODEL_URI="models:/${MODEL_NAME}/Production"

step "4/10 serve ${MODEL_URI} on port ${SERVING_PORT} (predictions are tracked in MLflow)"
# A model server left by an earlier run serves an older version: restart the stack.
eye-model stack down --home "$EYE_MODEL_HOME"
eye-model stack up --home "$EYE_MODEL_HOME" --tracking-port "${TRACKING_PORT:-5000}" \
    --serving-port "$SERVING_PORT" --model-uri "$MODEL_URI"

step "5/10 score sample images (new synthetic photos of each class)"
SAMPLES="$EYE_MODEL_HOME/samples"
eye-model synthesize --out-dir "$SAMPLES" --per-class 60 --image-size 336 --seed 2024 >/dev/null
eye-model score --url "http://127.0.0.1:${SERVING_PORT}" "$SAMPLES"/*/*_0000[0-1].jpg
# A steady stream for the monitor: 240 more predictions, sent in batches.
for class_dir in "$SAMPLES"/*/; do
    eye-model score --url "http://127.0.0.1:${SERVING_PORT}" "$class_dir"*.jpg >/dev/null
done

step "6/10 health probe of the model server (3 checks)"
mlflow run . -e probe --env-manager local -P url="http://127.0.0.1:${SERVING_PORT}" \
    -P interval=1 -P count=3

step "7/10 drift: recent predictions against the training reference"
# The model server delivers its inference log every few seconds.
sleep 8
mlflow run . -e drift --env-manager local -P model_uri="$MODEL_URI" -P window=1000

step "8/10 shadow scoring: a second version scores the same images after each answer"
# A second, shorter training (another seed) becomes the challenger (Staging).
CHALLENGER_JSON=$(eye-model train --synthetic-per-class "$PER_CLASS" --epochs 2 --seed 7 \
    --register-as "$MODEL_NAME" | tail -n 1)
CHALLENGER=$(python -c 'import json,sys; print(json.loads(sys.argv[1])["registered_version"])' \
    "$CHALLENGER_JSON")
eye-model promote --model-name "$MODEL_NAME" --version "$CHALLENGER" --stage Staging >/dev/null
SHADOW_PORT=$((SERVING_PORT + 2))  # + 1 is the stack's metrics port
ENABLE_MODEL_REGISTRY=true MLFLOW_MODEL_NAME="$MODEL_NAME" eye-model serve --alias champion \
    --shadow challenger --port "$SHADOW_PORT" >"$EYE_MODEL_HOME/shadow-serve.log" 2>&1 &
SHADOW_PID=$!
trap 'kill "$SHADOW_PID" 2>/dev/null || true' EXIT
for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:${SHADOW_PORT}/ping" >/dev/null && break
    sleep 1
done
for class_dir in "$SAMPLES"/*/; do
    eye-model score --url "http://127.0.0.1:${SHADOW_PORT}" "$class_dir"*_0000[0-9].jpg >/dev/null
done
sleep 8  # the shadow delivers its records every few seconds
kill "$SHADOW_PID"
wait "$SHADOW_PID" 2>/dev/null || true
mlflow run . -e compare --env-manager local -P model_name="$MODEL_NAME" -P window=1000

step "9/10 one retraining decision: drift on the champion, then train and gate (dry run)"
mlflow run . -e retrain --env-manager local -P model_name="$MODEL_NAME" -P trigger=always \
    -P dry_run=true

step "10/10 done"
cat <<MSG
MLflow UI: ${MLFLOW_TRACKING_URI}
  experiment ${MLFLOW_EXPERIMENT_NAME}: runs tagged role=training, serving, probe, drift,
  comparison and retrain (the drift run holds drift_report.html, the comparison run
  comparison_report.html); registered model ${MODEL_NAME} under Models.
  Without dry_run, \`mlflow run . -e retrain\` trains, gates and promotes (README).
REST API:  curl -s http://127.0.0.1:${SERVING_PORT}/ping ; POST images to /invocations
Logs:      eye-model stack logs --home ${EYE_MODEL_HOME}
Stop all:  eye-model stack down --home ${EYE_MODEL_HOME}
MSG
