# The orchestrator image: the CLI, the worker and the HTTP API (`orchestrator serve`).
# Used by docker-compose.yml for the api, worker, migrate and loadgen services.
#
# Two stages: the first builds the project's wheel from the source tree; the second
# installs that wheel (dependencies pinned by constraints.txt, the versions CI tests) and
# nothing else of the repository, and runs as an unprivileged user.
# tests/test_stack_static.py keeps this file in step with docker-compose.yml (port,
# command, healthcheck).
#
# Base image: official python image, tag listed in docker-library/official-images
# library/python (37079fb3, 2026-08-21). No digest: no upstream file pins one.
FROM python:3.11.16-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY orchestrator ./orchestrator
COPY otel ./otel
RUN pip wheel --no-deps --wheel-dir /wheels .


# The same base image as the build stage (no digest, as above).
FROM python:3.11.16-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --from=build /wheels /tmp/wheels
COPY constraints.txt /tmp/constraints.txt
RUN pip install -c /tmp/constraints.txt /tmp/wheels/orchestrator-*.whl \
    && rm -rf /tmp/wheels /tmp/constraints.txt \
    && useradd --create-home --uid 10001 orchestrator \
    && mkdir -p /data /samples \
    && chown orchestrator:orchestrator /data /samples

USER 10001
WORKDIR /home/orchestrator
ENV ORCHESTRATOR_DATA_DIR=/data
EXPOSE 8000

# The image may lack curl and wget: probe the API with Python. /healthz is open (no
# token) and answers as soon as the process serves. A worker has no HTTP port: compose
# gives workers their own healthcheck (`docker run --no-healthcheck` for a bare worker).
HEALTHCHECK --interval=10s --timeout=5s --start-period=15s --retries=6 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=3)"]

ENTRYPOINT ["orchestrator"]
# The HTTP API on every interface: it refuses to start without ORCHESTRATOR_API_TOKEN.
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--workers-in-process", "0"]
