# syntax=docker/dockerfile:1
# TF Serving with tfstack's configuration files (serving/config/), running as a non-root user.
#
#   docker build -f docker/serving.Dockerfile -t tfstack-serving:0.1.0 .
#   docker run -p 8500:8500 -p 8501:8501 -v "$PWD/models:/models:ro" tfstack-serving:0.1.0
#
# The tag is pinned together with the trainer's TensorFlow (docker/trainer.Dockerfile, pyproject.toml's
# trainer extra): a SavedModel from a newer TensorFlow may use ops this server does not know.
# For GPUs: --build-arg TF_SERVING_TAG=2.21.0-gpu.
ARG TF_SERVING_TAG=2.21.0
# "@sha256:<digest of that tag>" pins the base (empty = the tag; docs/deploy.md, "Pinning base images").
ARG TF_SERVING_DIGEST=
FROM tensorflow/serving:${TF_SERVING_TAG}${TF_SERVING_DIGEST}
ARG UID=10001

LABEL org.opencontainers.image.title="tfstack-serving" \
      org.opencontainers.image.description="TF Serving configured for tfstack models" \
      org.opencontainers.image.licenses="Apache-2.0"

# The same names as the chart: MODEL_NAME is the model the health check asks for.
ENV MODEL_NAME=digits \
    MODEL_BASE_PATH=/models

COPY serving/config/models.config serving/config/monitoring.config serving/config/batching.config /etc/tfserving/
RUN useradd --uid "${UID}" --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tfserving \
    && chmod 0644 /etc/tfserving/*.config

USER ${UID}:${UID}
EXPOSE 8500 8501
# Healthy only once a version of MODEL_NAME is AVAILABLE: GET /v1/models/NAME/metadata needs a servable
# handle and answers 404 until then, while GET /v1/models/NAME already answers 200 during LOADING.
# The image has bash but no curl or wget, hence /dev/tcp.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8501 && printf 'GET /v1/models/%s/metadata HTTP/1.0\\r\\n\\r\\n' \"$MODEL_NAME\" >&3 && head -n 1 <&3 | grep -q ' 200 '"]
# serving/config/command.txt, argument for argument (a test checks it).
ENTRYPOINT ["tensorflow_model_server", "--port=8500", "--rest_api_port=8501", "--rest_api_timeout_in_ms=30000", "--model_config_file=/etc/tfserving/models.config", "--model_config_file_poll_wait_seconds=60", "--file_system_poll_wait_seconds=5", "--monitoring_config_file=/etc/tfserving/monitoring.config", "--enable_batching=true", "--batching_parameters_file=/etc/tfserving/batching.config", "--enable_model_warmup=true"]
