# syntax=docker/dockerfile:1
# The extension loader: the service, Nushell and the example extensions, as `make install` sets them up.
#
#   docker compose up --build          (with NATS and Jaeger: see docker-compose.yml)
#   docker build -t extension-loader .
#
# x86-64 only: package.json and its lock pin Nushell's linux-x64 build (@nushell/linux-x64), so build and run
# as linux/amd64 (docker-compose.yml says so; with plain docker, `--platform linux/amd64`).
# tests/deploy/test_compose.py checks this file against pyproject.toml, package.json, package-lock.json and the repo.

# Debian bookworm, named: the bare `python:3.11-slim` tag follows the newest Debian release.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- Nushell: `npm ci` from the lock file, as the Makefile does; only the native binary leaves this stage ------
FROM ${PYTHON_IMAGE} AS nushell
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates nodejs npm \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build
COPY package.json package-lock.json ./
# Node.js only installs here: the image gets the native binary, never a Node.js wrapper such as
# node_modules/.bin/nu (about 140 ms more per Nushell run, see DESIGN.md).
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error \
    && node_modules/@nushell/linux-x64/bin/nu --version

# --- Python: the project with its `otlp` extra (the OTLP trace exporter), in a virtual environment -------------
FROM ${PYTHON_IMAGE} AS python
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /build
# README.md: pyproject.toml names it as the package's readme, so the build needs it.
COPY pyproject.toml README.md ./
COPY service/ service/
# As the Makefile, but not editable (the source does not go into the image) and with `otlp` instead of `dev` and
# `server`: the service connects to the compose `nats` service and never starts a nats-server of its own.
RUN python -m pip install --quiet --upgrade pip \
    && python -m pip install --quiet '.[otlp]'

# --- The image ------------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
# util-linux is Essential in Debian, hence in every Debian image: its `prlimit` is how the runner limits each
# Nushell process (memory, CPU time, file size). Fail the build rather than run without limits.
RUN prlimit --version \
    && groupadd --system --gid 10001 loader \
    && useradd --system --uid 10001 --gid loader --home-dir /app --no-create-home --shell /usr/sbin/nologin loader
COPY --from=nushell /build/node_modules/@nushell/linux-x64/bin/nu /usr/local/bin/nu
COPY --from=python /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
# Read-only for the service (owned by root): it reads extensions and copies them into its cache under /app/data.
COPY examples/ examples/
COPY deploy/loader.toml deploy/healthcheck.py deploy/
# The cache of loaded extensions. Created here, owned by the service's user, so that a new named volume mounted
# on it starts with that owner.
RUN mkdir /app/data && chown loader:loader /app/data
VOLUME ["/app/data"]
USER 10001:10001
# Healthy when the service answers `$SRV.PING.extension-loader` over NATS, asked with its own configuration
# (this file and the EXTENSION_LOADER__* variables); see deploy/healthcheck.py.
HEALTHCHECK --interval=15s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/app/deploy/healthcheck.py", "/app/deploy/loader.toml"]
ENTRYPOINT ["extension-loader"]
CMD ["serve", "--config", "/app/deploy/loader.toml"]
