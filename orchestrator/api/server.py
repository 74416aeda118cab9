"""``orchestrator serve``: the HTTP API, in-process workers and the webhook dispatcher.

Before anything listens, :func:`check_exposure` refuses an unsafe configuration (no
token on a non-loopback address without the explicit opt-out, source roots that do not
exist) and returns the warnings printed at start (authentication off, no source roots).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import anyio
import uvicorn
from anyio.abc import TaskStatus
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from orchestrator.api.app import ApiConfig, create_api
from orchestrator.api.protocol import with_header_timeout
from orchestrator.api.security import is_loopback_bind, is_wildcard_bind
from orchestrator.bootstrap import open_app
from orchestrator.domain import InvalidRequest, OrchestratorError
from orchestrator.job_queue import Worker
from orchestrator.job_queue.watchdog import ExitWatchdog, exit_at_once, shutdown_exit_seconds
from orchestrator.job_queue.worker import EXIT_RECYCLE
from orchestrator.settings import Settings
from orchestrator.telemetry import JobTelemetry
from orchestrator.usecases.sources import is_pseudo_filesystem
from otel import logs
from otel.setup import Telemetry, sanitized_header_fields
from otel.vocabulary import OperationEvent

__all__ = ["ServeOptions", "check_exposure", "listen", "serve"]

#: Connections the kernel queues before they are accepted (uvicorn's default).
LISTEN_BACKLOG: Final = 2048

log = logging.getLogger(__name__)

#: Largest request head (request line and headers) h11 buffers: 431-style refusal beyond.
MAX_REQUEST_HEAD_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    workers_in_process: int = 1


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` stops the server and the
    workers together, so the workers can requeue what they run."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def check_exposure(settings: Settings, host: str) -> list[str]:
    """Raise :class:`InvalidRequest` (naming the setting) for a configuration ``serve``
    must not start with; return the warnings to print when it may."""
    token = settings.api_token is not None
    if not token and not is_loopback_bind(host) and not settings.api_insecure_no_auth:
        raise InvalidRequest(
            f"refusing to serve on {host} without a token: set ORCHESTRATOR_API_TOKEN, or "
            "ORCHESTRATOR_API_INSECURE_NO_AUTH=true to let anyone who can reach it create jobs",
            field="ORCHESTRATOR_API_TOKEN",
        )
    if settings.api_protect_docs and not token:
        raise InvalidRequest(
            "ORCHESTRATOR_API_PROTECT_DOCS=true needs ORCHESTRATOR_API_TOKEN", field="ORCHESTRATOR_API_PROTECT_DOCS"
        )
    for root in settings.source_roots:
        resolved = Path(os.path.realpath(root))
        if not resolved.is_dir() or is_pseudo_filesystem(resolved):
            raise InvalidRequest(
                f"ORCHESTRATOR_SOURCE_ROOTS: {root} is not a directory jobs may analyse",
                field="ORCHESTRATOR_SOURCE_ROOTS",
            )
    warnings = []
    if not token:
        where = "this machine" if is_loopback_bind(host) else "ANYONE WHO CAN REACH IT"
        warnings.append(
            f"authentication is OFF: {where} can use the API on {host} (set ORCHESTRATOR_API_TOKEN to require a token)"
        )
    if not settings.source_roots:
        warnings.append(
            "no ORCHESTRATOR_SOURCE_ROOTS: API clients cannot create jobs until it names the directories "
            "they may analyse"
        )
    if is_wildcard_bind(host) and settings.api_allowed_hosts is None:
        warnings.append(
            "only Host names localhost, 127.0.0.1 and ::1 are answered: set ORCHESTRATOR_API_ALLOWED_HOSTS to the "
            "names clients use (or * for any)"
        )
    return warnings


def _uvicorn_config(api: object, settings: Settings, options: ServeOptions) -> uvicorn.Config:
    return uvicorn.Config(
        api,  # type: ignore[arg-type]
        host=options.host,
        port=options.port,
        log_config=None,
        access_log=False,
        lifespan="off",
        http=with_header_timeout(settings.api_header_timeout_seconds),
        h11_max_incomplete_event_size=MAX_REQUEST_HEAD_BYTES,
        timeout_keep_alive=settings.api_keep_alive_seconds,
        limit_concurrency=settings.api_max_connections,
        # Requests in progress at shutdown get the workers' grace, then are dropped.
        timeout_graceful_shutdown=max(1, round(settings.shutdown_grace_seconds)),
        # No proxy is documented: X-Forwarded-For from a local client must not choose the
        # client address the rate limit counts.
        proxy_headers=False,
        server_header=False,
    )


def listen(host: str, port: int) -> socket.socket:
    """The server's listening socket, bound before anything else starts: a port in use
    (or a host this machine does not have) is one clear error, not a server that
    half-started. Port 0 takes a free port (the start-up line says which)."""
    # The address family as uvicorn chooses it (an IPv6 literal, else IPv4), so a host
    # name such as "localhost" binds where it always did.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        hint = " (another serve, or another program, uses it)" if exc.errno == errno.EADDRINUSE else ""
        raise OrchestratorError(f"cannot listen on {host}:{port}: {_reason(exc)}{hint}") from None
    return sock  # not inheritable (Python's default): a pool worker never holds the port


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


async def serve(settings: Settings, telemetry: Telemetry, options: ServeOptions = ServeOptions()) -> int:
    warnings = check_exposure(settings, options.host)
    with listen(options.host, options.port) as sock:
        return await _serve(settings, telemetry, options, sock, warnings)


async def _serve(
    settings: Settings, telemetry: Telemetry, options: ServeOptions, sock: socket.socket, warnings: list[str]
) -> int:
    port = sock.getsockname()[1]
    job_telemetry = JobTelemetry(telemetry.tracer_provider, telemetry.meter_provider, telemetry.sampler)
    async with open_app(settings, telemetry=job_telemetry) as app:
        api = create_api(app, ApiConfig.from_settings(settings, bind_host=options.host))
        FastAPIInstrumentor.instrument_app(
            api,
            tracer_provider=telemetry.tracer_provider,
            meter_provider=telemetry.meter_provider,
            excluded_urls="healthz,readyz",
            http_capture_headers_sanitize_fields=sanitized_header_fields(),
        )
        server = _Server(_uvicorn_config(api, settings, options))
        workers = [app.worker() for _ in range(options.workers_in_process)]
        for warning in warnings:
            logs.event(log, logging.WARNING, OperationEvent.API_SECURITY, warning)
        async with anyio.create_task_group() as services:
            seconds = shutdown_exit_seconds(settings.shutdown_grace_seconds, settings.module_abandon_seconds)
            watchdog = ExitWatchdog(seconds, flush=telemetry.flush)
            # Started (its handler installed) before serve announces itself: a SIGTERM from
            # then on is a graceful stop, never an interrupted start-up.
            await services.start(_stop_on_signal, server, workers, watchdog)
            logs.event(
                log,
                logging.INFO,
                OperationEvent.START,
                f"serving on http://{options.host}:{port} ({app.store.backend}), "
                f"{len(workers)} in-process worker(s), webhooks {'on' if settings.webhooks else 'off'}",
                operation="serve",
            )
            if settings.webhooks:
                services.start_soon(app.dispatcher().run)
            async with anyio.create_task_group() as running:
                for worker in workers:
                    running.start_soon(_run_worker, worker, server)
                await server.serve(sockets=[sock])
                for worker in workers:
                    worker.stop()
            services.cancel_scope.cancel()
    return EXIT_RECYCLE if any(worker.recycled for worker in workers) else 0


async def _run_worker(worker: Worker, server: uvicorn.Server) -> None:
    await worker.run()
    if worker.recycled:  # the whole process goes, for its supervisor to start a fresh one
        server.should_exit = True


async def _stop_on_signal(
    server: uvicorn.Server,
    workers: list[Worker],
    watchdog: ExitWatchdog,
    *,
    task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
) -> None:
    # Open after the first signal, as the worker's: a second one exits at once.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        stopping = False
        async for signum in signals:
            if stopping:
                exit_at_once(f"{signal.Signals(signum).name} again")
            stopping = True
            server.should_exit = True
            for worker in workers:
                worker.stop()
            watchdog.arm()  # whatever a module does, serve stops within the grace (and a margin)
