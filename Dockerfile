# The gateway on its embedded default (local engine, SQLite in the /data volume).
# Point GATEWAY_DATABASE_URL at PostgreSQL to share state between replicas.
FROM python:3.11-slim

# uv at the pin scripts/uv uses (tests/test_installs.py holds the two together).
ARG UV_VERSION=0.13.9

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_NO_CACHE=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_PYTHON_DOWNLOADS=never \
    PATH=/app/.venv/bin:$PATH

WORKDIR /app
RUN pip install "uv==${UV_VERSION}"

# The locked runtime dependencies, with the otel extra (so GATEWAY_OTEL=true works in the image), in a
# layer of their own: built again only when uv.lock or pyproject.toml changes, not when the code does.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-dev --extra otel --no-install-project

# Then the code, and the gateway itself (not editable); its dependencies are all there already.
COPY README.md LICENSE ./
COPY gateway ./gateway
RUN uv sync --locked --no-dev --extra otel --no-editable \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway \
 && mkdir /data && chown gateway:gateway /data

USER gateway
ENV GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8000 \
    GATEWAY_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['GATEWAY_PORT']}/healthz\", timeout=3)"]

CMD ["gateway", "serve"]
