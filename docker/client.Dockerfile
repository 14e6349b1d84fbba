# syntax=docker/dockerfile:1
# The thin client (no TensorFlow): `python -m serving.client status|predict|metadata`.
#
#   docker build -f docker/client.Dockerfile -t tfstack-client:0.1.0 .
#   docker run --rm --network host tfstack-client:0.1.0 status --target localhost:8500 --model digits
#
# checkov:skip=CKV_DOCKER_2: a command-line tool that exits after one call; there is nothing to health-check.
ARG PYTHON_TAG=3.11.14-slim-bookworm
# "@sha256:<digest of that tag>" pins the base (empty = the tag; docs/deploy.md, "Pinning base images").
ARG PYTHON_DIGEST=

# --- build: wheels of tfstack[client] and its dependencies, so the final stage installs offline
FROM python:${PYTHON_TAG}${PYTHON_DIGEST} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY trainer/ trainer/
COPY serving/ serving/
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels ".[client]"

# --- final
FROM python:${PYTHON_TAG}${PYTHON_DIGEST}
ARG UID=10001
LABEL org.opencontainers.image.title="tfstack-client" \
      org.opencontainers.image.description="tfstack's thin TF Serving client (gRPC and REST, no TensorFlow)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# DL3013 (pin pip versions): only the wheels built in the first stage are installed (--no-index).
# hadolint ignore=DL3013
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links /wheels "tfstack[client]" \
    && useradd --uid "${UID}" --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin tfstack
USER ${UID}:${UID}
WORKDIR /tmp
ENTRYPOINT ["python", "-m", "serving.client"]
CMD ["--help"]
