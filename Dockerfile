# The orchestrator image: the CLI, the worker and the HTTP API (`orchestrator serve`).
# Used by docker-compose.yml for the api, worker, migrate and loadgen services.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Pinned installs: constraints.txt holds the tested versions of every dependency.
COPY pyproject.toml constraints.txt README.md ./
COPY orchestrator ./orchestrator
COPY otel ./otel
RUN pip install -c constraints.txt . \
    && useradd --create-home --uid 10001 orchestrator \
    && mkdir -p /data /samples \
    && chown orchestrator:orchestrator /data /samples

USER orchestrator
ENV ORCHESTRATOR_DATA_DIR=/data
EXPOSE 8000

ENTRYPOINT ["orchestrator"]
CMD ["worker"]
