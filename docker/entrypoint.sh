#!/bin/sh
# tfsctl's container entrypoint, a drop-in for TF Serving's /usr/bin/tf_serving_entrypoint.sh:
#   gRPC on 8500, REST on 8501, model ${MODEL_NAME} (default "model") from ${MODEL_BASE_PATH}/${MODEL_NAME}
#   (default /models/model; s3:// and gs:// base paths work too), extra arguments appended (a repeated flag: the
#   last one wins, as with tensorflow_model_server). With --model_config_file the name/base-path pair is left out,
#   since that file names the models (TF Serving ignores the pair then; tfsctl refuses both at once).
# `exec` makes tfsctl PID 1's replacement, so the container's SIGTERM reaches it: in-flight requests finish, exit 0.
set -eu

: "${MODEL_NAME:=model}"
: "${MODEL_BASE_PATH:=/models}"
: "${TFSCTL:=tfsctl}"

for arg in "$@"; do
  case "$arg" in
    --model_config_file|--model_config_file=*|--model-config-file|--model-config-file=*)
      exec "$TFSCTL" serve --port=8500 --rest_api_port=8501 "$@"
      ;;
  esac
done

exec "$TFSCTL" serve --port=8500 --rest_api_port=8501 \
  --model_name="${MODEL_NAME}" --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "$@"
