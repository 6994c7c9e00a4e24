# syntax=docker/dockerfile:1
#
# collector worker image.
#
#   docker build -t collector:0.1.0 .
#   docker run --rm -e COLLECTOR_KAFKA__BOOTSTRAP_SERVERS=kafka:9092 … collector:0.1.0
#
# The entrypoint is the Faust worker (`faust -A collector worker`); the image also has the
# `collector` command for one-shot jobs:
#   docker run --rm --entrypoint collector collector:0.1.0 topics create
#   docker run --rm --entrypoint collector collector:0.1.0 db migrate
#
# Settings come from COLLECTOR_* environment variables (docs/configuration.md).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# A compiler only for a dependency without a wheel for the build platform; this stage is
# thrown away, so none of it reaches the runtime image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first: this layer is reused until pyproject.toml or the lock changes. The
# runtime dependencies of pyproject.toml, each at the version requirements.lock pins (the
# lock, without its hashes, as constraints: the lock also holds the dev extra, which
# stays out of the image), so the image runs what CI tested.
COPY pyproject.toml requirements.lock ./
RUN python -c "import tomllib; deps = tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']; print('\n'.join(deps))" > /tmp/requirements.txt \
 && sed -e '/^ *--hash/d' -e 's/ *\\$//' requirements.lock > /tmp/constraints.txt \
 && pip install --upgrade pip wheel \
 && pip install -c /tmp/constraints.txt -r /tmp/requirements.txt

# Then collector itself, built as a wheel and installed (no editable install, no source
# tree at run time; migrations/*.sql travel as package data).
COPY README.md ./
COPY collector ./collector
RUN pip wheel --no-deps --wheel-dir /wheels . \
 && pip install --no-deps /wheels/collector-*.whl \
 && python -c "import collector, collector.cli.main; from collector.db.migrate import load_migrations; assert load_migrations(), 'migrations missing from the wheel'" \
 && python -c "from collector.models.protogen import pb2; pb2()" \
 && faust --version

# --------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

ARG UID=10001
ARG GID=10001

LABEL org.opencontainers.image.title="collector" \
      org.opencontainers.image.description="Kafka data collection on Faust: validation, enrichment, windows, InfluxDB/MySQL sinks" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    COLLECTOR_APP__DATADIR=/var/lib/collector \
    COLLECTOR_WEB__HOST=0.0.0.0 \
    COLLECTOR_WEB__PORT=16066

RUN groupadd --system --gid ${GID} collector \
 && useradd --system --uid ${UID} --gid collector --home-dir /var/lib/collector \
      --no-create-home --shell /usr/sbin/nologin collector \
 && mkdir -p /var/lib/collector /app \
 && chown ${UID}:${GID} /var/lib/collector \
 && chmod 0750 /var/lib/collector

COPY --from=builder /opt/venv /opt/venv

# Read-only working directory; table state (RocksDB) lives in /var/lib/collector.
WORKDIR /app

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# Faust's web server: /metrics, /livez, /readyz, POST /api/v1/events/{source}
EXPOSE 16066

# slim has no curl: ask /livez with the standard library.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('COLLECTOR_WEB__PORT', '16066'); sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/livez' % port, timeout=4).status == 200 else 1)"]

ENTRYPOINT ["faust", "-A", "collector", "worker"]
CMD ["-l", "info"]
