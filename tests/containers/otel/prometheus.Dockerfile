# Prometheus as Debian 13 (trixie) packages it: 2.53, whose OTLP receiver sits behind
# --enable-feature=otlp-write-receiver (Debian 12's 2.42 has none). Built by
# tests/containers/test_otel_live.py FROM the trixie tools image (tests/infra/trixie-tools.sh),
# cached under a tag with a hash of this file and that base.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
LABEL org.owuibuild.image=otel-prometheus
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends prometheus curl ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && prometheus --version
CMD ["/bin/sh"]
