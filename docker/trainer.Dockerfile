# syntax=docker/dockerfile:1
# The trainer image: `python -m trainer search` in every worker pod (Indexed Job, TFJob or compose).
#
#   docker build -f docker/trainer.Dockerfile -t tfstack-trainer:0.1.0 .
#   docker build -f docker/trainer.Dockerfile --build-arg BAKE_WEIGHTS="mobilenet_v2 efficientnet_b0" ...
#   docker build -f docker/trainer.Dockerfile --build-arg TF_VARIANT= -t tfstack-trainer:0.1.0-cpu .   # CPU only
#
# TF_VARIANT picks the base: "-gpu" (CUDA, several GB) or "" (tensorflow/tensorflow:<version>, CPU only, for
# CPU clusters and compose.cpu.yaml). TF_DIGEST pins it: "@sha256:<digest of that tag>" (empty = the tag);
# copy it from `docker buildx imagetools inspect tensorflow/tensorflow:<version><variant>` (docs/deploy.md).
#
# TensorFlow comes from the base image and is pinned together with the TF Serving image
# (docker/serving.Dockerfile, k8s/chart values serving.image.tag): the trainer's TensorFlow must not be
# newer than the server's, or the server meets ops it does not know ("Op type not registered").
# checkov:skip=CKV_DOCKER_2: a batch job has no health endpoint; Kubernetes and compose watch the exit code.
ARG TF_VERSION=2.21.0
ARG TF_VARIANT=-gpu
ARG TF_DIGEST=

# --- build: a wheel of tfstack (no dependencies), so the final image carries no source tree or build tools
FROM tensorflow/tensorflow:${TF_VERSION}${TF_VARIANT}${TF_DIGEST} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY trainer/ trainer/
COPY serving/ serving/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- final
FROM tensorflow/tensorflow:${TF_VERSION}${TF_VARIANT}${TF_DIGEST}
ARG TF_VERSION
ARG TF_VARIANT
# Space-separated backbones whose ImageNet weights are downloaded now and baked into the image
# (GPU nodes often have no internet), e.g. "mobilenet_v2 efficientnet_b0"; empty bakes none.
ARG BAKE_WEIGHTS=""
ARG UID=10001

LABEL org.opencontainers.image.title="tfstack-trainer" \
      org.opencontainers.image.description="KerasTuner transfer-learning search under MultiWorkerMirroredStrategy" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.tfstack.tensorflow-version="${TF_VERSION}" \
      io.tfstack.tensorflow-variant="${TF_VARIANT}"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/opt/keras \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# tfstack with its trainer extra; the base image's TensorFlow satisfies tensorflow>=2.21,<2.22, so pip
# keeps it (the check below fails the build if pip replaced it).
COPY --from=build /wheels /wheels
# DL3013 (pin pip versions): the wheel is this checkout; its dependencies resolve within pyproject.toml's
# ranges at build time (no lock file yet), TensorFlow itself being the base image's.
# hadolint ignore=DL3013
RUN wheel="$(ls /wheels/tfstack-*.whl)" \
    && python -m pip install --no-cache-dir "${wheel}[trainer]" \
    && rm -rf /wheels \
    && python -c "import tensorflow as tf, sys; v = tf.__version__; sys.exit(0 if v.startswith('${TF_VERSION%.*}') else 'TensorFlow ' + v + ' != ${TF_VERSION}')"

COPY docker/bake_weights.py /usr/local/lib/tfstack/bake_weights.py
RUN mkdir -p "${KERAS_HOME}" /models /data \
    && if [ -n "${BAKE_WEIGHTS}" ]; then python /usr/local/lib/tfstack/bake_weights.py ${BAKE_WEIGHTS}; fi \
    && useradd --uid "${UID}" --user-group --no-create-home --home-dir /tmp --shell /usr/sbin/nologin tfstack \
    && chown -R "${UID}:${UID}" /models "${KERAS_HOME}" \
    && chmod -R a+rX "${KERAS_HOME}"

# 2222: the MultiWorkerMirroredStrategy port; 9100: the chief's Prometheus metrics.
EXPOSE 2222 9100
# Keras reads and downloads weights under KERAS_HOME only while it is writable: with a read-only root
# filesystem, mount a writable copy there (the chart's keras-cache init container, compose's volume).
VOLUME ["/models", "/opt/keras"]
USER ${UID}:${UID}
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "trainer"]
CMD ["search"]
