# syntax=docker/dockerfile:1
# decorator sidecar (and its dashboard): `docker build -t decorator-sidecar:0.1.0 .`
#   sidecar:   docker run decorator-sidecar:0.1.0                 (ENTRYPOINT decorator, CMD run)
#   dashboard: docker run decorator-sidecar:0.1.0 dashboard --port 8088 --db /data/dashboard.db
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz on the admin port (9090).

ARG PYTHON_IMAGE=python:3.11-slim

# -- builder: wheels for the package and every dependency (compilers only live here) --------------
FROM ${PYTHON_IMAGE} AS builder
# The toolchain compiles decorator's hot path (Cython, setup.py) and covers platforms where
# uvloop/httptools build from source.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY decorator ./decorator
# setup.py falls back to pure Python when a module fails to compile; an image must not ship that
# silently, so the builder installs its own wheel and refuses anything but a fully compiled hot path.
# -g0: no debug info in the extensions (Python's default CFLAGS carry -g; they are megabytes of it).
RUN CFLAGS=-g0 pip wheel --no-cache-dir --wheel-dir /wheels . \
 && pip install --no-cache-dir --no-index --find-links=/wheels decorator-sidecar \
 && cd / && decorator --version | tee /dev/stderr | grep -qF '(compiled)'

# -- final: slim runtime, no compilers, non-root -----------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8080 \
    TARGET_PORT=8087 \
    ADMIN_PORT=9090 \
    RULES=/etc/decorator/rules
RUN groupadd --system --gid 10001 decorator \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin decorator
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels decorator-sidecar \
 && mkdir -p /etc/decorator/rules
# The shipped rule packs, so a ConfigMap can `include: /usr/share/decorator/packs/<pack>`.
COPY rules /usr/share/decorator/packs
USER 10001:10001
EXPOSE 8080 9090
ENTRYPOINT ["decorator"]
CMD ["run"]
