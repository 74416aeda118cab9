"""``orchestrator serve``: the HTTP API, in-process workers and the webhook dispatcher."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

import anyio
import uvicorn
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

from orchestrator.api.app import create_api
from orchestrator.bootstrap import open_app
from orchestrator.cli import render
from orchestrator.cli.main import Context
from orchestrator.job_queue import Worker

__all__ = ["serve"]


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` stops the server and the
    workers together, so the workers can requeue what they run."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(ctx: Context) -> int:
    args, settings = ctx.args, ctx.settings
    async with open_app(settings, telemetry=ctx.job_telemetry()) as app:
        token = settings.api_token.get_secret_value() if settings.api_token else None
        api = create_api(app, token=token, max_body_bytes=settings.api_max_body_bytes)
        FastAPIInstrumentor.instrument_app(
            api,
            tracer_provider=ctx.telemetry.tracer_provider,
            meter_provider=ctx.telemetry.meter_provider,
            excluded_urls="healthz,readyz",
        )
        server = _Server(
            uvicorn.Config(api, host=args.host, port=args.port, log_config=None, access_log=False, lifespan="off")
        )
        workers = [app.worker() for _ in range(args.workers_in_process)]
        render.err_console.print(
            f"serving on http://{args.host}:{args.port} ({app.store.backend}), "
            f"{len(workers)} in-process worker(s), webhooks {'on' if settings.webhooks else 'off'}",
            style="dim",
        )
        async with anyio.create_task_group() as services:
            services.start_soon(_stop_on_signal, server, workers)
            if settings.webhooks:
                services.start_soon(app.dispatcher().run)
            async with anyio.create_task_group() as running:
                for worker in workers:
                    running.start_soon(worker.run)
                await server.serve()
                for worker in workers:
                    worker.stop()
            services.cancel_scope.cancel()
    return 0


async def _stop_on_signal(server: uvicorn.Server, workers: list[Worker]) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            server.should_exit = True
            for worker in workers:
                worker.stop()
            return
