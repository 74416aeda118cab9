"""Wires every dependency in one place: settings -> store, registry, telemetry,
workflow, use cases, worker."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from orchestrator.job_queue import Worker, WorkerConfig
from orchestrator.modules.analysis import AnalysisConfig
from orchestrator.modules.registry import ModuleRegistry
from orchestrator.settings import Settings
from orchestrator.stores import JobStore
from orchestrator.stores.sqlite import SQLiteJobStore
from orchestrator.telemetry import JobTelemetry
from orchestrator.tracing.ledger import DeliveryLedger, ledger_for
from orchestrator.tracing.reconciler import TraceConfig, TraceKeeper, export_window_seconds, settle
from orchestrator.usecases import CreateAnalysisJobUseCase, ExecuteAnalysisJobUseCase
from orchestrator.usecases.execute import JobExecutor
from orchestrator.webhooks.dispatcher import DispatcherConfig, WebhookDispatcher
from orchestrator.webhooks.store import webhook_store
from orchestrator.workflow import JobWorkflow

__all__ = ["App", "build_store", "open_app"]


@dataclass
class App:
    settings: Settings
    store: JobStore
    registry: ModuleRegistry
    telemetry: JobTelemetry
    workflow: JobWorkflow
    create: CreateAnalysisJobUseCase
    execute: ExecuteAnalysisJobUseCase
    #: What this process's span exporter confirmed (None: its telemetry confirms nothing).
    deliveries: DeliveryLedger | None = None

    def worker(
        self, *, concurrency: int | None = None, worker_id: str | None = None, executor: JobExecutor | None = None
    ) -> Worker:
        """A worker on this app's store; ``executor`` (default: the app's) runs each job it holds."""
        s = self.settings
        config = WorkerConfig(
            concurrency=concurrency or s.concurrency,
            lease_seconds=s.lease_seconds,
            heartbeat_seconds=s.heartbeat_seconds or s.lease_seconds / 3,
            cancel_poll_seconds=s.cancel_poll_seconds,
            poll_seconds=s.poll_seconds,
            reap_seconds=s.reap_seconds,
            max_attempts=s.max_attempts,
            shutdown_grace_seconds=s.shutdown_grace_seconds,
            max_abandoned_modules=s.max_abandoned_modules,
        )
        worker = Worker(self.workflow, executor or self.execute, self.telemetry, config, worker_id=worker_id)
        if self.deliveries is not None:
            # Rebuilding traces needs an exporter that confirms: only then does it run.
            worker.traces = TraceKeeper(
                self.store, self.telemetry, self.deliveries, trace_config(s), owner=worker.worker_id
            )
        return worker


    def dispatcher(self) -> WebhookDispatcher:
        """The webhook dispatcher over this app's outbox."""
        config = DispatcherConfig.from_settings(self.settings)
        return WebhookDispatcher(webhook_store(self.store), self.telemetry, config)


def trace_config(settings: Settings) -> TraceConfig:
    return TraceConfig(
        grace_seconds=settings.trace_grace_seconds,
        reconcile_seconds=settings.reconcile_seconds,
        export_seconds=export_window_seconds(os.environ),
    )


def build_store(settings: Settings) -> JobStore:
    if settings.database_url is not None:
        from orchestrator.stores.postgres import PostgresJobStore

        pool = settings.pg_pool_size or settings.concurrency + 4
        return PostgresJobStore(
            settings.database_url.get_secret_value(),
            min_size=min(2, pool),
            max_size=pool,
            notify=settings.pg_notify,
            lock_timeout=settings.pg_lock_timeout_seconds,
        )
    return SQLiteJobStore(settings.database_path)


@contextlib.asynccontextmanager
async def open_app(
    settings: Settings,
    *,
    telemetry: JobTelemetry | None = None,
    registry: ModuleRegistry | None = None,
    store: JobStore | None = None,
) -> AsyncIterator[App]:
    """Open the store (applying migrations) and wire the application around it."""
    store = store or build_store(settings)
    registry = registry or ModuleRegistry.default(entry_points=settings.load_entry_points)
    telemetry = telemetry or JobTelemetry()
    await store.open(migrate=settings.auto_migrate)
    execute: ExecuteAnalysisJobUseCase | None = None
    # The terminal transitions this process stores name it as their root span's emitter.
    deliveries = ledger_for(telemetry.tracer_provider)
    if deliveries is not None:
        deliveries.configure(give_up_s=trace_config(settings).give_up_seconds)
        store.root_stamps = deliveries
    try:
        workflow = JobWorkflow(store, telemetry)
        execute = ExecuteAnalysisJobUseCase(
            workflow,
            registry,
            telemetry,
            module_concurrency=settings.module_concurrency,
            analysis=AnalysisConfig.from_settings(settings),
            finalize_retry_seconds=settings.lease_seconds,
            abandon_seconds=settings.module_abandon_seconds,
        )
        yield App(
            settings=settings,
            store=store,
            registry=registry,
            telemetry=telemetry,
            workflow=workflow,
            create=CreateAnalysisJobUseCase(workflow, registry, telemetry),
            execute=execute,
            deliveries=deliveries,
        )
    finally:
        if execute is not None:
            await execute.aclose()  # the module worker processes: none outlives the app
        if deliveries is not None:
            await settle(deliveries, store)  # confirmations written: nothing left to rebuild
        await store.close()
