# Open WebUI test image, built by tests/infra/openwebui-image.sh.
#
# No container registry can be reached, so this starts FROM the local mmdebstrap
# base and installs Open WebUI from PyPI. The layout follows the upstream image
# (port 8080, WORKDIR /app/backend, DATA_DIR /app/backend/data, /health probe),
# so generated compose files run unchanged with this image in place of upstream's.
#
# Build context (made by the script): this file, ca-certificates.crt (the host's
# CA bundle; HTTPS may go through a re-signing proxy) and wheels/torch-*.whl (a
# CPU build of torch, installed first so pip never fetches a CUDA build).
ARG BASE_IMAGE=local/debian:bookworm

# --- stage 1: the virtualenv -------------------------------------------------
FROM ${BASE_IMAGE} AS build
LABEL org.owuibuild.image=openwebui-build
ARG OPENWEBUI_VERSION
# Open WebUI lists qdrant-client only in its [all] extra; VECTOR_DB=qdrant needs it.
# psycopg[binary] (for postgresql+psycopg:// URLs) is already a base dependency.
ARG QDRANT_CLIENT_VERSION=1.18.0
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY ca-certificates.crt /build/ca-certificates.crt
COPY wheels/ /build/wheels/
ENV PIP_CERT=/build/ca-certificates.crt \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180
# Naming the torch wheel file in the same resolve pins torch to it.
RUN test -n "$OPENWEBUI_VERSION" \
 && python3 -m venv /opt/open-webui \
 && /opt/open-webui/bin/pip install --quiet /build/wheels/torch-*.whl \
      "open-webui==${OPENWEBUI_VERSION}" "qdrant-client==${QDRANT_CLIENT_VERSION}" \
 && /opt/open-webui/bin/python -c 'import torch, qdrant_client, psycopg, open_webui; print("torch", torch.__version__)'

# --- stage 2: the runtime image (no wheel, no build-time CA bundle) -----------
FROM ${BASE_IMAGE}
LABEL org.owuibuild.image=openwebui
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/open-webui /opt/open-webui
# Tests never give Open WebUI a way out: keep it from trying (telemetry, model hub).
ENV PATH=/opt/open-webui/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    ENV=prod \
    PORT=8080 \
    DATA_DIR=/app/backend/data \
    OFFLINE_MODE=true \
    HF_HUB_OFFLINE=1 \
    SCARF_NO_ANALYTICS=true \
    DO_NOT_TRACK=true \
    ANONYMIZED_TELEMETRY=false
WORKDIR /app/backend
RUN mkdir -p /app/backend/data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD curl -fsS http://localhost:8080/health || exit 1
CMD ["open-webui", "serve", "--host", "0.0.0.0", "--port", "8080"]
