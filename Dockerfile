# tfsctl serve in a container, compatible with the tensorflow/serving image:
#   docker build -t tfsctl .
#   docker run -p 8500:8500 -p 8501:8501 -v "$PWD/models/deeplab:/models/deeplab" -e MODEL_NAME=deeplab tfsctl
# Same environment (MODEL_NAME, MODEL_BASE_PATH), ports (8500 gRPC, 8501 REST) and argument pass-through as
# TF Serving's image. EXTRAS=cloud (default) adds s3:// and gs:// model base paths; EXTRAS= builds without.
FROM python:3.11-slim

ARG EXTRAS=cloud
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /src
COPY pyproject.toml README.md ./
COPY tfsctl ./tfsctl
RUN pip install "/src${EXTRAS:+[$EXTRAS]}" \
    && rm -rf /src

COPY docker/entrypoint.sh /usr/local/bin/tfsctl_entrypoint.sh
# The Prometheus page exists only under --monitoring_config_file (as in TF Serving); deploy/ passes this one.
COPY docker/monitoring.config /etc/tfsctl/monitoring.config
RUN chmod 0755 /usr/local/bin/tfsctl_entrypoint.sh \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tfsctl \
    && mkdir -p /models /var/cache/tfsctl \
    && chown tfsctl:tfsctl /var/cache/tfsctl

# Where models are mounted, and where s3:// / gs:// versions are copied before loading (an emptyDir in Kubernetes).
ENV MODEL_NAME=model \
    MODEL_BASE_PATH=/models \
    TFSCTL_MODEL_CACHE_DIR=/var/cache/tfsctl

WORKDIR /
USER 10001:10001
# gRPC, REST
EXPOSE 8500 8501
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tfsctl_entrypoint.sh"]
